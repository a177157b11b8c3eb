"""Waterbirds-style spurious builds: train at correlation rho, other splits group-balanced, class groups,
scene-photo families, everything in the manifest."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from bgbias.audit.groups import sample_groups
from bgbias.cli import main
from bgbias.sources.base import create_source
from bgbias.synth.spurious import SpuriousSource, parse_class_groups

FAMS = ["color:red", "color:green", "color:blue"]


@pytest.fixture(scope="module")
def digits():
    return create_source("digits")


def _split(n, k=3):
    return ["val" if i % k == 0 else "train" for i in range(n)]


def test_val_is_group_balanced_and_train_follows_rho(digits):
    splits = _split(len(digits))
    sp = SpuriousSource(digits, rho=0.95, families=FAMS, seed=0, splits=splits)
    labels = digits.labels()
    val = Counter((labels[i], sp.family_of(i)) for i in range(len(digits)) if splits[i] == "val")
    for c in range(10):
        counts = [val[(c, f)] for f in FAMS]
        assert max(counts) - min(counts) <= 1 and sum(counts) == sum(1 for i in range(len(digits))
                                                                     if splits[i] == "val" and labels[i] == c)
    d = sp.describe()["spurious"]
    assert 0.92 < d["on_class_family_by_split"]["train"] < 0.98
    assert 0.28 < d["on_class_family_by_split"]["val"] < 0.38
    gc = d["group_counts"]["val"]
    assert set(gc) == {f"{digits.classes[c]}|{f}" for c in range(10) for f in FAMS}
    assert sum(gc.values()) == splits.count("val")
    # no split at all: correlated throughout (a spurious training set, as before)
    plain = SpuriousSource(digits, rho=0.95, families=FAMS, seed=0)
    assert plain.describe()["spurious"]["on_class_family_by_split"].keys() == {"all"}
    tr = [i for i in range(len(digits)) if splits[i] == "train"]
    assert all(plain.family_of(i) == sp.family_of(i) for i in tr)   # train draws depend on (seed, id) only


def test_balanced_plan_is_deterministic_and_seeded(digits):
    splits = _split(len(digits))
    a = SpuriousSource(digits, rho=0.9, families=FAMS, seed=3, splits=splits)
    b = SpuriousSource(digits, rho=0.9, families=FAMS, seed=3, splits=splits)
    c = SpuriousSource(digits, rho=0.9, families=FAMS, seed=4, splits=splits)
    fa = [a.family_of(i) for i in range(len(digits))]
    assert fa == [b.family_of(i) for i in range(len(digits))]
    assert fa != [c.family_of(i) for i in range(len(digits))]
    with pytest.raises(ValueError, match="Got 3 splits"):
        SpuriousSource(digits, families=FAMS, splits=["val"] * 3)


def test_class_groups_share_a_family(digits):
    sp = SpuriousSource(digits, rho=1.0, families=["color:red", "color:blue"], class_groups="0,1,2,3,4/5,6,7,8,9")
    d = sp.describe()["spurious"]
    assert d["per_class"] == {"zero+one+two+three+four": "color:red", "five+six+seven+eight+nine": "color:blue"}
    assert d["class_groups"][0] == ["zero", "one", "two", "three", "four"]
    assert parse_class_groups("zero,one/two", ["zero", "one", "two"]) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="classes two are in no group"):
        parse_class_groups("0/1", ["zero", "one", "two"])
    with pytest.raises(ValueError, match="'one' is in two groups"):
        parse_class_groups("0,1/1,2", ["zero", "one", "two"])
    with pytest.raises(ValueError, match="'nine' is neither a class name"):
        parse_class_groups("0/nine", ["zero", "one"])
    with pytest.raises(ValueError, match="3 spurious class groups need as many families"):
        SpuriousSource(digits, families=["color:red", "color:blue"], class_groups="0,1,2/3,4,5/6,7,8,9")


def test_cli_build_with_photo_folders_and_groups(image_folder, tmp_path):
    images, masks = image_folder
    land, water = tmp_path / "land", tmp_path / "water"
    for d, colour in ((land, (20, 200, 20)), (water, (20, 20, 220))):
        d.mkdir()
        for k in range(2):
            Image.fromarray(np.full((30, 30, 3), colour, np.uint8)).save(d / f"p{k}.png")
    out = tmp_path / "o"
    assert main(["build", f"folder:{images}", "--masks", str(masks), "--out", str(out), "--variants",
                 "original,mixed_rand", "--spurious", "1", "--spurious-families", f"photos:{land},photos:{water}",
                 "--spurious-groups", "bird,cat/dog", "--workers", "1", "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    sp = m["source"]["spurious"]
    assert sp["class_groups"] == [["bird", "cat"], ["dog"]]
    assert m["classes"] == ["bird+cat", "dog"]                      # relabelled to the groups
    assert sp["per_class"] == {"bird+cat": f"photos:{land}", "dog": f"photos:{water}"}
    s = next(x for x in m["samples"] if x["class_dir"].endswith("dog"))
    img = np.array(Image.open(out / "original" / "val" / s["class_dir"] / f"{s['id']}.png"))
    mask = np.load(out / "fg_mask" / "val" / s["class_dir"] / f"{s['id']}.npy")
    assert (img[mask == 0] == (20, 20, 220)).all()
    groups = sample_groups(m, "original")
    assert groups[s["id"]] == f"dog|photos:{water}" and len(groups) == 12
    assert set(sample_groups(m, "mixed_rand").values()) <= {f"{a}|{b}" for a in ("bird+cat", "dog")
                                                            for b in ("bird+cat", "dog")}


def test_class_groups_relabel_samples_to_the_group_classes(digits):
    """Waterbirds-style: digits 0-4 become class "low", 5-9 "high"; the original class is kept in the manifest."""
    sp = SpuriousSource(digits, rho=1.0, families=["color:red", "color:blue"],
                        class_groups="low=0,1,2,3,4/high=5,6,7,8,9")
    assert sp.classes == ["low", "high"]
    base = digits.labels()
    assert sp.labels() == [0 if y < 5 else 1 for y in base]
    i = base.index(7)
    assert sp.load(i).label == 1 and sp.family_of(i) == "color:blue"
    d = sp.describe()
    assert d["classes"] == ["low", "high"]
    s = d["spurious"]
    assert s["base_classes"] == list(digits.classes) and s["per_class"] == {"low": "color:red", "high": "color:blue"}
    assert s["relabel"]["seven"] == "high" and s["relabel"]["zero"] == "low"
    assert s["per_sample_base_class"][digits.ids()[i]] == "seven"
    assert set(s["group_counts"]["all"]) == {"low|color:red", "high|color:blue"}
    # unnamed groups are named by their members; names must be unique and usable as group keys
    assert SpuriousSource(digits, families=FAMS[:2], class_groups="0,1/2,3,4,5,6,7,8,9").classes[0] == "zero+one"
    with pytest.raises(ValueError, match="names must be unique"):
        parse_class_groups("a=0/a=1", ["zero", "one"])
    with pytest.raises(ValueError, match="may not contain"):
        parse_class_groups("a|b=0/c=1", ["zero", "one"])


def test_cli_build_with_groups_writes_group_classes(image_folder, tmp_path):
    images, masks = image_folder
    out = tmp_path / "g"
    assert main(["build", f"folder:{images}", "--masks", str(masks), "--out", str(out), "--variants", "original",
                 "--spurious", "0.9", "--spurious-families", "color:red,color:blue", "--spurious-groups",
                 "pets=cat,dog/birds=bird", "--holdout", "0.5", "--workers", "1", "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["pets", "birds"]
    assert sorted(p.name for p in (out / "original" / "train").iterdir()) == ["00_pets", "01_birds"]
    base = m["source"]["spurious"]["per_sample_base_class"]
    assert len(base) == 12 and all((s["label"] == 1) == (base[s["id"]] == "bird") for s in m["samples"])
    assert Counter(s["label"] for s in m["samples"]) == {0: 8, 1: 4}
    assert set(sample_groups(m, "original").values()) <= {f"{c}|color:{f}" for c in ("pets", "birds")
                                                          for f in ("red", "blue")}
