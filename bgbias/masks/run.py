"""``bgbias masks``: compute (and write) every mask of a source, in order, and summarise their quality.

:func:`write_masks` writes ``OUT/fg_mask/val/<NN_class>/<id>.npy`` and ``OUT/masks.json``;
:func:`run_masks` maps :func:`_mask_job` over the items in this process or on forkserver
workers that preload this module (it holds the pickled job; torch, set to one thread per
worker, is imported at the top so the preload covers it). Drop reasons are ``"<rule>: <detail>"`` (see :mod:`bgbias.masks.methods`),
counted per rule by :func:`quality_summary`. Also importable from :mod:`bgbias.masks.methods`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bgbias.core.executors import map_ordered
from bgbias.core.io import write_json, write_npy
from bgbias.core.layout import class_dirname, mask_path
from bgbias.core.sample import BadSample


def quality_summary(records: list[dict]) -> dict:
    """Records ``{"id", "method", "area"}`` (kept) or ``{"id", "reason"}`` (dropped) -> summary dict.

    ``area`` is the mask's foreground fraction of the image; drops are counted per rule
    (the part of the reason before the first colon).
    """
    kept = [r for r in records if "reason" not in r]
    by_method: dict[str, dict] = {}
    for r in kept:
        m = by_method.setdefault(r.get("method", "?"), {"masks": 0, "area_sum": 0.0})
        m["masks"] += 1
        m["area_sum"] += float(r.get("area", 0.0))
    drops: dict[str, int] = {}
    for r in records:
        if "reason" in r:
            rule = r["reason"].split(":", 1)[0] if ":" in r["reason"] else r["reason"]
            drops[rule] = drops.get(rule, 0) + 1
    return {"masks": len(kept), "dropped": len(records) - len(kept),
            "mean_area_fraction": round(sum(float(r.get("area", 0)) for r in kept) / len(kept), 4) if kept else None,
            "by_method": {k: {"masks": v["masks"], "mean_area_fraction": round(v["area_sum"] / v["masks"], 4)}
                          for k, v in sorted(by_method.items())},
            "drops_by_rule": dict(sorted(drops.items()))}


def format_summary(summary: dict) -> str:
    lines = [f"masks: {summary['masks']} kept, {summary['dropped']} dropped, "
             f"mean area fraction {summary['mean_area_fraction']}"]
    lines += [f"  {k}: {v['masks']} masks, mean area {v['mean_area_fraction']}" for k, v in summary["by_method"].items()]
    lines += [f"  dropped ({k}): {v}" for k, v in summary["drops_by_rule"].items()]
    return "\n".join(lines)


_WORKER: dict[str, Any] = {}   # per-process state of a pool worker (the source and output folder)


def _init_worker(source: Any, out: Path | None, pool: bool = False) -> None:
    if pool:   # one thread per process: the pool is the parallelism
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
    _WORKER.update(source=source, out=out, ids=source.ids())


def _mask_job(i: int) -> dict:
    """Load item ``i`` with its mask and (when writing) save it; returns a small record, never raises BadSample."""
    try:
        return _record(i, _WORKER["source"].load(i))
    except BadSample as e:
        return _record(i, e)


def _record(i: int, s: Any) -> dict:
    """Item ``i``'s record from its loaded sample (written to the output folder when there is one) or BadSample."""
    source, out = _WORKER["source"], _WORKER["out"]
    if isinstance(s, BadSample):
        return {"index": i, "id": _WORKER["ids"][i], "reason": s.reason}
    rec = {"index": i, "id": s.id, "label": s.label, "area": round(float((s.mask > 0.5).mean()), 6),
           "boxes": [list(b) for b in s.object_boxes()],
           "method": source.mask_method(i) if hasattr(source, "mask_method") else "given"}
    if out is not None:
        cdir = class_dirname(s.label, source.classes[s.label], len(source.classes))
        write_npy(mask_path(out, cdir, s.id), s.mask.astype(np.float32))
    return rec


def run_masks(source: Any, out: str | os.PathLike | None = None, workers: int = 1,
              indices: list[int] | None = None) -> list[dict]:
    """Compute (and with ``out``, write ``OUT/fg_mask/val/<NN_class>/<id>.npy``) every mask; records in index order.

    A method that batches (``method.batch_size`` > 1, e.g. ``model:ARCH`` on its device) gets its items in
    batches of that size through ``source.load_many``, in this process (the device is the parallelism).
    """
    indices = list(range(len(source))) if indices is None else list(indices)
    out = Path(out) if out is not None else None
    batch = getattr(getattr(source, "method", None), "batch_size", 1)
    if batch > 1 and hasattr(source, "load_many"):
        _init_worker(source, out)
        return [_record(i, s) for at in range(0, len(indices), batch)
                for i, s in zip(indices[at:at + batch], source.load_many(indices[at:at + batch]))]
    if workers <= 1:
        _init_worker(source, out)
        return [_mask_job(i) for i in indices]
    return list(map_ordered(_mask_job, indices, initializer=_init_worker, initargs=(source, out, True),
                            workers=workers, preload="bgbias.masks.run", chunksize=max(1, len(indices) // (workers * 4))))


def write_masks(source: Any, out: str | os.PathLike, workers: int = 1) -> dict:
    """``bgbias masks``: write every mask and ``OUT/masks.json`` (summary + per-item records); returns the summary."""
    records = run_masks(source, out, workers)
    dropped = [{"id": d.get("id", d.get("path")), "reason": d["reason"], "stage": "scan"}
               for d in getattr(source, "scan_dropped", [])]
    summary = quality_summary(records + dropped)
    write_json(Path(out) / "masks.json", {"source": source.describe(), "summary": summary,
                                          "items": records, "scan_dropped": dropped})
    return summary
