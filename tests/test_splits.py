"""Train/val splits in a build, pairing within a split, failing loudly, and pooled builds from any directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _owndata import WRITERS, write_folder, write_mnist
from conftest import ArraySource

from bgbias.cli import main
from bgbias.core import layout
from bgbias.sources.base import create_source
from bgbias.synth.build import BuildConfig, assign_splits, build

ROOT = Path(__file__).resolve().parents[1]
MIXED = ("original", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")


def test_holdout_is_stratified_and_chosen_from_seed_and_id():
    src = ArraySource(n=40, classes=("a", "b", "c", "d"))
    splits = assign_splits(src, 0.25, seed=0)
    labels = src.labels()
    for c in range(4):
        mine = [s for s, y in zip(splits, labels) if y == c]
        assert mine.count("val") == round(0.25 * len(mine)) and mine.count("train") == len(mine) - mine.count("val")
    assert assign_splits(src, 0.25, seed=0) == splits, "deterministic"
    assert assign_splits(src, 0.25, seed=1) != splits, "the seed chooses"
    assert assign_splits(src, None, seed=0) == ["val"] * 40, "without --holdout everything is val (as before)"
    tiny = ArraySource(n=4, classes=("a", "b"))
    assert sorted(assign_splits(tiny, 0.1, 0)) == ["train", "train", "val", "val"], "each split sees each class"
    with pytest.raises(ValueError, match="--holdout must be a fraction"):
        assign_splits(src, 1.5, 0)


def test_holdout_build_writes_both_splits_and_pairs_only_within_a_split(tmp_path):
    src = ArraySource(n=24, classes=("a", "b", "c"))
    m = build(src, tmp_path / "o", BuildConfig(variants=MIXED, holdout=0.25, chunk_size=5), progress=False)
    split_of = m["split_of"]
    assert set(split_of) == set(src.ids()) and m["splits"] == {"train": 18, "val": 6}
    assert all(s["split"] == split_of[s["id"]] for s in m["samples"])
    for v in MIXED[2:]:
        assert len(m["pairing"][v]) == 24
        for fg, bg in m["pairing"][v].items():
            assert split_of[fg] == split_of[bg], f"{v}: {fg} ({split_of[fg]}) took a background from {bg}"
    for split, n in (("train", 18), ("val", 6)):
        for v in MIXED + ("fg_mask",):
            files = [p for p in (tmp_path / "o" / v / split).rglob("*") if p.is_file()]
            assert len(files) == n, (v, split)
        items = layout.list_items(tmp_path / "o", "original", split)
        assert {it.id for it in items} == {i for i, s in split_of.items() if s == split}
        assert all(layout.find_mask(tmp_path / "o", it).is_file() for it in items)
    assert layout.list_splits(tmp_path / "o") == ["train", "val"]
    assert len(layout.list_items(tmp_path / "o", "original", None)) == 24


def test_mean_background_is_fitted_on_train_only(tmp_path):
    src = ArraySource(n=12, classes=("a", "b"))
    a = build(src, tmp_path / "a", BuildConfig(variants=("mean",), holdout=0.5), progress=False)
    val = [s for s in a["samples"] if s["split"] == "val"]
    # changing a validation image's pixels must not change any training image
    class Poisoned(ArraySource):
        def load(self, i):
            s = super().load(i)
            return s.with_(image=np.full_like(s.image, 255)) if self._ids[i] in {v["id"] for v in val} else s

    build(Poisoned(n=12, classes=("a", "b")), tmp_path / "b", BuildConfig(variants=("mean",), holdout=0.5),
          progress=False)
    for p in (tmp_path / "a" / "mean" / "train").rglob("*.png"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()


def test_a_sources_own_split_is_kept(tmp_path):
    spec, _ = write_mnist(tmp_path / "mnist", n_train=6, n_test=3)
    m = build(create_source(spec), tmp_path / "o", BuildConfig(variants=("original", "mixed_rand")), progress=False)
    assert m["splits"] == {"train": 6, "val": 3}
    assert all(m["split_of"][i] == ("train" if "_train_" in i else "val") for i in m["split_of"])
    assert all(m["split_of"][f] == m["split_of"][b] for f, b in m["pairing"]["mixed_rand"].items())
    # an IN-9 layout read back keeps its splits too
    src = create_source(f"in9:{tmp_path / 'o'}")
    assert src.splits() == ["train"] * 6 + ["val"] * 3


def test_a_build_that_keeps_nothing_fails_with_a_hint(tmp_path, capsys):
    spec, kw = write_folder(tmp_path / "d", per_class=2)
    rc = main(["build", spec, "--out", str(tmp_path / "o"), "--variants", "original", "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "kept 0 of 4 images" in err and "--masks DIR" in err and "--masks-from grabcut" in err
    (tmp_path / "wrong").mkdir()
    rc = main(["build", spec, "--masks", str(tmp_path / "wrong"), "--out", str(tmp_path / "o2"),
               "--variants", "original", "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "kept 0 of 4" in err, "a wrong mask folder is as loud"
    m = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert m["drop_summary"][0]["rule"] == "mask_missing" and m["drop_summary"][0]["count"] == 4


def test_more_than_half_dropped_warns_with_the_top_reason(tmp_path):
    src = ArraySource(n=6, classes=("a", "b"), bad={0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0})
    with pytest.warns(UserWarning, match=r"4 of 6 images were dropped, most 4 for mask_empty \(e.g. gen_000"):
        build(src, tmp_path / "o", BuildConfig(variants=("original",)), progress=False)


def test_a_centre_crop_that_cuts_the_object_out_is_its_own_reason(tmp_path):
    from bgbias.core.sample import Sample

    class Edge(ArraySource):
        def load(self, i):
            s = super().load(i)
            mask = np.zeros_like(s.mask)
            mask[:, : 3 if i == 0 else 30] = 1         # sample 0: object only at the far left edge
            return Sample(s.image, mask, s.label, s.id)

    m = build(Edge(n=3, w=80), tmp_path / "o", BuildConfig(variants=("original",), size=(32, 32)), progress=False)
    d = next(x for x in m["dropped"] if x["id"] == "gen_000")
    assert d["rule"] == "crop_cut_object" and "32x32" in d["reason"] and d["values"]["fraction_before"] > 0


_POOL_SCRIPT = """
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from _owndata import WRITERS
from bgbias.sources.base import SubsetSource, create_source


