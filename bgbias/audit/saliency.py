"""``bgbias saliency``: the share of attribution on the foreground mask, per variant and class (Grad-CAM, input gradients).

Attributions come from captum: ``LayerGradCam`` on the last ``nn.Conv2d`` (or
``--layer NAME``), upsampled to the input size, and ``Saliency`` (absolute
input gradients, summed over channels). For each image,
``fg_share = sum(attr * mask) / sum(attr)`` with the IN-9 ``fg_mask`` of the
same id (resized like the image); ``fg_area`` is the mask's mean, the share a
model that looks everywhere alike would get. The target class is the true
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

from bgbias.audit.core import Audit, AuditConfig, chw, open_audit, overlap_with_training
from bgbias.audit.evaluate import resolve_variants
from bgbias.core.io import read_image, read_mask, write_png
from bgbias.core.layout import find_mask, list_items, safe_join, sanitize_name
from bgbias.core.sample import BadSample
from bgbias.core.seeding import numpy_rng
from bgbias.models.load import LoadedModel

METHODS = ("gradcam", "input_grad")


@dataclass(frozen=True)
class SaliencyConfig(AuditConfig):
    """Everything that decides a saliency result; saved into ``saliency.json``."""

    variants: tuple[str, ...] | None = None       # None = every variant folder present
    methods: tuple[str, ...] = METHODS
    layer: str | None = None                      # Grad-CAM layer; None = last Conv2d
    target: str = "label"                         # label | pred
    max_images: int = 64                          # per variant (seeded subset of ids, same ids in every variant)
    overlays: int = 4                             # overlay PNGs per variant and method
    batch_size: int = 32


def find_layer(module: nn.Module, name: str | None) -> nn.Module:
    """The named layer, or the last ``nn.Conv2d`` in registration order."""
    named = dict(module.named_modules())
    convs = [n for n, m in named.items() if isinstance(m, nn.Conv2d)]
    if name is not None:
        if name not in named:
            raise ValueError(f"Unknown layer {name!r}; valid conv layers: {', '.join(convs[-5:]) or 'none'}.")
        return named[name]
    if not convs:
        raise ValueError("The model has no nn.Conv2d layer for Grad-CAM; pass --layer NAME or use input_grad only.")
    return named[convs[-1]]


def _targets(audit: Audit, logits: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "pred":
        return logits.argmax(1)
    out = []
    for row, y in zip(logits, labels.tolist()):
        members = audit.label_map.members(int(y), logits.shape[1])
        out.append(members[int(row[members].argmax())] if members else int(row.argmax()))
    return torch.tensor(out, device=logits.device)


def attribute(audit: Audit, x: torch.Tensor, targets: torch.Tensor, method: str, layer: nn.Module) -> torch.Tensor:
    """float ``[N, H, W]`` >= 0 attribution maps at the input size."""
    from captum.attr import LayerAttribution, LayerGradCam, Saliency

    model = audit.model.module
    if method == "gradcam":
        a = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
        a = LayerAttribution.interpolate(a, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return a.sum(1).clamp_min(0).detach()
    if method == "input_grad":
        return Saliency(model).attribute(x.clone().requires_grad_(True), target=targets, abs=True).sum(1).detach()
    raise ValueError(f"Unknown saliency method {method!r}; valid: {', '.join(METHODS)}.")


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
        if m not in METHODS:
            raise ValueError(f"Unknown saliency method {m!r}; valid: {', '.join(METHODS)}.")
    if cfg.target not in ("label", "pred"):
        raise ValueError(f"Unknown saliency target {cfg.target!r}; valid: label, pred.")
    data, out = Path(cfg.data), Path(out)
    audit = open_audit(cfg, loaded)
    layer = find_layer(audit.model.module, cfg.layer) if "gradcam" in cfg.methods else None
    variants = resolve_variants(data, cfg.variants, cfg.split)
    overlay_dir = out.parent / f"{out.stem}_overlays"
    chosen: set[str] | None = None
    shares = {m: {} for m in cfg.methods}
    result: dict[str, Any] = {"kind": "bgbias-saliency/1", "model": cfg.model, "data": str(data),
                              "config": asdict(cfg), "classes": audit.classes, "methods": {}, "overlays": [],
                              "layer": next((n for n, mod in audit.model.module.named_modules() if mod is layer), None),
                              "skipped": []}
    for v in variants:
        items = list_items(data, v, cfg.split)
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
                raise ValueError(f"{v}/{it.path.parent.name}/{it.path.name} has no mask {mpath.name} in fg_mask/{cfg.split}; "
                                 "image and mask names must match.")
            try:
                img = read_image(it.path)
                rows.append((it, img, read_mask(mpath, shape=img.shape[:2])))
            except BadSample as e:
                result["skipped"].append({"path": str(it.path), "variant": v, "reason": e.reason})
        for m in cfg.methods:
            shares[m][v] = []
        for i in tqdm(range(0, len(rows), cfg.batch_size), desc=f"saliency {v}", disable=not cfg.progress,
                      leave=False):
            chunk = rows[i:i + cfg.batch_size]
            x = audit.preprocess(torch.stack([chw(r[1]) for r in chunk]).to(audit.device))
            masks = torch.stack([torch.from_numpy(r[2]) for r in chunk])[:, None].to(audit.device)
            if tuple(masks.shape[-2:]) != tuple(x.shape[-2:]):
                masks = torch.nn.functional.interpolate(masks, size=tuple(x.shape[-2:]), mode="bilinear",
                                                        align_corners=False, antialias=True).clamp(0, 1)
            masks = masks[:, 0]
            labels = torch.tensor([r[0].label for r in chunk], device=audit.device)
            targets = _targets(audit, audit.logits(x), labels, cfg.target)
            for m in cfg.methods:
                a = attribute(audit, x, targets, m, layer)
                total = a.sum((1, 2))
                share = torch.where(total > 0, (a * masks).sum((1, 2)) / total.clamp_min(1e-12), torch.nan)
                for j, r in enumerate(chunk):
                    s = float(share[j])
                    shares[m][v].append((r[0].label, s, float(masks[j].mean())))
                    if i + j < cfg.overlays:
                        rel = Path(m) / sanitize_name(v) / f"{sanitize_name(r[0].id)}.png"
                        write_png(safe_join(overlay_dir, str(rel)), overlay(r[1], a[j].cpu().numpy(), r[2]))
                        result["overlays"].append({"method": m, "variant": v, "id": r[0].id, "label": r[0].label,
                                                   "fg_share": None if np.isnan(s) else s,
                                                   "path": f"{overlay_dir.name}/{rel.as_posix()}"})
    for m in cfg.methods:
        result["methods"][m] = {v: _summary(rows, audit.classes) for v, rows in shares[m].items()}
    result["split"] = cfg.split
    result["overlap_with_training"] = overlap_with_training(audit, {i.split("/", 1)[1] for i in chosen or ()},
                                                            cfg.split)
    return result


def _summary(rows: list[tuple[int, float, float]], classes: list[str]) -> dict[str, Any]:
    """Mean share / area over images with a non-zero attribution (all-zero maps are counted in ``n_zero``)."""
    ok = [(y, s, a) for y, s, a in rows if not np.isnan(s)]
    per_class = {}
    for k, name in enumerate(classes):
        vals = [s for y, s, _ in ok if y == k]
        if vals:
            per_class[name] = float(np.mean(vals))
    share = float(np.mean([s for _, s, _ in ok])) if ok else None
    area = float(np.mean([a for _, _, a in rows])) if rows else None
    return {"fg_share": share, "fg_area": area, "per_class": per_class, "n": len(ok), "n_zero": len(rows) - len(ok),
            "share_over_area": share / area if share is not None and area else None}
