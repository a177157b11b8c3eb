"""``bgbias demo --quick`` end to end: the story it tells must be true in the numbers, not just drawn."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bgbias.demo import DemoConfig, build_key, run_demo, split_indices, summary_lines
from bgbias.report.page import SECTIONS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    cfg = DemoConfig.quick_preset(out=str(out), seed=0, device="cpu")
    return cfg, run_demo(cfg, progress=False)


def test_baseline_falls_for_the_background_and_the_mitigation_does_not(demo):
    cfg, results = demo
    base, mit = results["models"]
    assert (base["recipe"], mit["recipe"]) == ("baseline", "mixed-rand")
    # the shortcut is real: the baseline gains a lot from same-class backgrounds ...
    assert base["bg_gap"]["value"] > 0.2 and base["bg_gap"]["ci95"][0] > 0.1
    # ... and the mitigated model much less, with intervals that do not overlap
    assert mit["bg_gap"]["value"] < base["bg_gap"]["value"] - 0.15
    assert mit["bg_gap"]["ci95"][1] < base["bg_gap"]["ci95"][0]
    # worst case over backgrounds: the mitigated model survives far more often
    assert mit["challenge"]["challenge_accuracy"] > base["challenge"]["challenge_accuracy"] + 0.1
    # and both still recognise the clean test images
    assert base["variants"]["original"]["accuracy"] > 0.5 and mit["variants"]["original"]["accuracy"] > 0.5
    story = results["demo"]["story"]
    assert story["gap_smaller"] and story["challenge_better"]


def test_outputs_and_config(demo):
    cfg, results = demo
    root = Path(cfg.out)
    on_disk = json.loads((root / "results.json").read_text())
    assert on_disk["demo"]["config"] == json.loads(json.dumps(results["demo"]["config"]))
    assert DemoConfig(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in on_disk["demo"]["config"].items()}) == cfg
    assert on_disk["demo"]["story"]["gap_smaller"] is True
    # every IN-9 variant plus colour and texture variants were built and evaluated
    names = set(on_disk["models"][0]["variants"])
    assert {"original", "only_bg_b", "only_bg_t", "no_fg", "only_fg", "mixed_same", "mixed_rand", "mixed_next"} <= names
    assert any(n.startswith("color:") for n in names) and any(n.startswith("texture:") for n in names)
    # the mitigated model's training families are marked on the variants they produce
    assert on_disk["models"][1]["variants"]["mixed_rand"]["seen_in_training"] is True
    assert on_disk["models"][0]["variants"]["mixed_rand"]["seen_in_training"] is False
    # the page: every section, images embedded
    ids, imgs = set(), []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            ids.add(a.get("id"))
            if tag == "img":
                imgs.append(a["src"])

    P().feed((root / "report.html").read_text("utf-8"))
    assert {sid for sid, _ in SECTIONS} <= ids
    assert len(imgs) >= 5 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert sorted(p.stem for p in (root / "figures").glob("*.png"))[:2] == ["accuracy", "examples"]
    assert (root / "data" / build_key(cfg) / "test" / "manifest.json").is_file()
    lines = summary_lines(results, root)
    assert lines[-1].startswith("Report: ") and "cut the BG-gap" in lines[-2]


def test_split_is_disjoint_and_seeded():
    labels = [i % 10 for i in range(500)]
    tr, te = split_indices(labels, 300, 100, seed=0)
    assert len(tr) == 300 and len(te) == 100 and not set(tr) & set(te)
    assert split_indices(labels, 300, 100, seed=0) == (tr, te)
    assert split_indices(labels, 300, 100, seed=1) != (tr, te)
    assert split_indices(labels, 50, 100, seed=0)[1] == te       # the test part does not move with n_train


def test_each_config_builds_into_its_own_folder():
    """``bgbias demo --quick`` then ``bgbias demo`` into the same OUT must not collide on the builds."""
    assert build_key(DemoConfig()) == build_key(DemoConfig())
    assert len({build_key(DemoConfig()), build_key(DemoConfig.quick_preset()), build_key(DemoConfig(seed=1)),
                build_key(DemoConfig(data="mnist:/data"))}) == 4


def test_bad_config_says_what_is_valid():
    with pytest.raises(ValueError, match="valid: mixed-rand, bg-augment"):
        DemoConfig(mitigation="mixd-rand").validate()
    with pytest.raises(ValueError, match="needs the variants mixed_same"):
        DemoConfig(variants=("original", "only_bg_t", "only_fg", "mixed_rand")).validate()
    with pytest.raises(ValueError, match="rho"):
        DemoConfig(rho=1.5).validate()
