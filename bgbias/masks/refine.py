"""Refinements of a working-resolution GrabCut mask for :func:`bgbias.masks.methods.grabcut_from_boxes`.

``guided``: He et al.'s guided filter snaps the upsampled mask to the photo's edges; ``band``: GrabCut again at
full resolution on a thin band around the boundary; ``fine``: coarse-to-fine GrabCut (the expensive first cut
from the box at a low working side, the remaining iterations at ``fine_side`` from that mask and its colour
models). Only ``fine`` changes the segmentation itself, not only its boundary (``bench/masks.py``).
"""
from __future__ import annotations

import cv2
import numpy as np

REFINERS = ("none", "guided", "band", "fine")


def guided_refine(image: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Soft full-size mask -> bool: He et al.'s guided filter (OpenCV contrib's ``ximgproc``, colour guide,
    radius ~1% of the image side) snaps the upsampled boundary to the photo's edges, then threshold at 0.5."""
    if not hasattr(cv2, "ximgproc"):
        raise ValueError("GrabCut refine 'guided' needs OpenCV's contrib modules (pip install opencv-contrib-python-headless).")
    r = max(2, round(0.01 * max(image.shape[:2])))
    return cv2.ximgproc.guidedFilter(image, soft.astype(np.float32), r, 1e-3 * 255.0**2) > 0.5


def band_refine(image: np.ndarray, soft: np.ndarray, region: np.ndarray, iterations: int = 2,
                width: float = 0.01) -> np.ndarray:
    """Soft full-size mask -> bool: GrabCut again at full resolution, initialised with the mask (GMMs re-learnt)
    and free only in a band of ``width`` x the image side around its boundary, on the crop holding the band.

    Why: the working-resolution cut is blocky at full size; only the band can change, so the pass is short.
    """
    H, W = image.shape[:2]
    fg = soft > 0.5
    r = max(1, round(width * max(H, W)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    inner = cv2.erode(fg.astype(np.uint8), disc).astype(bool)
    outer = cv2.dilate(fg.astype(np.uint8), disc).astype(bool) & region
    if not inner.any() or outer.all():
        return fg
    init = np.full((H, W), cv2.GC_BGD, np.uint8)
    init[outer], init[fg & region], init[inner] = cv2.GC_PR_BGD, cv2.GC_PR_FGD, cv2.GC_FGD
    ys, xs = np.nonzero(outer)
    pad = 2 * r + 8
    y0, y1, x0, x1 = max(0, ys.min() - pad), min(H, ys.max() + 1 + pad), max(0, xs.min() - pad), min(W, xs.max() + 1 + pad)
    sub = np.ascontiguousarray(init[y0:y1, x0:x1])
    if not (sub == cv2.GC_BGD).any():
        return fg
    try:
        cv2.grabCut(np.ascontiguousarray(image[y0:y1, x0:x1, ::-1]), sub, None, np.zeros((1, 65)), np.zeros((1, 65)),
                    iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return fg
    out = np.zeros((H, W), bool)
    out[y0:y1, x0:x1] = (sub == cv2.GC_FGD) | (sub == cv2.GC_PR_FGD)
    return out


def fine_grabcut(work: np.ndarray, region: np.ndarray, coarse: np.ndarray, bgd_model: np.ndarray,
                 fgd_model: np.ndarray, iterations: int = 3, min_box_fraction: float = 0.1) -> np.ndarray | None:
    """GrabCut's remaining iterations at a finer working resolution, from a coarse pass's mask and colour models.

    ``work``: the RGB crop at the fine side; ``region``: its box region (bool, outside is background);
    ``coarse``: the coarse mask (any size, resized bilinearly); the models are the coarse pass's GMMs (1x65).
    Why: GrabCut's first cut from a rectangle (poor initial colour models) is by far its most expensive
    iteration; run it small, then let the fine iterations (``GC_EVAL``: GMMs re-learnt, every box pixel free)
    recover what the small side loses (thin parts, small objects). Returns the bool fine mask, or ``None``
    when the fine pass fails or keeps under ``min_box_fraction`` of the box (the caller keeps the coarse mask).
    """
    h, w = work.shape[:2]
    up = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    init = np.full((h, w), cv2.GC_BGD, np.uint8)
    init[region & ~up], init[region & up] = cv2.GC_PR_BGD, cv2.GC_PR_FGD
    if not (init == cv2.GC_PR_FGD).any() or not (init != cv2.GC_PR_FGD).any():
        return None
    try:
        cv2.grabCut(np.ascontiguousarray(work[:, :, ::-1]), init, None, bgd_model.copy(), fgd_model.copy(),
                    int(iterations), cv2.GC_EVAL)
    except cv2.error:
        return None
    fg = (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)
    return fg if fg[region].sum() >= min_box_fraction * max(1, region.sum()) else None
