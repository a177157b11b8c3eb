"""``eval-detect``: a detector's AP per background on a detection build (kind ``bgbias-eval-detect/1``).

Two ways in: run a detector (:func:`bgbias.detect.models.load_detector`) over every variant's
images, batched on ``device``; or read ``PREDICTIONS/<variant>.json`` files in the COCO results
format (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``) from any detector.
Either way the numbers are pycocotools' (:mod:`bgbias.detect.metrics`). A run's predictions
are kept in ``cache_dir`` (one COCO results file per variant, the same format), so a rerun with
the same model skips the variants it has, and those files can be fed back with ``--predictions``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from bgbias.core.executors import progress as progress_bar
from bgbias.core.io import read_json, write_json
from bgbias.core.layout import MANIFEST
from bgbias.core.version import __version__
from bgbias.detect.build import BuildDetSource, KIND as BUILD_KIND
from bgbias.detect.metrics import coco_metrics, relative
from bgbias.detect.models import LoadedDetector

KIND = "bgbias-eval-detect/1"
N_EXAMPLES = 4


def build_variants(data: str | Path) -> list[dict]:
    """The variants of a detection build, from its manifest (``name``, ``dirname``, ``has_gt``)."""
    root = Path(data)
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(f"{root} is not a detection build (no {MANIFEST}); make one with "
                                "bgbias build SOURCE --task detection --out DIR.")
    man = read_json(root / MANIFEST)
    if man.get("kind") != BUILD_KIND:
        raise ValueError(f"{root} is a {man.get('kind', 'classification')!r} build, not a detection build "
                         f"({BUILD_KIND}); use bgbias eval for classification builds.")
    return man["variants"]


def check_predictions(results: Any, dataset: dict, where: str) -> list[dict]:
    """Validate COCO results against the variant's images and categories; one clear sentence per problem."""
    if not isinstance(results, list):
        raise ValueError(f"{where} must hold a JSON list of COCO results ({{image_id, category_id, bbox, score}}), "
                         f"got a {type(results).__name__}.")
    images = {im["id"] for im in dataset["images"]}
    cats = {c["id"] for c in dataset["categories"]}
    out = []
    for k, r in enumerate(results):
        if not isinstance(r, dict) or not all(key in r for key in ("image_id", "category_id", "bbox", "score")):
            raise ValueError(f"{where}: entry {k} ({str(r)[:60]}) lacks one of image_id, category_id, bbox, score.")
        try:
            bbox = [float(v) for v in r["bbox"]]
            score = float(r["score"])
            image_id, cat = r["image_id"], r["category_id"]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: entry {k} has a non-numeric bbox or score ({str(r)[:80]}).") from None
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox + [score]) or bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{where}: entry {k} needs bbox [x, y, w, h] of 4 finite numbers with w, h >= 0 and a "
                             f"finite score, got bbox {r['bbox']} score {r['score']}.")
        if image_id not in images:
            raise ValueError(f"{where}: entry {k} has image_id {image_id!r}, which is not an image of this build "
                             f"({len(images)} images, ids {min(images, default=None)}..{max(images, default=None)}).")
        if cat not in cats:
            raise ValueError(f"{where}: entry {k} has category_id {cat!r}; the build's categories are "
                             f"{sorted(cats)} (map the detector's labels with --label-map).")
        out.append({"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score})
    return out


def read_predictions(path: Path, dataset: dict) -> list[dict]:
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"Predictions file {path} is not valid JSON ({str(e)[:80]}).") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):   # a COCO dataset-style file
        data = data["annotations"]
    return check_predictions(data, dataset, f"Predictions file {path}")


