"""Groups and reference levels in ``bgbias eval``: worst-group, mean and training-weighted accuracy against
hand-computed values on a tiny fixed model, chance / majority rates, too-small flags, the terminal table."""
from __future__ import annotations

import json

import _layouts as L
import numpy as np
import pytest
import torch

from bgbias.audit.evaluate import EvalConfig, evaluate, format_table
from bgbias.audit.groups import group_accuracy, reference_levels, sample_groups, too_small, wilson_ci
from bgbias.models.load import LoadedModel

torch.set_num_threads(1)
MODEL = "module:_layouts:mean_colour"


def _manifest(root, fams):
    """The manifest a spurious build would write for ``colour_layout``: families per sample, the pairing."""
    ids = [(c, j) for c in range(3) for j in range(4)]
    m = {"classes": L.CLASSES,
         "samples": [{"id": f"c{c}_s{j}", "label": c} for c, j in ids],
         "variants": {"original": {"dirname": "original", "recipe": "original", "pairing": None},
                      "only_bg_t": {"dirname": "only_bg_t", "recipe": "box_tiled", "pairing": None},
                      "only_fg": {"dirname": "only_fg", "recipe": "fg_only", "pairing": None},
                      "mixed_same": {"dirname": "mixed_same", "recipe": "paste", "pairing": "same"},
                      "mixed_rand": {"dirname": "mixed_rand", "recipe": "paste", "pairing": "rand"}},
         "pairing": {"mixed_same": {f"c{c}_s{j}": f"c{c}_s{(j + 1) % 4}" for c, j in ids},
                     "mixed_rand": {f"c{c}_s{j}": f"c{(c + 1) % 3}_s{j}" for c, j in ids}},
         "source": {"spurious": {"per_sample": {f"c{c}_s{j}": fams[j] for c, j in ids}}}}
    (root / "manifest.json").write_text(json.dumps(m))
    return m


@pytest.fixture
def colour(tmp_path):
    # per class: backgrounds 0.5 (class colour, "bright") and 0.0 ("dark") alternate
    root = L.colour_layout(tmp_path / "d", bg_levels=(0.5, 0.0, 0.5, 0.0))
    _manifest(root, ["bright", "dark", "bright", "dark"])
    return root


def run(root, loaded=None, **kw):
    return evaluate(EvalConfig(model=MODEL, data=str(root), progress=False, device="cpu", **kw), loaded)


def test_groups_by_hand(colour):
    r = run(colour, group_min_count=1)
    v = r["variants"]
    # only_bg_t: a dark background gives all-zero logits -> red: right for red only; bright ones are right
    g = v["only_bg_t"]["groups"]
    assert {k: (x["accuracy"], x["n"]) for k, x in g["per_group"].items()} == {
        "red|bright": (1.0, 2), "red|dark": (1.0, 2), "green|bright": (1.0, 2), "green|dark": (0.0, 2),
        "blue|bright": (1.0, 2), "blue|dark": (0.0, 2)}
    assert g["worst_group_accuracy"] == 0.0 and g["worst_group"] == "blue|dark"   # ties: first key
    assert g["mean_group_accuracy"] == pytest.approx(4 / 6)
    assert g["weighted_accuracy"] is None and g["weighted_by"] is None          # no training counts known
    # mixed variants: group = (class, the background image's class)
    mr = v["mixed_rand"]["groups"]["per_group"]
    assert mr == {"blue|red": {"accuracy": 0.5, "n": 4, "eligible": True},
                  "green|blue": {"accuracy": 0.5, "n": 4, "eligible": True},
                  "red|green": {"accuracy": 0.5, "n": 4, "eligible": True}}
    assert set(v["mixed_same"]["groups"]["per_group"]) == {"red|red", "green|green", "blue|blue"}
    assert v["original"]["groups"]["worst_group_accuracy"] == 1.0
    assert v["only_fg"]["groups"] is None                                        # no background to group by


def test_weighted_accuracy_uses_the_checkpoints_training_shares(colour):
    counts = {"red|bright": 6, "green|bright": 3, "green|dark": 1, "blue|dark": 2, "elsewhere|x": 50}
    loaded = LoadedModel(L.MeanColour(), MODEL, meta={"group_counts": counts})
    g = run(colour, loaded, group_min_count=1)["variants"]["only_bg_t"]["groups"]
    # (6*1 + 3*1 + 1*0 + 2*0) / 12: groups absent from this data do not count
    assert g["weighted_accuracy"] == pytest.approx(9 / 12) and g["weighted_by"] == "training"
    assert g["mean_group_accuracy"] == pytest.approx(4 / 6)


