"""eval-detect's bootstrap: each resample is what pycocotools gives on that resampled set, and every interval
holds its own point estimate (bias-corrected percentiles)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bgbias.detect.build import DetBuildConfig, build_detection
from bgbias.detect.data import create_det_source
from bgbias.detect.metrics import _fp_counts, _headline, bc_interval, bootstrap_draws, coco_metrics, evaluate_coco


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """A 16-image detection set and imperfect predictions: jittered boxes, random scores, misses, false positives."""
    out = tmp_path_factory.mktemp("detboot") / "b"
    build_detection(create_det_source("digits-det:48"), out, DetBuildConfig(("original",)))
    ds = json.loads((out / "original" / "val" / "annotations.json").read_text())
    rng = np.random.default_rng(3)
    preds = []
    for a in ds["annotations"]:
        if rng.random() < 0.25:
            continue
        x, y, w, h = a["bbox"]
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
                      "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w * rng.uniform(0.8, 1.2), h]})
    cats = [c["id"] for c in ds["categories"]]
    for im in ds["images"]:
        for _ in range(2):
            preds.append({"image_id": im["id"], "category_id": int(rng.choice(cats)), "score": float(rng.random()),
                          "bbox": [float(rng.uniform(0, 40)), float(rng.uniform(0, 40)), 12.0, 16.0]})
    return ds, preds


def _resampled(ds: dict, preds: list[dict], idx: np.ndarray) -> tuple[dict, list[dict]]:
    """The resampled set as its own COCO dataset: every drawn copy of an image gets a fresh image id."""
    ids = sorted(im["id"] for im in ds["images"])
    by_id = {im["id"]: im for im in ds["images"]}
    images, anns, res = [], [], []
    for new, pos in enumerate(idx, start=1):
        old = ids[pos]
        images.append({**by_id[old], "id": new})
        anns += [{**a, "image_id": new, "id": len(anns) + k + 1}
                 for k, a in enumerate(a for a in ds["annotations"] if a["image_id"] == old)]
        res += [{**p, "image_id": new} for p in preds if p["image_id"] == old]
    return {"images": images, "annotations": anns, "categories": ds["categories"]}, res


def test_each_resample_is_pycocotools_on_the_resampled_images(noisy):
    ds, preds = noisy
    E = evaluate_coco(ds, preds)
    fp = _fp_counts(E, 0.5)
    indices: list[np.ndarray] = []
    draws = bootstrap_draws(E, fp, 4, seed=7, indices=indices)
    assert any(len(set(i.tolist())) < len(i) for i in indices)          # with replacement: copies occur
    for b, idx in enumerate(indices):
        full = _headline(evaluate_coco(*_resampled(ds, preds, idx)))
        for k in ("AP", "AP50", "AP75"):
            assert draws[k][b] == pytest.approx(full[k], abs=1e-12), (b, k)
        assert draws["fp_per_image"][b] == pytest.approx(fp[idx].mean())
    assert _headline(E)["AP"] == pytest.approx(evaluate_coco(ds, preds).stats[0])   # E was left as it was


def test_every_interval_holds_its_point(noisy):
    ds, preds = noisy
    for seed in range(3):
        r = coco_metrics(ds, preds, bootstrap=60, seed=seed)
        for k in ("AP", "AP50", "AP75"):
            lo, hi = r["intervals"][k]
            assert lo <= r["metrics"][k] <= hi and hi - lo > 0, (seed, k, r["metrics"][k], lo, hi)
        lo, hi = r["intervals"]["fp_per_image"]
        assert lo <= r["fp_per_image"] <= hi


def test_bias_corrected_interval():
    rng = np.random.default_rng(0)
    sym = rng.normal(0.5, 0.05, 4000).tolist()
    assert bc_interval(sym, 0.95, 0.5) == pytest.approx(bc_interval(sym, 0.95, None), abs=0.01)
    up = (np.asarray(sym) + 0.04).tolist()          # resamples sit above the estimate, as AP's do
    lo, hi = bc_interval(up, 0.95, 0.5)
    plain = bc_interval(up, 0.95, None)
    assert lo < plain[0] - 0.03 and hi < plain[1] - 0.03 and lo <= 0.5 <= hi
    assert bc_interval([0.7, 0.8, 0.9], 0.95, 0.2)[0] == 0.2       # every resample above: widened to the point
    assert bc_interval([1.0] * 5, 0.95, 1.0) == [1.0, 1.0]
    assert bc_interval([0.3], 0.95, 0.3) is None and bc_interval([None, float("nan")], 0.95, 0.1) is None
