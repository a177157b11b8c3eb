"""Foreground masks for sources that have none: mask methods, IN-9 box rules, the mask cache, ``with_masks``.

Methods (registry ``MASK_METHODS``): ``given`` (the source's own mask), ``threshold[:VALUE]``
(intensity, Otsu by default), ``grabcut`` (OpenCV GrabCut from the annotation boxes, as
ImageNet-9 made its masks) and ``model:<arch>`` (a torchvision segmentation network with a
local weights file; never downloads unless asked; in :mod:`bgbias.masks.model`, loaded by the
registry on first use).
:func:`with_masks` wraps any source so ``load(i)`` returns a sample with a mask; masks are
cached on disk per (source spec, item, image content, boxes, method, parameters).
Drop reasons are ``"<rule>: <detail>"`` so :func:`~bgbias.masks.run.quality_summary` can count
them per rule. Running a source's masks (``bgbias masks``: :func:`~bgbias.masks.run.run_masks`,
:func:`~bgbias.masks.run.write_masks`) is in :mod:`bgbias.masks.run`, re-exported here. The CLI
glue (``add_mask_arguments``, ``source_from_args``) is in :mod:`bgbias.cli._mask_options`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import cv2
import numpy as np

from bgbias.core.registry import Registry
from bgbias.core.sample import BadSample, Box, Sample
from bgbias.core.seeding import derive_seed

MASK_METHODS: Registry = Registry("mask method", plugins=("bgbias.masks.model",))


class MaskMethod(ABC):
    """A function ``Sample -> float32 HxW mask in [0, 1]`` with a name and cache-relevant params."""

    name = "method"

    def params(self) -> dict:
        """Everything that changes the output (part of the cache key)."""
        return {}

    @abstractmethod
    def __call__(self, sample: Sample) -> np.ndarray:
        """The sample's foreground mask; raises BadSample with a reason when there is none to make."""


@MASK_METHODS.register("given")
class GivenMask(MaskMethod):
    """The source's own mask (from annotations); a sample without one is dropped."""

    name = "given"

    def __call__(self, sample: Sample) -> np.ndarray:
        if sample.mask is None:
            raise BadSample("mask_missing: the source has no mask for this image; use --masks-from grabcut|model:ARCH")
        return sample.mask


@MASK_METHODS.register("threshold")
class ThresholdMask(MaskMethod):
    """Grey-level threshold (Otsu unless ``value`` in [0, 1]); polarity 'auto' makes the border background."""

    name = "threshold"

    def __init__(self, value: str | float | None = None, polarity: str = "auto"):
        self.value = None if value in (None, "", "otsu") else float(value)
        if self.value is not None and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"Threshold {value!r} is outside [0, 1]; give a fraction of white or 'otsu'.")
        if polarity not in ("auto", "bright", "dark"):
            raise ValueError(f"Unknown threshold polarity {polarity!r}; valid: auto, bright, dark.")
        self.polarity = polarity

    def params(self) -> dict:
        return {"value": self.value, "polarity": self.polarity}

    def __call__(self, sample: Sample) -> np.ndarray:
        grey = cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY)
        if self.value is None:
            _, bright = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        else:
            bright = (grey > self.value * 255).astype(np.uint8)
        fg = bright.astype(bool)
        if self.polarity == "dark" or (self.polarity == "auto" and _border(fg).mean() > 0.5):
            fg = ~fg
        return fg.astype(np.float32)


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


@MASK_METHODS.register("grabcut")
class GrabCutMask(MaskMethod):
    """OpenCV GrabCut initialised with the boxes, as IN-9: 5 iterations, < 10% of the box is a failure.

    One box: ``GC_INIT_WITH_RECT`` exactly as IN-9. Several boxes (union mode): the same
    initialisation written as a mask (every box probable foreground, the rest background).
    Tries, in order: (1) the box, seed ``seed``; (2) the box, a second seed; (3) every box
    enlarged by 5% of its size per side. ``cv2.setRNGSeed`` precedes every call, so masks are
    deterministic. All tries fail -> ``BadSample("grabcut_small: ...")``.
    """

    name = "grabcut"

    def __init__(self, iterations: int = 5, min_box_fraction: float = 0.1, retries: int = 2, seed: int = 0,
                 work_side: int | str | None = None, refine: str = "none"):
        if int(iterations) < 1 or not 0.0 <= float(min_box_fraction) < 1.0 or not 0 <= int(retries) <= 2:
            raise ValueError(f"GrabCut needs iterations >= 1, 0 <= min_box_fraction < 1 and retries in 0..2; "
                             f"got {iterations}, {min_box_fraction}, {retries}.")
        self.work_side = None if work_side in (None, "", "full", 0) else int(work_side)
        if self.work_side is not None and self.work_side < 32:
            raise ValueError(f"GrabCut work_side must be >= 32 pixels (or 'full'), got {work_side}.")
        if refine not in REFINERS:
            raise ValueError(f"Unknown GrabCut refine {refine!r}; valid: {', '.join(REFINERS)}.")
        self.iterations, self.min_box_fraction = int(iterations), float(min_box_fraction)
        self.retries, self.seed, self.refine = int(retries), int(seed), refine

    def params(self) -> dict:
        p = {"iterations": self.iterations, "min_box_fraction": self.min_box_fraction,
             "retries": self.retries, "seed": self.seed, "opencv": cv2.__version__}
        if self.work_side is not None or self.refine != "none":        # old cache keys stay valid
            p.update(work_side=self.work_side, refine=self.refine)
        return p

    def __call__(self, sample: Sample) -> np.ndarray:
        if not sample.boxes:
            raise BadSample("no_box: GrabCut needs a box and this image has none (give --boxes)")
        return grabcut_from_boxes(sample.image, sample.boxes, self.iterations, self.min_box_fraction,
                                  self.retries, self.seed, self.work_side, self.refine)


