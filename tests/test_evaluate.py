"""bgbias eval: accuracies, BG-gap, confusion and signal groups against hand-computed values; bad input; the CLI."""
from __future__ import annotations

import json
import shutil

import _layouts as L
import numpy as np
import pytest
import torch

from bgbias.audit.core import bootstrap_ci
from bgbias.audit.evaluate import EvalConfig, evaluate, format_table, seen_in_training
from bgbias.cli import main
from bgbias.models.checkpoint import save_checkpoint
from bgbias.models.load import LoadedModel
from bgbias.models.nets import SmallCNN

torch.set_num_threads(1)
MODEL = "module:_layouts:mean_colour"


@pytest.fixture
def colour(tmp_path):
    # per class: backgrounds 0.5 (outweighs the 4x4 foreground: 0.5*48 > 16) and 0.0 (black) alternate
    return L.colour_layout(tmp_path / "d", bg_levels=(0.5, 0.0, 0.5, 0.0))


def run(root, **kw):
    return evaluate(EvalConfig(model=MODEL, data=str(root), progress=False, device="cpu", **kw))


def test_accuracies_bg_gap_and_confusion_by_hand(colour):
    r = run(colour)
    v = r["variants"]
    assert set(v) == {"original", "only_bg_t", "only_fg", "mixed_same", "mixed_rand"}
    for name in ("original", "only_fg", "mixed_same"):
        assert v[name]["accuracy"] == 1.0 and v[name]["n"] == 12
    # mixed_rand: the 0.5 background of class c+1 wins for samples 0, 2; black loses for samples 1, 3
    assert v["mixed_rand"]["accuracy"] == 0.5 and v["mixed_rand"]["correct"] == 6
    assert v["mixed_rand"]["confusion"] == [[2, 2, 0], [0, 2, 2], [2, 0, 2]]
    assert v["mixed_rand"]["per_class"] == {c: {"accuracy": 0.5, "n": 4} for c in L.CLASSES}
    # only_bg_t: black backgrounds give all-zero logits -> arg-max 0 (red): right for red only
    assert v["only_bg_t"]["accuracy"] == pytest.approx(8 / 12)
    assert r["bg_gap"]["value"] == 0.5 and r["bg_gap"]["paired"] == 12
    lo, hi = r["bg_gap"]["ci95"]
    assert 0.15 <= lo < 0.5 < hi <= 0.85
    assert r["signal_groups"]["counts"] == {"fg+bg+": 8, "fg+bg-": 4, "fg-bg+": 0, "fg-bg-": 0}
    assert r["signal_groups"]["per_class"]["red"] == {"fg+bg+": 4, "fg+bg-": 0, "fg-bg+": 0, "fg-bg-": 0}
    assert r["signal_groups"]["per_class"]["blue"]["fg+bg-"] == 2
    assert r["kind"] == "bgbias-eval/1" and r["classes"] == L.CLASSES and r["skipped"] == []
    assert r["families_seen"] is None and v["original"]["seen_in_training"] is None
    assert "BG-gap" in format_table(r)


def test_bootstrap_is_seeded_and_sane():
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    vals = np.array([1.0] * 30 + [0.0] * 70)
    assert bootstrap_ci(vals, rng()) == bootstrap_ci(vals, rng())
    lo, hi = bootstrap_ci(vals, rng())
    assert 0.18 < lo < 0.3 < hi < 0.42
    assert bootstrap_ci(np.array([]), rng()) is None


def test_label_map_outside_is_wrong(colour, tmp_path):
    (tmp_path / "map.json").write_text(json.dumps([0, 1, -1]))
    r = run(colour, label_map=str(tmp_path / "map.json"), variants=("original",))
    o = r["variants"]["original"]
    assert o["accuracy"] == pytest.approx(8 / 12) and o["outside_map"] == [0, 0, 4]
    assert r["bg_gap"] is None and r["signal_groups"] is None


def test_output_size_must_fit_label_map(colour):
    with pytest.raises(ValueError, match="3 outputs but label map 'imagenet-to-in9' covers 1000"):
        run(colour, label_map="imagenet-to-in9")


def test_missing_variant_and_missing_data(colour, tmp_path):
    with pytest.raises(ValueError, match="Variant 'no_fg' is missing .* present: mixed_rand"):
        run(colour, variants=("original", "no_fg"))
    with pytest.raises(ValueError, match="does not exist"):
        run(tmp_path / "nowhere")


def test_unreadable_image_is_skipped_and_named(colour):
    bad = colour / "mixed_rand" / "val" / "01_green" / "c1_s0.png"
    bad.write_bytes(b"\x89PNG garbage")
    r = run(colour, variants=("mixed_rand",))
    assert r["skipped"] == [{"path": str(bad), "variant": "mixed_rand", "reason": "unreadable image c1_s0.png "
                             "(UnidentifiedImageError)"}]
    assert r["variants"]["mixed_rand"]["n"] == 11 and r["variants"]["mixed_rand"]["correct"] == 6


def test_nan_logits_are_a_clear_error(colour):
    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)) * float("nan")

    with pytest.raises(ValueError, match="NaN or infinite logits"):
        evaluate(EvalConfig(model="t", data=str(colour), progress=False), loaded=LoadedModel(NaNNet(), "t"))


