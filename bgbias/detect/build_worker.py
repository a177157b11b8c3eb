"""What a detection-build worker does: the per-chunk tasks of :func:`bgbias.detect.build.build_detection`.

Each worker process holds the source, the variants, the seed and OUT in ``_STATE`` (set once by
:func:`init_worker`, so a task carries only image indices). A task writes its images and masks
(atomically, skipping files that exist) and returns plain records in index order; the main
process alone writes the annotation files and the manifest, so the output bytes do not depend
on the worker count or the executor.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from bgbias.core.compose import compose_np
from bgbias.core.io import write_npy, write_png
from bgbias.core.layout import MASK_DIR
from bgbias.core.sample import BadSample
from bgbias.detect.data import DetSample
from bgbias.synth.backgrounds import box_mask, resize_crop
from bgbias.synth.variants import render_variants
from bgbias.train.augment import fill_foreground

_STATE: dict[str, Any] = {}


def init_worker(state: dict) -> None:
    """Per-process state; one torch thread (per-image tensors are small; threads only contend)."""
    torch.set_num_threads(1)
    _STATE.clear()
    _STATE.update(state)


def remove_objects(sample: DetSample) -> np.ndarray:
    """uint8 HxWx3: every annotated box (crowds too) and any leftover mask pixel filled from the background."""
    h, w = sample.size
    region = box_mask((h, w), sample.boxes()) > 0
    region |= (sample.mask > 0) | sample.crowd
    if not region.any():
        return sample.image.copy()
    if region.all():
        raise BadSample("boxes cover the whole image (no background to fill Only-BG from)")
    x = torch.from_numpy(sample.image).permute(2, 0, 1)[None].float() / 255.0
    filled = fill_foreground(x, torch.from_numpy(region)[None, None].float())[0]
    out = filled.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return compose_np(out, sample.image, region)   # exactly the original outside the region


def image_task(indices: Sequence[int]) -> list[dict]:
    """Load each image, write its mask and every variant but ``mixed_rand``; one record per index."""
    source, out, seed = _STATE["source"], Path(_STATE["out"]), _STATE["seed"]
    simple = [v for v in _STATE["variants"] if v.name != "mixed_rand"]
    records = []
    for i in indices:
        try:
            s = source.load(i)
        except BadSample as e:
            records.append({"index": i, "dropped": e.reason})
            continue
        rec = {"index": i, "id": s.id, "info": {"id": s.image_id, "file_name": f"{s.id}.png", "height": s.size[0],
                                    "width": s.size[1], "annotations": [copy.deepcopy(a) for a in s.annotations]},
               "notes": list(s.notes), "missing": {}}
        records.append(rec)
        mask_path = out / MASK_DIR / s.split / f"{s.id}.npy"
        if not mask_path.exists():
            write_npy(mask_path, s.mask.astype(np.float32))
        todo = [v for v in simple if not (out / v.dirname / s.split / "images" / f"{s.id}.png").exists()]
        if not todo:
            continue
        pasted = render_variants(s.as_sample(), [v.paste for v in todo if v.paste is not None], seed) \
            if any(v.paste is not None for v in todo) else {}
        for v in todo:
            try:
                if v.name == "original":
                    img = s.image
                elif v.name == "only_bg":
                    img = remove_objects(s)
                elif v.name == "only_bg_b":
                    img = compose_np(np.zeros_like(s.image), s.image, box_mask(s.size, s.boxes()) > 0)
                else:
                    img = pasted[v.paste.name]
            except BadSample as e:
                rec["missing"][v.name] = e.reason
                continue
            write_png(out / v.dirname / s.split / "images" / f"{s.id}.png", img)
    return records


def mixed_task(pairs: Sequence[tuple[int, int]]) -> list[tuple[str, str]]:
    """``(image, partner)`` index pairs: the image's objects on the partner's Only-BG; returns (id, reason) misses."""
    source, out = _STATE["source"], Path(_STATE["out"])
    ids, splits = source.ids(), source.splits()
    missing = []
    for i, j in pairs:
        path = out / "mixed_rand" / splits[i] / "images" / f"{ids[i]}.png"
        if path.exists():
            continue
        s, partner = source.load(i), source.load(j)
        try:
            bg = resize_crop(remove_objects(partner), s.size)
        except BadSample as e:
            missing.append((ids[i], f"mixed_rand: partner {partner.id}: {e.reason}"))
            continue
        write_png(path, compose_np(s.image, bg, s.mask))
    return missing