@MASK_METHODS.register("grabcut_fast")
class FastGrabCutMask(GrabCutMask):
    """GrabCut at a working resolution (longer side ``work_side``, default 200 px), the mask brought back to
    full size and refined at the boundary with a guided filter on the full-resolution photo (see
    :func:`guided_refine`); several times faster than full-resolution GrabCut (``bench/masks.py``)."""

    name = "grabcut_fast"

    def __init__(self, work_side: int | str = 200, refine: str = "guided", **kw):
        super().__init__(work_side=work_side, refine=refine, **kw)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter (grey guide, float32 in [0, 1]): edges of ``guide`` carried into ``src``."""
    k = (2 * radius + 1, 2 * radius + 1)
    box = lambda a: cv2.boxFilter(a, -1, k, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mi, ms = box(guide), box(src)
    a = (box(guide * src) - mi * ms) / (box(guide * guide) - mi * mi + eps)
    b = ms - a * mi
    return box(a) * guide + box(b)


def guided_refine(image: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Soft full-size mask -> {0, 1}: a guided filter (radius ~1% of the image side) snaps the upsampled
    boundary to the photo's edges, then threshold at 0.5."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    r = max(2, round(0.01 * max(image.shape[:2])))
    return guided_filter(grey, soft.astype(np.float32), r, 1e-3) > 0.5


REFINERS = ("none", "guided")


def grabcut_from_boxes(image: np.ndarray, boxes: tuple[Box, ...], iterations: int = 5,
                       min_box_fraction: float = 0.1, retries: int = 2, seed: int = 0,
                       work_side: int | None = None, refine: str = "none") -> np.ndarray:
    """uint8 HxWx3 RGB + boxes -> float32 HxW {0, 1} foreground. See :class:`GrabCutMask`.

    ``work_side``: run GrabCut on the photo shrunk so its longer side is at most this (boxes scaled alike),
    bring the mask back to full size (bilinear, soft) and cut it with ``refine`` (``none``: at 0.5).
    """
    H, W = image.shape[:2]
    scale = 1.0 if work_side is None else min(1.0, work_side / max(H, W))
    work, work_boxes = image, boxes
    if scale < 1.0:
        work = cv2.resize(image, (max(1, round(W * scale)), max(1, round(H * scale))), interpolation=cv2.INTER_AREA)
        sy, sx = work.shape[0] / H, work.shape[1] / W
        work_boxes = tuple((int(np.floor(x0 * sx)), int(np.floor(y0 * sy)), int(np.ceil(x1 * sx)),
                            int(np.ceil(y1 * sy))) for x0, y0, x1, y1 in boxes)
    small = _grabcut(work, work_boxes, iterations, min_box_fraction, retries, seed)
    if scale == 1.0 and refine == "none":
        return small
    soft = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR) if scale < 1.0 else small
    fg = guided_refine(image, soft) if refine == "guided" else soft > 0.5
    return (fg & _box_region(_enlarge(boxes, 0.05, H, W), H, W)).astype(np.float32)


def _grabcut(image: np.ndarray, boxes: tuple[Box, ...], iterations: int, min_box_fraction: float, retries: int,
             seed: int) -> np.ndarray:
    h, w = image.shape[:2]
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    region = _box_region(boxes, h, w)
    area = int(region.sum())
    if area == 0:
        raise BadSample("box_zero_area: every box has zero area inside the image")
    tries = [(boxes, seed), (boxes, derive_seed(seed, "grabcut-retry")), (_enlarge(boxes, 0.05, h, w), seed)]
    frac, error = 0.0, ""
    for try_boxes, try_seed in tries[: 1 + retries]:
        mask = np.zeros((h, w), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(int(try_seed) % (2**31))
        try:
            if len(try_boxes) == 1:
                x0, y0, x1, y1 = try_boxes[0]
                cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
            else:
                mask[:] = cv2.GC_BGD
                mask[_box_region(try_boxes, h, w)] = cv2.GC_PR_FGD
                cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as e:
            error = str(e).strip().splitlines()[-1][:120]
            continue
        fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        frac = float(fg[region].sum()) / area
        if frac >= min_box_fraction:
            return fg.astype(np.float32)
    if error and frac == 0.0:
        raise BadSample(f"grabcut_error: OpenCV failed ({error}); a box covering the whole image leaves no background")
    raise BadSample(f"grabcut_small: mask covers {frac:.1%} of the box (< {min_box_fraction:.0%}) "
                    f"after {1 + retries} tries")


def _box_region(boxes: tuple[Box, ...], h: int, w: int) -> np.ndarray:
    region = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        region[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] = True
    return region


def _enlarge(boxes: tuple[Box, ...], rate: float, h: int, w: int) -> tuple[Box, ...]:
    out = []
    for x0, y0, x1, y1 in boxes:
        dx, dy = max(1, round((x1 - x0) * rate)), max(1, round((y1 - y0) * rate))
        out.append((max(0, x0 - dx), max(0, y0 - dy), min(w, x1 + dx), min(h, y1 + dy)))
    return tuple(out)


def list_mask_methods(pattern: str = "*") -> list[str]:
    return MASK_METHODS.names(pattern)


def create_mask_method(spec: str | MaskMethod, **kwargs: Any) -> MaskMethod:
    """``"grabcut"``, ``"threshold:0.4"``, ``"model:lraspp_mobilenet_v3_large"`` (weights=FILE) -> method."""
    return spec if isinstance(spec, MaskMethod) else MASK_METHODS.create(spec, **kwargs)
