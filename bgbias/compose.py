"""The one compositing kernel: ``out = m * fg + (1 - m) * bg``.

Build, augmentation, adversarial training and the backgrounds challenge all
call this, so a variant means the same pixels everywhere. Pure, batched
(any leading dims), runs on whatever device the tensors are on, never edits
its inputs.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` or ``[..., 1, H, W]`` mask -> broadcastable ``[..., 1, H, W]`` float."""
    if mask.ndim == like.ndim - 1:
        mask = mask.unsqueeze(-3)
    if mask.ndim != like.ndim or mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(
            f"Mask shape {tuple(mask.shape)} does not fit image shape {tuple(like.shape)}; "
            "expected [..., H, W] or [..., 1, H, W] with the same H, W.")
    if mask.dtype == torch.bool:
        mask = mask.float()
    elif not mask.is_floating_point():
        raise TypeError(f"Mask must be float in [0, 1] or bool, got {mask.dtype}.")
    return mask


def compose(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste the foreground of ``fg`` (where ``mask`` is 1) onto ``bg``.

    fg, bg: ``[..., C, H, W]``, same dtype (float any range, or uint8); leading
        dims broadcast, so one foreground against K backgrounds is ``fg[None]`` vs ``bg``.
    mask: ``[..., H, W]`` or ``[..., 1, H, W]`` float in [0, 1] (soft masks blend) or bool.
    Returns a new tensor of fg's dtype; uint8 results are rounded to nearest.
    """
    if fg.ndim < 3 or bg.ndim < 3:
        raise ValueError(f"Expected images of shape [..., C, H, W], got {tuple(fg.shape)} and {tuple(bg.shape)}.")
    if fg.dtype != bg.dtype:
        raise TypeError(f"fg and bg must share a dtype, got {fg.dtype} and {bg.dtype}.")
    m = _as_mask(mask, fg)
    if fg.dtype == torch.uint8:
        m = m.to(torch.float32)
        out = torch.lerp(bg.to(torch.float32), fg.to(torch.float32), m)
        return out.round_().clamp_(0, 255).to(torch.uint8)
    m = m.to(fg.dtype)
    # bg + m * (fg - bg) == m*fg + (1-m)*bg, exact at m in {0, 1}
    return torch.where(m == 1, fg, torch.where(m == 0, bg, bg + m * (fg - bg)))


def compose_np(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 convenience wrapper around :func:`compose` for single images."""
    t = compose(_tensor(fg).permute(2, 0, 1), _tensor(bg).permute(2, 0, 1), _tensor(mask, np.float32))
    return t.permute(1, 2, 0).contiguous().numpy()


def _tensor(a: np.ndarray, dtype=None) -> torch.Tensor:
    """Zero-copy tensor view; read-only arrays (e.g. from PIL) are copied, as torch cannot view them."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return torch.from_numpy(a if a.flags.writeable else a.copy())