def run():
    from bgbias.synth.build import BuildConfig, build
    root = Path({root!r})
    cfg = BuildConfig(variants=("original", "only_bg_t", "mixed_rand"), chunk_size=3, holdout=0.25)
    out = {{}}
    specs = {{k: w(root / "data" / k) for k, w in WRITERS.items()}}
    specs["digits"] = ("digits", {{}})
    for kind, (spec, kw) in specs.items():
        src = create_source(spec, **kw)
        if kind == "digits":
            src = SubsetSource(src, range(18))
        m = build(src, root / "out" / kind, cfg, workers=2, progress=False)
        out[kind] = {{"kept": m["counts"]["kept"], "splits": m["splits"]}}
    m1 = build(create_source(*specs["folder"][:1], **specs["folder"][1]), root / "w1", cfg, workers=1, progress=False)
    same = all((root / "w1" / p.relative_to(root / "out" / "folder")).read_bytes() == p.read_bytes()
               for p in (root / "out" / "folder").rglob("*.png"))
    print(json.dumps({{"builds": out, "workers_identical": same}}))


if __name__ == "__main__":   # the workers re-import this file
    run()
"""


def test_pooled_builds_of_every_source_kind_work_from_a_folder_holding_a_bgbias_dir(tmp_path):
    """Workers must import the installed bgbias, not a ``bgbias/`` folder in the current directory."""
    cwd = tmp_path / "home"
    (cwd / "bgbias").mkdir(parents=True)
    (cwd / "bgbias" / "__init__.py").write_text("")      # a stale copy or a clone's package folder
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = tmp_path / "bin" / "run_builds.py"       # like the ``bgbias`` console script: not in the cwd
    script.parent.mkdir()
    script.write_text(_POOL_SCRIPT.format(tests=str(ROOT / "tests"), root=str(tmp_path)))
    res = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(got["builds"]) == set(WRITERS) | {"digits"}
    for kind, b in got["builds"].items():
        assert b["kept"] > 0 and set(b["splits"]) == {"train", "val"}, (kind, b)
    assert got["builds"]["voc"]["splits"] == {"train": 5, "val": 3}, "VOC's own image sets are kept"
    assert got["workers_identical"]


def test_coco_files_named_for_a_split_keep_it(tmp_path):
    from _owndata import write_coco

    spec, _ = write_coco(tmp_path / "c", n=4, name="instances_train2017.json")
    assert create_source(spec).splits() == ["train"] * 4
    spec, _ = write_coco(tmp_path / "d", n=4)
    assert create_source(spec).splits() is None, "no split in the names: --holdout decides"
