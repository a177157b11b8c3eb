"""Localisation metrics of an attribution map against the foreground mask (Quantus' definitions), batched in torch.

For a map ``a >= 0`` and a binary mask ``s`` (the fg_mask at >= 0.5), per image:

- ``fg_share``: relevance mass accuracy (Arras et al.), ``sum(a * m) / sum(a)``; bgbias weights by the soft
  mask ``m`` (the same blend its composites use), equal to Quantus' on binary masks.
- ``relevance_rank_accuracy`` (Arras et al.): with ``K = |s|``, the share of the K highest-ranked pixels that
  lie in ``s``.
- ``pointing_game`` (Zhang et al.; Quantus without tolerance): 1 when a pixel of maximal attribution lies in ``s``.
- ``iou_top``: IoU of the top ``q`` share of pixels (``top_percent``) with ``s``.

Ties are broken by pixel index (a stable sort), so results are deterministic. Maps with no attribution and
empty masks give NaN (counted, not averaged). Chance levels: a map that ranks pixels at random scores the mask's
area ``A`` on the first two and ``qA / (q + A - qA)`` on the IoU.
"""
from __future__ import annotations

import math

import torch

METRICS = ("fg_share", "relevance_rank_accuracy", "pointing_game", "iou_top")


def localisation(attr: torch.Tensor, soft_mask: torch.Tensor, top_percent: float = 20.0,
                 threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """``[N, H, W]`` maps and masks -> per-image metrics and chance levels, float ``[N]`` each (NaN = undefined)."""
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_percent must be in (0, 100], got {top_percent}.")
    n = attr.shape[0]
    a = attr.reshape(n, -1).double()
    m = soft_mask.reshape(n, -1).double()
    s = (m >= threshold).double()
    p = a.shape[1]
    total, k = a.sum(1), s.sum(1)
    ok = (total > 0) & (k > 0)
    nan = torch.full_like(total, math.nan)
    share = torch.where(total > 0, (a * m).sum(1) / total.clamp_min(1e-300), nan)
    order = torch.argsort(a, dim=1, descending=True, stable=True)
    hits = s.gather(1, order).cumsum(1)                         # mask pixels among the top-j, j = 1..P
    kk = k.long().clamp(1, p)
    rra = hits.gather(1, (kk - 1)[:, None])[:, 0] / kk.double()
    pointing = ((a == a.max(1, keepdim=True).values) & (s > 0)).any(1).double()
    q = max(1, math.ceil(top_percent / 100 * p))
    inter = hits[:, q - 1]
    iou = inter / (q + k - inter)
    area, qf = k / p, q / p
    return {"fg_share": share,
            "relevance_rank_accuracy": torch.where(ok, rra, nan),
            "pointing_game": torch.where(ok, pointing, nan),
            "iou_top": torch.where(ok, iou, nan),
            "area": area,
            "iou_top_chance": torch.where(k > 0, qf * area / (qf + area - qf * area), nan)}