def test_small_groups_are_reported_but_not_eligible(colour):
    g = run(colour, group_min_count=3)["variants"]["only_bg_t"]["groups"]
    assert g["eligible"] == 0 and g["worst_group"] is None and len(g["per_group"]) == 6
    assert not any(x["eligible"] for x in g["per_group"].values())
    g = run(colour, group_min_count=4)["variants"]["mixed_rand"]["groups"]
    assert g["eligible"] == 3 and g["worst_group_accuracy"] == 0.5


def test_worst_group_interval_resamples_within_groups():
    rng = np.random.default_rng(0)
    keys = ["a"] * 200 + ["b"] * 200
    correct = np.r_[np.ones(200), (np.arange(200) % 2 == 0).astype(float)]
    g = group_accuracy(keys, correct, min_count=10, rng=rng, n_boot=500)
    assert g["worst_group"] == "b" and g["worst_group_accuracy"] == 0.5
    lo, hi = g["ci95"]
    assert 0.40 < lo < 0.5 < hi < 0.60 and g["too_small"] is False
    small = group_accuracy(["a"] * 5 + ["b"] * 5, np.r_[np.ones(5), np.zeros(2), np.ones(3)], min_count=1,
                           rng=np.random.default_rng(0))
    assert small["worst_group_accuracy"] == 0.6 and small["too_small"] is True
    # many small groups: the interval is the worst group's own, so it holds the estimate
    keys = [f"g{k}" for k in range(30) for _ in range(10)]
    correct = np.array([float(j < 6 + k % 5) for k in range(30) for j in range(10)])
    g = group_accuracy(keys, correct, min_count=5, rng=np.random.default_rng(0))
    assert g["worst_group_accuracy"] == 0.6 and g["ci95"][0] <= 0.6 <= g["ci95"][1]
    with pytest.raises(ValueError, match="3 group keys for 2"):
        group_accuracy(["a", "b", "c"], np.ones(2))


def test_reference_levels_chance_majority_and_too_small(colour, tmp_path):
    assert reference_levels([0, 0, 0, 1], 4, [0.5, 0.65]) == {"chance": 0.25, "majority": 0.75, "too_small": False}
    assert too_small([0.3, 0.51]) is True and too_small([0.3, 0.5]) is False and too_small(None) is None
    lo, hi = wilson_ci(31, 31)
    assert hi == 1.0 and 0.88 < lo < 0.9
    r = run(colour)
    o = r["variants"]["original"]
    assert o["chance"] == pytest.approx(1 / 3) and o["majority"] == pytest.approx(1 / 3)
    assert o["too_small"] is False                                     # all 12 right: the interval is [1, 1]
    assert r["variants"]["mixed_rand"]["too_small"] is True           # 6 of 12: +-28 points
    assert r["bg_gap"]["too_small"] is True
    table = format_table(r)
    assert "chance 33.3% (1/3 classes)" in table and "too few images" in table
    assert "worst-grp" in table and "major." in table


def test_majority_rate_follows_the_data(tmp_path):
    # drop class 1 and 2 images but one: "always red" would score 10 of 12
    root = L.colour_layout(tmp_path / "d", fg_side=(4,) * 10, bg_levels=(0.5,) * 10)
    for c in ("01_green", "02_blue"):
        for f in sorted((root / "original" / "val" / c).iterdir())[1:]:
            f.unlink()
    o = run(root, variants=("original",))["variants"]["original"]
    assert o["n"] == 12 and o["majority"] == pytest.approx(10 / 12)


def test_no_manifest_means_no_groups(tmp_path):
    root = L.colour_layout(tmp_path / "d")
    r = run(root)
    assert all(v["groups"] is None for v in r["variants"].values())
    assert sample_groups(None, "original") is None


