"""COCO detection metrics through pycocotools' ``COCOeval``, plus bootstrap intervals and false positives.

Nothing here re-implements matching or AP: :func:`coco_metrics` runs ``COCOeval`` once per
variant; the bootstrap re-runs only ``accumulate`` on image-resampled copies of its per-image
evaluations (an image drawn twice counts twice), which gives exactly what a full ``COCOeval``
gives on the resampled set with a fresh id for every copy (tests/test_detect_bootstrap.py).
AP's bootstrap distribution sits above the point AP (the precision envelope and the recall
cut-offs are not linear in the images), so a plain percentile interval can leave the point at
its edge or outside; the intervals are therefore bias-corrected percentile intervals (Efron's
BC, :func:`bc_interval`). Also: per-category AP, and false positives per image (detections
at or above a score that match no ground truth at IoU 0.5; on Only-BG every detection is one).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from statistics import NormalDist
from typing import Any

import numpy as np

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BOOT_STATS = ("AP", "AP50", "AP75")


def quiet():
    """pycocotools prints progress on stdout; results JSON and the CLI's table must stay clean."""
    return contextlib.redirect_stdout(io.StringIO())


def coco_gt(dataset: dict) -> Any:
    from pycocotools.coco import COCO

    with quiet():
        gt = COCO()
        gt.dataset = {k: dataset[k] for k in ("images", "annotations", "categories")}
        gt.createIndex()
    return gt


def coco_results(gt: Any, results: list[dict]) -> Any:
    """``gt.loadRes`` (which computes areas and ids); an empty list gets an empty result set instead of its IndexError."""
    from pycocotools.coco import COCO

    with quiet():
        if results:
            return gt.loadRes([dict(r) for r in results])
        res = COCO()
        res.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                       "categories": list(gt.dataset["categories"])}
        res.createIndex()
        return res