def predict(detector: LoadedDetector, source: BuildDetSource, batch_size: int = 8,
            device: str | torch.device = "cpu", progress: bool = False, desc: str = "") -> tuple[list[dict], dict]:
    """COCO results of ``detector`` on every image of ``source``; labels mapped by ``detector.label_map``."""
    model = detector.module.to(device).eval()
    results, unmapped, n = [], 0, len(source)
    starts = range(0, n, max(1, int(batch_size)))
    for b0 in progress_bar(starts, len(starts), desc or "detect", progress, unit="batch"):
        batch = [source.load(i) for i in range(b0, min(n, b0 + batch_size))]
        x = [torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1).to(device).float().div_(255.0)
             for s in batch]
        with torch.inference_mode():
            outs = model(x)
        if not isinstance(outs, (list, tuple)) or len(outs) != len(batch) or not all(
                isinstance(o, dict) and {"boxes", "labels", "scores"} <= set(o) for o in outs):
            raise ValueError(f"Detector {detector.spec} must return one dict with boxes, labels and scores per image; "
                             f"got {type(outs).__name__}.")
        for s, o in zip(batch, outs):
            for box, lab, sc in zip(o["boxes"].tolist(), o["labels"].tolist(), o["scores"].tolist()):
                cat = detector.label_map.get(int(lab)) if detector.label_map is not None else int(lab)
                if cat is None:
                    unmapped += 1
                    continue
                x0, y0, x1, y1 = box
                results.append({"image_id": s.image_id, "category_id": cat, "score": round(float(sc), 5),
                                "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)]})
    return results, {"unmapped_labels": unmapped}


def _examples(datasets: dict[str, dict], preds: dict[str, list[dict]], dirs: dict[str, str], split: str,
              threshold: float) -> dict:
    """A few images (the first with ground truth) with true and predicted boxes in every variant, for the report."""
    ref = datasets.get("original") or next(iter(datasets.values()))
    with_gt = sorted({a["image_id"] for a in ref["annotations"]}) or sorted(im["id"] for im in ref["images"])
    ids = with_gt[:N_EXAMPLES]
    files = {im["id"]: im["file_name"] for im in ref["images"]}
    gt = {str(i): [a["bbox"] + [a["category_id"]] for a in ref["annotations"] if a["image_id"] == i] for i in ids}
    pred = {v: {str(i): [r["bbox"] + [r["category_id"], r["score"]] for r in rs
                         if r["image_id"] == i and r["score"] >= threshold] for i in ids} for v, rs in preds.items()}
    return {"image_ids": ids, "files": {str(i): files.get(i) for i in ids}, "ground_truth": gt, "predictions": pred,
            "paths": {v: f"{dirs[v]}/{split}/images" for v in preds}}


def evaluate_detection(data: str | Path, detector: LoadedDetector | None = None, predictions: str | Path | None = None,
                       split: str = "val", variants: Sequence[str] | None = None, batch_size: int = 8,
                       device: str = "cpu", bootstrap: int = 100, seed: int = 0, level: float = 0.95,
                       score_threshold: float = 0.5, cache_dir: str | Path | None = None,
                       progress: bool = False) -> dict[str, Any]:
    """AP per background (and the rest of ``bgbias-eval-detect/1``) for one detector or predictions folder."""
    if (detector is None) == (predictions is None):
        raise ValueError("Give either a detector (--model) or a predictions folder (--predictions), not both.")
    root = Path(data)
    info = build_variants(root)
    dirs = {v["name"]: v["dirname"] for v in info}
    by_folder = {d: n for n, d in dirs.items()}          # --variants takes the name or the folder, as eval does
    names = list(dict.fromkeys(by_folder.get(v, v) for v in variants)) if variants else [v["name"] for v in info]
    unknown = [n for n in names if n not in dirs]
    if unknown:
        raise ValueError(f"Build {root} has no variant {unknown[0]!r}; valid: {', '.join(dirs)}.")
    pred_dir = Path(predictions) if predictions is not None else None
    if pred_dir is not None and not pred_dir.is_dir():
        raise FileNotFoundError(f"Predictions folder {pred_dir} does not exist.")
    cache = Path(cache_dir) if cache_dir else None
    model_key = {"model": detector.info if detector else None, "data": str(root), "split": split}
    reuse = bool(cache and (cache / "_model.json").is_file() and read_json(cache / "_model.json") == model_key)
    if cache and detector is not None and not reuse:
        write_json(cache / "_model.json", model_key)
    datasets, preds, out_vars, skipped, timing = {}, {}, {}, {}, {"inference_s": 0.0, "eval_s": 0.0, "images": 0}
    unmapped = 0
    for name in names:
        ann = root / dirs[name] / split / "annotations.json"
        if not ann.is_file():
            skipped[name] = f"no {split} split"
            continue
        datasets[name] = read_json(ann)
        if pred_dir is not None:
            f = next((p for p in (pred_dir / f"{dirs[name]}.json", pred_dir / f"{name}.json") if p.is_file()), None)
            if f is None:
                skipped[name] = f"no predictions file {pred_dir / (dirs[name] + '.json')}"
                continue
            preds[name] = read_predictions(f, datasets[name])
        elif reuse and (cache / f"{dirs[name]}.json").is_file():
            preds[name] = read_predictions(cache / f"{dirs[name]}.json", datasets[name])
        else:
            t0 = time.perf_counter()
            src = BuildDetSource(root, name, split)
            preds[name], extra = predict(detector, src, batch_size, device, progress, desc=name)
            timing["inference_s"] += time.perf_counter() - t0
            timing["images"] += len(src)
            unmapped += extra["unmapped_labels"]
            if cache:
                write_json(cache / f"{dirs[name]}.json", preds[name])
        t0 = time.perf_counter()
        out_vars[name] = {"n_images": len(datasets[name]["images"]),
                          "n_annotations": sum(1 for a in datasets[name]["annotations"] if not a.get("iscrowd")),
                          "has_gt": bool(datasets[name]["annotations"]),
                          **coco_metrics(datasets[name], preds[name], bootstrap, seed, level, score_threshold)}
        timing["eval_s"] += time.perf_counter() - t0
    if not out_vars:
        raise ValueError(f"Nothing to evaluate in {root}: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}.")
    ref = out_vars.get("original")
    for name, v in out_vars.items():
        v.update(relative(v["metrics"], ref["metrics"]) if ref is not None and v["has_gt"] else
                 {"drop": None, "rpc": None, "relative_drop": None})
    n_eval = sum(v["n_images"] for v in out_vars.values())
    timing.update({"inference_s": round(timing["inference_s"], 3), "eval_s": round(timing["eval_s"], 3),
                   "eval_s_per_1000_images": round(1000 * timing["eval_s"] / max(1, n_eval), 3)})
    cats = next(iter(datasets.values()))["categories"]
    return {"kind": KIND, "version": __version__, "data": str(root), "split": split,
            "model": detector.info if detector else {"predictions": str(pred_dir)},
            "categories": cats, "score_threshold": score_threshold,
            "bootstrap": {"n": int(bootstrap), "seed": int(seed), "level": level, "over": "images"},
            "variants": out_vars, "skipped": skipped, "unmapped_labels": unmapped, "timing": timing,
            "examples": _examples({k: datasets[k] for k in preds}, preds, dirs, split, score_threshold)}


def format_table(result: dict) -> str:
    """AP / AP50 / AP75 per variant with the bootstrap interval of AP, the drop against original, FP per image."""
    rows = [f"{'variant':<22} {'AP':>6} {'95% CI':>15} {'AP50':>6} {'AP75':>6} {'dAP':>7} {'rPC':>6} {'FP/img':>7}"]
    f = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, v in result["variants"].items():
        m, ci = v["metrics"], v["intervals"].get("AP")
        d = (v.get("drop") or {}).get("AP")
        r = (v.get("rpc") or {}).get("AP")
        rows.append(f"{name:<22} {f(m['AP']):>6} {('[' + f(ci[0]) + ', ' + f(ci[1]) + ']') if ci else '':>15} "
                    f"{f(m['AP50']):>6} {f(m['AP75']):>6} {('' if d is None else f'{0.0 - d:+.3f}'):>7} "
                    f"{('' if r is None else f'{r:.3f}'):>6} {f(v['fp_per_image']):>7}")
    return "\n".join(rows)