def test_challenge_accuracy_has_reference_levels(tmp_path):
    from bgbias.audit.challenge import ChallengeConfig, run_challenge

    root = L.random_layout(tmp_path / "r", n_per_class=6)
    r = run_challenge(ChallengeConfig(model=MODEL, data=str(root), progress=False, device="cpu"),
                      loaded=LoadedModel(L.MeanColour(), MODEL))
    n, ok = r["n_foregrounds"], round(r["challenge_accuracy"] * r["n_foregrounds"])
    assert n == 18 and r["challenge_ci95"] == wilson_ci(ok, n)
    assert r["chance"] == pytest.approx(1 / 3) and r["majority"] == pytest.approx(1 / 3)
    assert r["too_small"] is True                        # 18 foregrounds: far wider than 20 points


def test_group_heatmap_draws_a_png(colour):
    from bgbias.report.figures_groups import group_grid, group_heatmap

    r = run(colour, group_min_count=3)
    g = r["variants"]["mixed_rand"]["groups"]
    rows, cols, acc, n, ok = group_grid(g, L.CLASSES)
    assert rows == L.CLASSES and cols == ["red", "green", "blue"]
    assert acc[0, 1] == 0.5 and np.isnan(acc[0, 0]) and n[2, 0] == 4 and ok[2, 0]
    png = group_heatmap(g, L.CLASSES, title="mean colour / mixed_rand")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == group_heatmap(g, L.CLASSES, title="mean colour / mixed_rand")
    with pytest.raises(ValueError, match="no groups"):
        group_heatmap({"per_group": {}})


def test_train_records_group_counts_and_eval_weights_by_them(digits_source, tmp_path):
    """A spurious training build -> train records its group shares -> eval on a balanced build uses them."""
    from bgbias.sources.base import SubsetSource
    from bgbias.synth.build import BuildConfig, build
    from bgbias.synth.spurious import SpuriousSource
    from bgbias.train.config import TrainConfig
    from bgbias.train.data import load_data
    from bgbias.train.loop import train

    fams = ("color:red", "color:blue")
    labels = digits_source.labels()
    half = [[i for i, y in enumerate(labels) if y == c] for c in range(10)]
    tr_rows, te_rows = sorted(i for h in half for i in h[:3]), sorted(i for h in half for i in h[3:])
    te_src = SpuriousSource(SubsetSource(digits_source, te_rows), 0.9, fams, seed=0, splits=["val"] * 30)
    # the training build: --spurious with --holdout: train at rho, val group-balanced
    build(SubsetSource(digits_source, tr_rows), tmp_path / "tr",
          BuildConfig(variants=("original",), spurious=0.9, spurious_families=fams, holdout=0.5), progress=False)
    build(te_src, tmp_path / "te", BuildConfig(variants=("original", "color:red")), progress=False)
    man = json.loads((tmp_path / "tr" / "manifest.json").read_text())
    val_counts = man["source"]["spurious"]["group_counts"]["val"]
    for c in digits_source.classes:
        n = [val_counts.get(f"{c}|{f}", 0) for f in fams]
        assert max(n) - min(n) <= 1, (c, n)                       # a balanced val really is balanced
    data = load_data(str(tmp_path / "tr"), split="train")
    fam = man["source"]["spurious"]["per_sample"][data.ids[0]]
    assert data.groups[0] == f"{data.classes[int(data.labels[0])]}|{fam}"
    m = train(TrainConfig(data=str(tmp_path / "tr"), out=str(tmp_path / "run"), epochs=1, batch_size=16,
                          min_steps=0), progress=False)
    assert sum(m["group_counts"].values()) == m["n_train"] == len(data.labels)
    assert "val_worst_group_accuracy" in m["final"]
    r = evaluate(EvalConfig(model=f"checkpoint:{tmp_path / 'run' / 'model.pt'}", data=str(tmp_path / "te"),
                            progress=False, group_min_count=1))
    g = r["variants"]["original"]["groups"]
    assert g["weighted_by"] == "training" and g["weighted_accuracy"] is not None
    assert sum(x["n"] for x in g["per_group"].values()) == 30
    counts = {k: v for k, v in m["group_counts"].items() if k in g["per_group"]}
    want = sum(v * g["per_group"][k]["accuracy"] for k, v in counts.items()) / sum(counts.values())
    assert g["weighted_accuracy"] == pytest.approx(want)
    assert set(r["variants"]["color:red"]["groups"]["per_group"]) == {f"{c}|color:red" for c in data.classes}