def _ap(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def _headline(E: Any) -> dict[str, float | None]:
    """AP, AP50, AP75 from ``E.eval['precision']`` (what ``summarize`` prints, without printing)."""
    p = E.eval["precision"][:, :, :, 0, -1]          # [T, R, K], area all, maxDets 100
    t50, t75 = (int(np.argmin(np.abs(E.params.iouThrs - v))) for v in (0.5, 0.75))
    return {"AP": _ap(p), "AP50": _ap(p[t50]), "AP75": _ap(p[t75])}


def bc_interval(values: list[float | None], level: float, point: float | None) -> list[float] | None:
    """Bias-corrected percentile interval (Efron 1981) of bootstrap ``values`` around the estimate ``point``.

    ``z0`` is the normal quantile of the share of resamples below the point (ties count half); the
    percentile levels move to ``Phi(2 z0 -+ z)``. ``z0`` is clipped to ``+-z`` and the ends widened
    to the point if needed, so the interval always holds its own estimate. Without a point: plain
    percentiles.
    """
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if vals.size < 2:
        return None
    a = (1 - level) / 2
    if point is None:
        lo, hi = np.quantile(vals, [a, 1 - a])
        return [round(float(lo), 6), round(float(hi), 6)]
    nd = NormalDist()
    z = nd.inv_cdf(1 - a)
    share = (np.count_nonzero(vals < point) + 0.5 * np.count_nonzero(vals == point)) / vals.size
    z0 = float(np.clip(nd.inv_cdf(min(max(share, 1e-9), 1 - 1e-9)), -z, z))
    lo, hi = np.quantile(vals, [nd.cdf(2 * z0 - z), nd.cdf(2 * z0 + z)])
    return [round(float(min(lo, point)), 6), round(float(max(hi, point)), 6)]


def _fp_counts(E: Any, score_threshold: float) -> np.ndarray:
    """Per image: detections with score >= threshold that match no ground truth at IoU 0.5 (area 'all')."""
    p = E.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    counts = np.zeros(n_img, np.int64)
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    for k in range(len(p.catIds)):
        for i in range(n_img):
            e = E.evalImgs[k * n_area * n_img + i]   # area index 0 = all
            if e is None:
                continue
            s = np.asarray(e["dtScores"])
            fp = (e["dtMatches"][t50] == 0) & ~e["dtIgnore"][t50].astype(bool) & (s >= score_threshold)
            counts[i] += int(fp.sum())
    return counts


def evaluate_coco(dataset: dict, results: list[dict]) -> Any:
    """``COCOeval`` (bbox) of ``results`` on every image of ``dataset``, evaluated, accumulated and summarised."""
    from pycocotools.cocoeval import COCOeval

    gt = coco_gt(dataset)
    res = coco_results(gt, results)
    with quiet():
        E = COCOeval(gt, res, "bbox")
        E.params.imgIds = sorted(gt.getImgIds())
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def coco_metrics(dataset: dict, results: list[dict], bootstrap: int = 100, seed: int = 0, level: float = 0.95,
                 score_threshold: float = 0.5) -> dict[str, Any]:
    """COCO bbox metrics of ``results`` against the COCO ``dataset`` (dict with images/annotations/categories).

    Returns ``metrics`` (the 12 COCO numbers; ``None`` where there is no ground truth in range, as
    pycocotools' -1), ``per_category`` AP (by name), ``intervals`` (bias-corrected bootstrap over
    images for AP, AP50, AP75 and ``fp_per_image``), ``fp_per_image`` and ``n_detections``.
    """
    E = evaluate_coco(dataset, results)
    metrics = {k: (None if v < 0 else round(float(v), 6)) for k, v in zip(STATS, E.stats)}
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    prec = E.eval["precision"]
    per_cat = {}
    for k, cid in enumerate(E.params.catIds):
        ap = _ap(prec[:, :, k, 0, -1])
        per_cat[names.get(cid, str(cid))] = None if ap is None else round(ap, 6)
    fp = _fp_counts(E, score_threshold)
    out: dict[str, Any] = {"metrics": metrics, "per_category": per_cat, "n_detections": len(results),
                           "fp_per_image": round(float(fp.mean()), 6) if fp.size else None,
                           "intervals": {}}
    if bootstrap > 0 and fp.size > 1:
        draws = bootstrap_draws(E, fp, bootstrap, seed)
        points = {**_headline(E), "fp_per_image": float(fp.mean())}
        out["intervals"] = {k: bc_interval(v, level, points[k]) for k, v in draws.items()}
    return out


def bootstrap_draws(E: Any, fp: np.ndarray, n_boot: int, seed: int,
                    indices: list[np.ndarray] | None = None) -> dict[str, list]:
    """AP, AP50, AP75 and FP per image on ``n_boot`` image resamples (with replacement), each by ``accumulate``.

    Resample ``b`` is the image positions ``rng.integers(0, n, n)`` (``rng`` from ``seed``) in
    ``E.params.imgIds``; pass a list as ``indices`` to get them back (tests rebuild each resample).
    """
    p, pe = E.params, E._paramsEval
    n_img, n_cat, n_area = len(p.imgIds), len(p.catIds), len(p.areaRng)
    saved = (list(p.imgIds), list(pe.imgIds), E.evalImgs, E.eval)
    only = copy.deepcopy(p)                  # accumulate area 'all' at the largest maxDets only: 12x fewer loops
    only.areaRng, only.areaRngLbl, only.maxDets = [p.areaRng[0]], [p.areaRngLbl[0]], [p.maxDets[-1]]
    rng = np.random.default_rng(seed)
    draws: dict[str, list] = {k: [] for k in BOOT_STATS}
    draws["fp_per_image"] = []
    try:
        base = saved[2]
        blocks = [base[j * n_img:(j + 1) * n_img] for j in range(n_cat * n_area)]   # evalImgs: cat, area, image
        p.imgIds = pe.imgIds = only.imgIds = list(range(n_img))
        for _ in range(int(n_boot)):
            idx = rng.integers(0, n_img, n_img)
            if indices is not None:
                indices.append(idx)
            E.evalImgs = [blk[i] for blk in blocks for i in idx]
            with quiet():
                E.accumulate(only)
            for k, v in _headline(E).items():
                draws[k].append(v)
            draws["fp_per_image"].append(float(fp[idx].mean()))
    finally:
        p.imgIds, pe.imgIds, E.evalImgs, E.eval = saved
    return draws


def relative(metrics: dict[str, float | None], reference: dict[str, float | None]) -> dict[str, dict]:
    """Against ``original``: ``drop`` (points), ``rpc`` (mmdetection's ratio v / original), ``relative_drop`` (1 - rPC)."""
    out: dict[str, dict] = {"drop": {}, "rpc": {}, "relative_drop": {}}
    for k in BOOT_STATS:
        v, r = metrics.get(k), reference.get(k)
        ok = v is not None and r is not None
        out["drop"][k] = round(r - v, 6) if ok else None
        out["rpc"][k] = round(v / r, 6) if ok and r > 0 else None
        out["relative_drop"][k] = round(1 - v / r, 6) if ok and r > 0 else None
    return out
