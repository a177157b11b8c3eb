"""eval-detect: pycocotools' numbers per background, bootstrap intervals, FP on Only-BG, clear errors for bad predictions."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bgbias.detect.build import DetBuildConfig, build_detection
from bgbias.detect.data import create_det_source
from bgbias.detect.evaluate import evaluate_detection
from bgbias.detect.metrics import STATS, coco_metrics
from bgbias.detect.models import LoadedDetector


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("deteval") / "b"
    build_detection(create_det_source("digits-det:24"), out,
                    DetBuildConfig(("original", "color:red", "only_bg", "mixed_rand")))
    return out


def _gt(build, dirname="original"):
    return json.loads((build / dirname / "val" / "annotations.json").read_text())


def _write(pred_dir, name, results):
    pred_dir.mkdir(exist_ok=True)
    (pred_dir / f"{name}.json").write_text(json.dumps(results))


def _as_results(anns, dx=0.0, score=1.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": score,
             "bbox": [a["bbox"][0] + dx, a["bbox"][1], a["bbox"][2], a["bbox"][3]]} for a in anns]


def test_predictions_equal_to_ground_truth_give_ap_one(build, tmp_path):
    preds = tmp_path / "p"
    for name in ("original", "color_red", "mixed_rand"):
        _write(preds, name, _as_results(_gt(build, name)["annotations"]))
    _write(preds, "only_bg", [])
    r = evaluate_detection(build, predictions=preds, bootstrap=20)
    assert r["kind"] == "bgbias-eval-detect/1"
    for name in ("original", "color:red", "mixed_rand"):
        v = r["variants"][name]
        assert v["metrics"]["AP"] == pytest.approx(1.0) and v["metrics"]["AP50"] == pytest.approx(1.0)
        assert v["intervals"]["AP"] == [pytest.approx(1.0), pytest.approx(1.0)]
        assert v["drop"]["AP"] == pytest.approx(0.0) and v["rpc"]["AP"] == pytest.approx(1.0)
        assert all(ap == pytest.approx(1.0) for ap in v["per_category"].values() if ap is not None)
        assert v["fp_per_image"] == 0.0
    assert r["variants"]["only_bg"]["metrics"]["AP"] is None and r["variants"]["only_bg"]["drop"] is None


def test_shifted_boxes_give_exactly_pycocotools_values(build, tmp_path):
    gt = _gt(build)
    rng = np.random.default_rng(0)
    results = [dict(r, score=float(rng.uniform(0.1, 1.0))) for r in _as_results(gt["annotations"], dx=3.0)]
    results += _as_results(gt["annotations"][::3], dx=0.0, score=0.05)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(build / "original" / "val" / "annotations.json"))
        E = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), "bbox")
        E.evaluate(); E.accumulate(); E.summarize()
    ours = coco_metrics(gt, results, bootstrap=0)["metrics"]
    for k, v in zip(STATS, E.stats):
        assert ours[k] == (None if v < 0 else pytest.approx(float(v), abs=1e-6)), k
    assert 0.0 < ours["AP"] < 1.0


def test_bootstrap_is_deterministic_and_brackets_the_estimate(build):
    gt = _gt(build)
    rng = np.random.default_rng(1)
    results = [dict(r, score=float(rng.uniform())) for r in _as_results(gt["annotations"], dx=2.0)]
    a = coco_metrics(gt, results, bootstrap=30, seed=5)
    b = coco_metrics(gt, results, bootstrap=30, seed=5)
    assert a["intervals"] == b["intervals"]
    lo, hi = a["intervals"]["AP50"]
    assert lo <= hi and lo - 0.1 <= a["metrics"]["AP50"] <= hi + 0.1
    again = coco_metrics(gt, results, bootstrap=0)
    assert again["metrics"] == a["metrics"]                    # the bootstrap leaves the evaluator as it was


def test_only_bg_counts_false_positives_per_image(build, tmp_path):
    only = _gt(build, "only_bg")
    assert only["annotations"] == []
    ids = [im["id"] for im in only["images"]]
    preds = tmp_path / "p"
    _write(preds, "only_bg", [{"image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5], "score": s}
                              for i in ids for s in (0.9, 0.6, 0.2)])
    r = evaluate_detection(build, predictions=preds, bootstrap=10, score_threshold=0.5)
    assert r["variants"]["only_bg"]["fp_per_image"] == pytest.approx(2.0)
    assert set(r["skipped"]) == {"original", "color:red", "mixed_rand"}


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "JSON list of COCO results"),
    ('[{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]', "lacks one of"),
    ('[{"image_id": 99999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]', "not an image of this build"),
    ('[{"image_id": IMG, "category_id": 77, "bbox": [0, 0, 1, 1], "score": 1}]', "category_id 77"),
    ('[{"image_id": IMG, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 1}]', "w, h >= 0"),
    ('[{"image_id": IMG, "category_id": 1, "bbox": [0, 0, 1], "score": 1}]', "4 finite numbers"),
    ('[{"image_id": IMG, "category_id": 1, "bbox": ["a", 0, 1, 1], "score": 1}]', "non-numeric"),
])
def test_malformed_predictions_are_clear_errors(build, tmp_path, content, message):
    preds = tmp_path / "p"
    preds.mkdir()
    (preds / "original.json").write_text(content.replace("IMG", str(_gt(build)["images"][0]["id"])))
    with pytest.raises(ValueError, match=message) as e:
        evaluate_detection(build, predictions=preds, variants=["original"], bootstrap=0)
    assert "original.json" in str(e.value)


def test_no_predictions_at_all_is_an_error(build, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        evaluate_detection(build, predictions=tmp_path / "empty", bootstrap=0)
    with pytest.raises(FileNotFoundError, match="not a detection build"):
        evaluate_detection(tmp_path, predictions=tmp_path / "empty")


class _Oracle(torch.nn.Module):
    """Returns the ground truth of the original variant for each image (looked up by the image's pixels' size order)."""

    def __init__(self, boxes_per_call):
        super().__init__()
        self.queue = list(boxes_per_call)

    def forward(self, images):
        out = []
        for _ in images:
            b, lab = self.queue.pop(0)
            out.append({"boxes": b, "labels": lab, "scores": torch.ones(len(lab))})
        return out


def test_a_model_is_run_batched_and_its_predictions_cached(build, tmp_path):
    gt = _gt(build)
    per_image = []
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        b = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns]).reshape(-1, 4)
        per_image.append((b, torch.tensor([a["category_id"] for a in anns], dtype=torch.long)))
    det = LoadedDetector(_Oracle(per_image), "oracle", {"spec": "oracle"})
    cache = tmp_path / "cache"
    r = evaluate_detection(build, det, variants=["original"], batch_size=4, bootstrap=0, cache_dir=cache)
    assert r["variants"]["original"]["metrics"]["AP"] == pytest.approx(1.0)
    assert (cache / "original.json").is_file()
    det.module.queue = []           # a rerun must reuse the cache (running the model would fail here)
    again = evaluate_detection(build, det, variants=["original"], batch_size=4, bootstrap=0, cache_dir=cache)
    assert again["variants"]["original"]["metrics"] == r["variants"]["original"]["metrics"]
    assert r["examples"]["image_ids"] and r["examples"]["predictions"]["original"]


def test_cli_eval_detect_on_predictions(build, tmp_path, capsys):
    from bgbias.cli import main

    preds = tmp_path / "p"
    _write(preds, "original", _as_results(_gt(build)["annotations"], dx=1.0))
    out = tmp_path / "r.json"
    assert main(["eval-detect", "--data", str(build), "--predictions", str(preds), "--out", str(out),
                 "--bootstrap", "5", "--variants", "original"]) == 0
    assert "original" in capsys.readouterr().out
    assert json.loads(out.read_text())["variants"]["original"]["metrics"]["AP50"] == pytest.approx(1.0)
    assert main(["eval-detect", "--data", str(build), "--out", str(out)]) == 2


def test_detection_figures_are_png(build, tmp_path):
    from bgbias.report.figures_detect import ap_per_background_png, drop_per_category_png, example_boxes_png

    preds = tmp_path / "p"
    for name in ("original", "color_red", "mixed_rand"):
        _write(preds, name, _as_results(_gt(build, name)["annotations"], dx=2.0))
    _write(preds, "only_bg", [])
    r = evaluate_detection(build, predictions=preds, bootstrap=5)
    for png in (ap_per_background_png([r, r], ["a", "b"]), drop_per_category_png(r), example_boxes_png(r)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_variants_are_picked_by_name_or_by_folder(build, tmp_path):
    """``--variants`` takes ``color:red`` or its folder ``color_red``, as ``bgbias eval`` does; results use the name."""
    preds = tmp_path / "p"
    _write(preds, "color_red", _as_results(_gt(build, "color_red")["annotations"]))
    by_name = evaluate_detection(build, predictions=preds, variants=["color:red"], bootstrap=0)
    by_folder = evaluate_detection(build, predictions=preds, variants=["color_red", "color:red"], bootstrap=0)
    assert list(by_folder["variants"]) == ["color:red"] == list(by_name["variants"])
    assert by_folder["variants"]["color:red"]["metrics"] == by_name["variants"]["color:red"]["metrics"]
    with pytest.raises(ValueError, match="no variant 'colour_red'"):
        evaluate_detection(build, predictions=preds, variants=["colour_red"], bootstrap=0)
