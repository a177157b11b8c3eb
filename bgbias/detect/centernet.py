"""A tiny CenterNet-style detector (objects as centre points) that trains in minutes on two CPU cores.

Obeys torchvision's detection interface, so ``eval-detect``, ``train --task detection`` and any
torchvision-style loop take it unchanged: ``model(list of [3, H, W] float in [0, 1])`` gives one
``{"boxes", "labels", "scores"}`` dict per image in eval mode; ``model(images, targets)`` gives
``{"loss_heatmap", "loss_size", "loss_offset"}`` in train mode. Labels are category ids
1..``num_classes - 1`` (0 is background, as in torchvision). Zhou et al. 2019: a class heatmap at
stride 4 (penalty-reduced focal loss around Gaussian peaks), box size (log pixels) and sub-cell
offset regressed at each centre, decoded by 3x3 max-pool peak picking. No RoI ops, no anchors:
most of the cost of Faster R-CNN on a CPU is not there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bgbias.detect.models import DETECTORS


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyCenterNet(nn.Module):
    """Six conv blocks to stride 4 (receptive field ~60 px), three 1x1 heads."""

    def __init__(self, num_classes: int = 11, width: int = 32, score_thresh: float = 0.05, max_dets: int = 50):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be >= 2, got {num_classes}.")
        w = int(width)
        self.stride, self.num_classes = 4, int(num_classes)
        self.score_thresh, self.max_dets = float(score_thresh), int(max_dets)
        self.body = nn.Sequential(_block(3, w, 2), _block(w, w), _block(w, 2 * w, 2), _block(2 * w, 2 * w),
                                  _block(2 * w, 2 * w, dilation=2), _block(2 * w, 2 * w, dilation=4))
        self.heat = nn.Sequential(_block(2 * w, w), nn.Conv2d(w, self.num_classes - 1, 1))
        self.size = nn.Conv2d(2 * w, 2, 1)
        self.offset = nn.Conv2d(2 * w, 2, 1)
        nn.init.constant_(self.heat[-1].bias, -2.19)   # prior 0.1 on every cell, as CenterNet
        nn.init.zeros_(self.size.weight)
        nn.init.constant_(self.size.bias, math.log(16.0))

    def _batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        if not images or any(x.ndim != 3 or x.shape[0] != 3 for x in images):
            raise ValueError(f"Expected a non-empty list of [3, H, W] images, got "
                             f"{[tuple(x.shape) for x in images]}.")
        h = max(x.shape[1] for x in images)
        w = max(x.shape[2] for x in images)
        h, w = -(-h // self.stride) * self.stride, -(-w // self.stride) * self.stride
        out = images[0].new_zeros(len(images), 3, h, w)
        for k, x in enumerate(images):
            out[k, :, :x.shape[1], :x.shape[2]] = x
        return (out - 0.45) / 0.25

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        f = self.body(self._batch(images))
        heat, size, off = self.heat(f), self.size(f), self.offset(f)
        if self.training:
            if targets is None:
                raise ValueError("In training mode the detector needs targets (boxes, labels per image).")
            return self._losses(heat, size, off, targets)
        return self._decode(heat, size, off, [tuple(x.shape[-2:]) for x in images])

    def _losses(self, heat, size, off, targets):
        n, c, h, w = heat.shape
        gt = torch.zeros_like(heat)
        ys = torch.arange(h, dtype=heat.dtype, device=heat.device)[:, None]
        xs = torch.arange(w, dtype=heat.dtype, device=heat.device)[None, :]
        rows, size_t, off_t = [], [], []
        for k, t in enumerate(targets):
            boxes, labels = t["boxes"].to(heat), t["labels"].to(heat.device)
            for (x0, y0, x1, y1), lab in zip(boxes.tolist(), labels.tolist()):
                bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
                cx, cy = (x0 + x1) / 2 / self.stride, (y0 + y1) / 2 / self.stride
                ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
                sigma = max(0.5, min(bw, bh) / self.stride / 3.0)
                g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma ** 2))
                gt[k, lab - 1] = torch.maximum(gt[k, lab - 1], g)
                rows.append((k, iy, ix))
                size_t.append((math.log(bw), math.log(bh)))
                off_t.append((cx - ix, cy - iy))
        p = heat.sigmoid().clamp(1e-4, 1 - 1e-4)
        pos = gt.eq(1).to(heat.dtype)
        neg = (1 - pos) * (1 - gt) ** 4
        focal = -(pos * (1 - p) ** 2 * p.log() + neg * p ** 2 * (1 - p).log()).sum() / pos.sum().clamp_min(1.0)
        if rows:
            k, iy, ix = (torch.tensor(v, device=heat.device) for v in zip(*rows))
            l_size = F.l1_loss(size[k, :, iy, ix], torch.tensor(size_t).to(size))
            l_off = F.l1_loss(off[k, :, iy, ix], torch.tensor(off_t).to(off))
        else:
            l_size = l_off = size.sum() * 0.0
        return {"loss_heatmap": focal, "loss_size": 0.5 * l_size, "loss_offset": l_off}

    @torch.no_grad()
    def _decode(self, heat, size, off, shapes):
        p = heat.sigmoid()
        peaks = p * (F.max_pool2d(p, 3, 1, 1) == p)
        n, c, h, w = p.shape
        out = []
        for k in range(n):
            scores, flat = peaks[k].reshape(-1).topk(min(self.max_dets, c * h * w))
            keep = scores > self.score_thresh
            scores, flat = scores[keep], flat[keep]
            cls, cell = flat // (h * w), flat % (h * w)
            iy, ix = cell // w, cell % w
            cx = (ix.to(p.dtype) + off[k, 0, iy, ix]) * self.stride
            cy = (iy.to(p.dtype) + off[k, 1, iy, ix]) * self.stride
            bw, bh = size[k, 0, iy, ix].exp(), size[k, 1, iy, ix].exp()
            hh, ww = shapes[k]
            boxes = torch.stack([(cx - bw / 2).clamp(0, ww), (cy - bh / 2).clamp(0, hh),
                                 (cx + bw / 2).clamp(0, ww), (cy + bh / 2).clamp(0, hh)], 1)
            out.append({"boxes": boxes, "labels": cls + 1, "scores": scores})
        return out


@DETECTORS.register("tiny_centernet", help="CenterNet-style detector, 6 conv blocks at stride 4: trains in minutes on CPU")
def tiny_centernet(num_classes: int = 11, width: int = 32, score_thresh: float = 0.05, max_dets: int = 50) -> nn.Module:
    return TinyCenterNet(num_classes, width, score_thresh, max_dets)