@pytest.mark.parametrize("variant, families, seen", [
    ("color:red", ["color"], True), ("color:#ff8800", ["color:red"], False), ("color:red", ["color:red"], True),
    ("texture:stripes:8", ["texture:stripes"], True), ("texture:board:8", ["texture:stripes"], False),
    ("texture:stripes:8", ["texture"], True), ("color_red", ["color"], False),
    ("mixed_next", ["mixed_rand"], True), ("mixed_same", ["other_sample"], True), ("original", ["color"], False),
    ("mean_color", ["mean"], False), ("mean", ["mean"], True), ("original", None, None)])
def test_seen_in_training(variant, families, seen):
    assert seen_in_training(variant, families) is seen


def test_checkpoint_families_mark_variants_and_workers_agree(colour, tmp_path):
    shutil.copytree(colour / "only_fg", colour / "color_red")
    (colour / "manifest.json").write_text(json.dumps({"variants": {"color:red": {"name": "color:red",
                                                                                 "dirname": "color_red"}}}))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = SmallCNN(num_classes=3, width=4)
    save_checkpoint(tmp_path / "m.pt", net.state_dict(), {"arch": "small-cnn", "arch_kwargs": {"width": 4},
                                                          "classes": L.CLASSES, "families_seen": ["color"]})
    cfg = dict(model=f"checkpoint:{tmp_path / 'm.pt'}", data=str(colour), progress=False, batch_size=5)
    r = evaluate(EvalConfig(**cfg))
    assert r["families_seen"] == ["color"]
    assert r["variants"]["color:red"]["seen_in_training"] is True and "color_red" not in r["variants"]
    assert r["variants"]["original"]["seen_in_training"] is False
    r2 = evaluate(EvalConfig(**cfg, workers=2))
    assert r2["variants"] == r["variants"]


def test_cli_writes_schema_and_table(colour, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", MODEL, "--data", str(colour), "--out", str(out), "--no-progress",
                 "--variants", "mixed_same,mixed_rand"]) == 0
    r = json.loads(out.read_text())
    assert set(r) >= {"kind", "model", "data", "config", "classes", "variants", "bg_gap", "signal_groups",
                      "families_seen", "skipped"}
    assert r["config"]["variants"] == ["mixed_same", "mixed_rand"] and r["bg_gap"]["value"] == 0.5
    assert "mixed_rand" in capsys.readouterr().out
    assert main(["eval", "--model", MODEL, "--data", str(colour), "--label-map", "imagenet-to-in9",
                 "--no-progress", "--out", str(out)]) == 2
    assert "covers 1000" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_build(tmp_path_factory):
    """``bgbias build digits`` output (the real layout, manifest included) with the variants eval needs."""
    out = tmp_path_factory.mktemp("digits") / "in9"
    assert main(["build", "digits", "--out", str(out), "--variants",
                 "original,only_bg_t,only_fg,mixed_same,mixed_rand,color:red", "--workers", "2", "--quiet"]) == 0
    return out


def test_end_to_end_on_digits_build(digits_build, tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = SmallCNN(num_classes=10, width=4)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, net.state_dict(), {"arch": "small-cnn", "arch_kwargs": {"width": 4},
                                             "classes": [str(i) for i in range(10)], "families_seen": ["color"]})
    common = ["--model", f"checkpoint:{ckpt}", "--data", str(digits_build), "--no-progress", "--batch-size", "256"]
    assert main(["eval", *common, "--out", str(tmp_path / "eval.json")]) == 0
    r = json.loads((tmp_path / "eval.json").read_text())
    assert r["variants"]["original"]["n"] == 1797 and len(r["classes"]) == 10
    assert r["variants"]["color:red"]["seen_in_training"] is True and r["bg_gap"] is not None
    assert sum(r["signal_groups"]["counts"].values()) == 1797
    assert main(["challenge", *common, "--out", str(tmp_path / "ch.json"), "--max-backgrounds", "12"]) == 0
    c = json.loads((tmp_path / "ch.json").read_text())
    assert c["exhaustive"] is False and c["n_backgrounds"] == 12 and c["n_foregrounds"] == 1797
    assert c["clean_accuracy"] == pytest.approx(r["variants"]["original"]["accuracy"], abs=2 / 1797)
    assert not (tmp_path / "ch.json.state").exists()


def test_variants_are_keyed_by_canonical_name_and_picked_by_name_or_folder(digits_build):
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    cfg = dict(model="m", data=str(digits_build), progress=False, batch_size=512)
    by_name = evaluate(EvalConfig(**cfg, variants=("color:red", "mixed_rand")), loaded=LoadedModel(net, "m"))
    by_folder = evaluate(EvalConfig(**cfg, variants=("color_red", "mixed_rand")), loaded=LoadedModel(net, "m"))
    assert list(by_name["variants"]) == ["color:red", "mixed_rand"]
    assert by_folder["variants"] == by_name["variants"]
    assert "color:red " in format_table(by_name) and "color_red" not in format_table(by_name)
    with pytest.raises(ValueError, match="present: .*color:red"):
        evaluate(EvalConfig(**cfg, variants=("color:blue",)), loaded=LoadedModel(net, "m"))
