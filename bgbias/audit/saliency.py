"""``bgbias saliency``: where attribution falls against the foreground mask, per variant and class, for any model kind.

Methods are a registry (:mod:`bgbias.audit.saliency_methods`): Grad-CAM on a
layer chosen per model (last ``nn.Conv2d`` for CNNs, the last attention block's
first norm with its tokens reshaped to the patch grid for ViT/DeiT/Swin/CLIP;
``--target-layer NAME`` overrides), and input-gradient methods (captum). For each
image the localisation metrics of :mod:`bgbias.audit.saliency_metrics` compare
the map with the IN-9 ``fg_mask`` of the same id (given the image's geometry:
resize and centre crop): ``fg_share = sum(attr * mask) / sum(attr)`` (relevance
mass accuracy), relevance rank accuracy, pointing game, IoU of the top
``top_percent`` pixels; ``fg_area`` is the mask's mean, the share a model that
looks everywhere alike would get, and ``chance`` holds each metric's level for a
random map. The target class is the true
label (the label-mapped model class with the highest logit) or, with
``target="pred"``, the predicted class. Overlay PNGs (jet colormap, mask
outline) are written next to the JSON for the report.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bgbias.audit.core import Audit, AuditConfig, bootstrap_ci, chw, open_audit, overlap_with_training
from bgbias.audit.evaluate import resolve_variants
from bgbias.core.io import read_image, read_mask, write_png
from bgbias.core.layout import find_mask, list_items, safe_join, sanitize_name
from bgbias.core.record import build_record
from bgbias.core.sample import BadSample
from bgbias.audit.saliency_methods import DEFAULT_METHODS, SALIENCY_METHODS, Target, find_target
from bgbias.audit.saliency_methods import attribute as attribute_with
from bgbias.audit.saliency_metrics import METRICS, localisation
from bgbias.core.seeding import numpy_rng
from bgbias.models.load import LoadedModel

METHODS = DEFAULT_METHODS


@dataclass(frozen=True)
class SaliencyConfig(AuditConfig):
    """Everything that decides a saliency result; saved into ``saliency.json``."""

    variants: tuple[str, ...] | None = None       # None = every variant folder present
    methods: tuple[str, ...] = METHODS            # any of SALIENCY_METHODS.names()
    layer: str | None = None                      # Grad-CAM layer; None = chosen per model (find_target)
    target: str = "label"                         # label | pred
    max_images: int = 64                          # per variant (seeded subset of ids, same ids in every variant)
    overlays: int = 4                             # overlay PNGs per variant and method
    batch_size: int = 32
    top_percent: float = 20.0                     # iou_top: share of the highest-attributed pixels
    n_bootstrap: int = 1000


def find_layer(module: nn.Module, name: str | None) -> nn.Module:
    """The Grad-CAM layer module (see :func:`bgbias.audit.saliency_methods.find_target`)."""
    return find_target(module, name).module


def _targets(audit: Audit, logits: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "pred":
        return logits.argmax(1)
    out = []
    for row, y in zip(logits, labels.tolist()):
        members = audit.label_map.members(int(y), logits.shape[1])
        out.append(members[int(row[members].argmax())] if members else int(row.argmax()))
    return torch.tensor(out, device=logits.device)


def attribute(audit: Audit, x: torch.Tensor, targets: torch.Tensor, method: str, layer: Target | None) -> torch.Tensor:
    """float ``[N, H, W]`` >= 0 attribution maps at the input size."""
    return attribute_with(method, audit.model.module, x, targets, layer)


def overlay(image: np.ndarray, attr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 HxWx3: the image blended with the jet-coloured attribution and the mask outline in white."""
    h, w = image.shape[:2]
    a = cv2.resize(attr.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    a = (255 * a / a.max()).astype(np.uint8) if a.max() > 0 else np.zeros((h, w), np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(a, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
    contours, _ = cv2.findContours((mask > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def run_saliency(cfg: SaliencyConfig, out: str | Path = "saliency.json",
                 loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Attribute a seeded subset of each variant; return the ``saliency.json`` dict, overlays written beside ``out``."""
    for m in cfg.methods:
        if m not in SALIENCY_METHODS:
            raise ValueError(f"Unknown saliency method {m!r}; valid: {', '.join(METHODS)}, "
                             f"{', '.join(n for n in SALIENCY_METHODS.names() if n not in METHODS)}.")
    if cfg.target not in ("label", "pred"):
        raise ValueError(f"Unknown saliency target {cfg.target!r}; valid: label, pred.")
    data, out = Path(cfg.data), Path(out)
    audit = open_audit(cfg, loaded)
    pp = audit.preprocess
    layer = find_target(audit.model.module, cfg.layer) if any(
        "layer" in SALIENCY_METHODS.entry(m).tags for m in cfg.methods) else None
    variants = resolve_variants(data, cfg.variants, cfg.split)
    folders = dict(variants)
    overlay_dir = out.parent / f"{out.stem}_overlays"
    chosen: set[str] | None = None
    per_image = {m: {} for m in cfg.methods}
    result: dict[str, Any] = {"kind": "bgbias-saliency/1", "model": cfg.model, "data": str(data),
                              "config": asdict(cfg), "classes": audit.classes, "methods": {}, "overlays": [],
                              "layer": layer.name if layer else None, "preprocess": pp.to_dict(), "skipped": []}
    for v, folder in variants:     # keyed by canonical name; overlay paths and seeds keep the folder
        items = list_items(data, folder, cfg.split)
        if chosen is None:
            ids = sorted({f"{it.label}/{it.id}" for it in items})
            if len(ids) > cfg.max_images:
                ids = sorted(numpy_rng(cfg.seed, "saliency").choice(ids, cfg.max_images, replace=False).tolist())
            chosen = set(ids)
        items = [it for it in items if f"{it.label}/{it.id}" in chosen]
        rows = []      # (item, image, mask)
        for it in items:
            mpath = find_mask(data, it)
            if not mpath.is_file():
                raise ValueError(f"{folder}/{it.path.parent.name}/{it.path.name} has no mask {mpath.name} in "
                                 f"fg_mask/{cfg.split}; image and mask names must match.")
            try:
                img = read_image(it.path)
                rows.append((it, img, read_mask(mpath, shape=img.shape[:2])))
            except BadSample as e:
                result["skipped"].append({"path": str(it.path), "variant": v, "reason": e.reason})
        for m in cfg.methods:
            per_image[m][v] = []
        for i in tqdm(range(0, len(rows), cfg.batch_size), desc=f"saliency {v}", disable=not cfg.progress,
                      leave=False):
            chunk = rows[i:i + cfg.batch_size]
            raw = torch.stack([chw(r[1]) for r in chunk]).to(audit.device)
            x = pp(raw)
            masks = torch.stack([torch.from_numpy(r[2]) for r in chunk])[:, None].to(audit.device)
            masks = pp.resize(masks, "bilinear").clamp(0, 1)[:, 0]     # the image's geometry (resize, crop)
            labels = torch.tensor([r[0].label for r in chunk], device=audit.device)
            targets = _targets(audit, audit.logits(x), labels, cfg.target)
            shown = None
            if pp.resize_to is not None:    # cropped: overlays show what the model saw
                shown = (pp.resize(raw.float() / 255).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu()
            for m in cfg.methods:
                a = attribute(audit, x, targets, m, layer)
                loc = {k: t.cpu().tolist() for k, t in localisation(a, masks, cfg.top_percent).items()}
                for j, r in enumerate(chunk):
                    one = {k: loc[k][j] for k in loc}
                    per_image[m][v].append((r[0].label, one, float(masks[j].mean())))
                    if i + j < cfg.overlays:
                        rel = Path(m) / sanitize_name(folder) / f"{sanitize_name(r[0].id)}.png"
                        img, msk = (r[1], r[2]) if shown is None else (shown[j].numpy(), masks[j].cpu().numpy())
                        write_png(safe_join(overlay_dir, str(rel)), overlay(img, a[j].cpu().numpy(), msk))
                        s = one["fg_share"]
                        result["overlays"].append({"method": m, "variant": v, "id": r[0].id, "label": r[0].label,
                                                   "fg_share": None if np.isnan(s) else s,
                                                   "path": f"{overlay_dir.name}/{rel.as_posix()}"})
    result["record"] = build_record(audit.model.files, audit.model.module, audit.device, cfg.seed, data,
                                    result["preprocess"])
    for m in cfg.methods:
        result["methods"][m] = {v: _summary(rows, audit.classes, numpy_rng(cfg.seed, "saliency-ci", m, folders[v]),
                                            cfg.n_bootstrap) for v, rows in per_image[m].items()}
    result["split"] = cfg.split
    result["overlap_with_training"] = overlap_with_training(audit, {i.split("/", 1)[1] for i in chosen or ()},
                                                            cfg.split)
    return result


def _mean(values: list[float]) -> float | None:
    ok = [x for x in values if not np.isnan(x)]
    return float(np.mean(ok)) if ok else None


def _summary(rows: list[tuple[int, dict[str, float], float]], classes: list[str], rng: np.random.Generator,
             n_boot: int) -> dict[str, Any]:
    """Means over images with a defined value (all-zero maps counted in ``n_zero``), chance levels, 95% intervals,
    and the same per class. ``fg_share`` is the relevance mass accuracy."""
    ok = [(y, d, a) for y, d, a in rows if not np.isnan(d["fg_share"])]
    per_class, per_class_metrics = {}, {}
    for k, name in enumerate(classes):
        mine = [d for y, d, _ in ok if y == k]
        if mine:
            per_class[name] = float(np.mean([d["fg_share"] for d in mine]))
            per_class_metrics[name] = {**{m: _mean([d[m] for d in mine]) for m in METRICS}, "n": len(mine)}
    share = float(np.mean([d["fg_share"] for _, d, _ in ok])) if ok else None
    area = float(np.mean([a for _, _, a in rows])) if rows else None
    out: dict[str, Any] = {"fg_share": share, "fg_area": area, "per_class": per_class, "n": len(ok),
                           "n_zero": len(rows) - len(ok),
                           "share_over_area": share / area if share is not None and area else None}
    ci = {}
    for m in METRICS:
        vals = np.array([d[m] for _, d, _ in ok], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        if m != "fg_share":
            out[m] = float(vals.mean()) if len(vals) else None
        ci[m] = bootstrap_ci(vals, rng, n_boot)
    binary_area = _mean([d["area"] for _, d, _ in ok if not np.isnan(d["pointing_game"])])
    out["chance"] = {"fg_share": area, "relevance_rank_accuracy": binary_area, "pointing_game": binary_area,
                     "iou_top": _mean([d["iou_top_chance"] for _, d, _ in ok if not np.isnan(d["iou_top"])])}
    out["ci95"] = ci
    out["per_class_metrics"] = per_class_metrics
    return out
