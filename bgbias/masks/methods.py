"""Foreground masks for sources that have none: mask methods, IN-9 box rules, the mask cache, ``with_masks``.

Methods (registry ``MASK_METHODS``): ``given`` (the source's own mask), ``threshold[:VALUE]``
(intensity, Otsu by default), ``grabcut`` (OpenCV GrabCut from the annotation boxes, as
ImageNet-9 made its masks), ``grabcut_fast`` (GrabCut on the boxes' crop at a working resolution,
snapped to the photo's edges by a guided filter) and ``model:<arch>`` (a torchvision segmentation network with a
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

import textwrap
from abc import ABC, abstractmethod
from typing import Any

import cv2
import numpy as np

from bgbias.core.registry import Registry
from bgbias.core.sample import BadSample, Box, Sample
from bgbias.core.seeding import derive_seed
from bgbias.masks.refine import REFINERS, band_refine, fine_grabcut, guided_refine

MASK_METHODS: Registry = Registry("mask method", plugins=("bgbias.masks.model",))


class MaskMethod(ABC):
    """A function ``Sample -> float32 HxW mask in [0, 1]`` with a name and cache-relevant params."""

    name = "method"

    def params(self) -> dict:
        """Everything that changes the output (part of the cache key)."""
        return {}

    batch_size = 1   # > 1: :meth:`masks` is faster on many samples at once (a network's batched forward)

    @abstractmethod
    def __call__(self, sample: Sample) -> np.ndarray:
        """The sample's foreground mask; raises BadSample with a reason when there is none to make."""

    def masks(self, samples: list[Sample]) -> list[np.ndarray | BadSample]:
        """Every sample's mask, or the BadSample it raised (one by one unless a method batches)."""
        out: list[np.ndarray | BadSample] = []
        for s in samples:
            try:
                out.append(self(s))
            except BadSample as e:
                out.append(e)
        return out


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
    enlarged by 5% of its size per side; (4, ``retries=3``) the box's border ring (5% of its size per side) as
    probable background and its core as probable foreground: a box covering the whole photo leaves GrabCut no
    background to learn from. ``cv2.setRNGSeed`` precedes every call, so masks are deterministic. All tries
    fail -> ``BadSample("grabcut_small: ...")``.
    """

    name = "grabcut"

    def __init__(self, iterations: int = 5, min_box_fraction: float = 0.1, retries: int = 2, seed: int = 0,
                 work_side: int | str | None = None, refine: str = "none", margin: float = 0.15,
                 fine_side: int = 400, fine_iterations: int = 3):
        if int(iterations) < 1 or not 0.0 <= float(min_box_fraction) < 1.0 or not 0 <= int(retries) <= 3:
            raise ValueError(f"GrabCut needs iterations >= 1, 0 <= min_box_fraction < 1 and retries in 0..3; "
                             f"got {iterations}, {min_box_fraction}, {retries}.")
        self.work_side = None if work_side in (None, "", "full", 0) else int(work_side)
        if self.work_side is not None and self.work_side < 32:
            raise ValueError(f"GrabCut work_side must be >= 32 pixels (or 'full'), got {work_side}.")
        if refine not in REFINERS:
            raise ValueError(f"Unknown GrabCut refine {refine!r}; valid: {', '.join(REFINERS)}.")
        self.iterations, self.min_box_fraction = int(iterations), float(min_box_fraction)
        if not 0.0 <= float(margin) <= 1.0:
            raise ValueError(f"GrabCut margin must be a fraction of the box size in [0, 1], got {margin}.")
        self.retries, self.seed, self.refine, self.margin = int(retries), int(seed), refine, float(margin)
        if refine == "fine" and (self.work_side is None or int(fine_side) < self.work_side or int(fine_iterations) < 1):
            raise ValueError(f"GrabCut refine 'fine' needs a work_side, fine_side >= work_side and fine_iterations "
                             f">= 1; got {work_side}, {fine_side}, {fine_iterations}.")
        self.fine_side, self.fine_iterations = int(fine_side), int(fine_iterations)

    def params(self) -> dict:
        p = {"iterations": self.iterations, "min_box_fraction": self.min_box_fraction,
             "retries": self.retries, "seed": self.seed, "opencv": cv2.__version__}
        if self.work_side is not None or self.refine != "none":        # old cache keys stay valid
            p.update(work_side=self.work_side, refine=self.refine, margin=self.margin)
        if self.refine == "fine":
            p.update(fine_side=self.fine_side, fine_iterations=self.fine_iterations)
        return p

    def __call__(self, sample: Sample) -> np.ndarray:
        if not sample.boxes:
            raise BadSample("no_box: GrabCut needs a box and this image has none (give --boxes)")
        return grabcut_from_boxes(sample.image, sample.boxes, self.iterations, self.min_box_fraction,
                                  self.retries, self.seed, self.work_side, self.refine, self.margin,
                                  self.fine_side, self.fine_iterations)


@MASK_METHODS.register("grabcut_fast")
class FastGrabCutMask(GrabCutMask):
    """GrabCut on the boxes' neighbourhood (boxes + ``margin`` of their size) shrunk so its longer side is at most
    ``work_side``, the mask brought back to full size and refined (see :func:`grabcut_from_boxes`):
    ``fine`` (the default: coarse-to-fine, 1 iteration at side 200 then 3 at ``fine_side`` 400), ``guided``
    (OpenCV contrib's guided filter; side 300, 5 iterations), ``band`` (a second GrabCut pass at full resolution
    on a thin band around the boundary) or ``none``. Measured against full-resolution GrabCut in ``bench/masks.py``.
    """

    name = "grabcut_fast"
    DEFAULTS = {"fine": {"work_side": 200, "iterations": 1}}    # other refines: side 300, 5 iterations

    def __init__(self, work_side: int | str | None = None, refine: str = "fine", iterations: int | None = None,
                 retries: int = 3, **kw):
        d = self.DEFAULTS.get(refine, {})
        super().__init__(work_side=d.get("work_side", 300) if work_side is None else work_side, refine=refine,
                         iterations=d.get("iterations", 5) if iterations is None else iterations, retries=retries,
                         **kw)


FALLBACK_ITERATIONS = 5   # GrabCut iterations at the fine side when the coarse cut of ``refine="fine"`` collapses


def grabcut_from_boxes(image: np.ndarray, boxes: tuple[Box, ...], iterations: int = 5,
                       min_box_fraction: float = 0.1, retries: int = 2, seed: int = 0,
                       work_side: int | None = None, refine: str = "none", margin: float | None = 0.15,
                       fine_side: int = 400, fine_iterations: int = 3) -> np.ndarray:
    """uint8 HxWx3 RGB + boxes -> float32 HxW {0, 1} foreground. See :class:`GrabCutMask`.

    ``work_side``: run GrabCut on the boxes' neighbourhood (their union enlarged by ``margin`` x its size per side,
    at least 8 px; ``None``: the whole photo; outside it GrabCut's rectangle makes everything background anyway) shrunk so its longer side
    is at most ``work_side`` (boxes scaled alike): small objects keep their pixels and the background model is
    local. The mask comes back to full size (bilinear, soft) and is cut with ``refine`` (``none``: at 0.5;
    ``guided``: :func:`guided_refine`; ``band``: :func:`band_refine`; ``fine``: :func:`fine_grabcut`, the
    crop again at side ``fine_side``, ``fine_iterations`` more GrabCut iterations from the working-side mask and
    colour models, so ``iterations`` is then the number at ``work_side``).
    """
    H, W = image.shape[:2]
    if work_side is None and refine == "none":
        return _grabcut(image, boxes, iterations, min_box_fraction, retries, seed)
    cx0, cy0 = max(0, min(b[0] for b in boxes)), max(0, min(b[1] for b in boxes))
    cx1, cy1 = min(W, max(b[2] for b in boxes)), min(H, max(b[3] for b in boxes))
    if work_side is not None and margin is not None and cx1 > cx0 and cy1 > cy0:
        dx, dy = max(8, round((cx1 - cx0) * margin)), max(8, round((cy1 - cy0) * margin))
        cx0, cy0, cx1, cy1 = max(0, cx0 - dx), max(0, cy0 - dy), min(W, cx1 + dx), min(H, cy1 + dy)
    else:
        cx0, cy0, cx1, cy1 = 0, 0, W, H
    crop = image[cy0:cy1, cx0:cx1]
    h, w = crop.shape[:2]
    crop_boxes = tuple((x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0) for x0, y0, x1, y1 in boxes)
    work, work_boxes = _shrink(crop, crop_boxes, work_side)
    models: list = []
    if refine == "fine":
        fine, fine_boxes = _shrink(crop, crop_boxes, fine_side)       # the same size when the crop is small
        try:
            small = _grabcut(work, work_boxes, iterations, min_box_fraction, retries, seed, models)
        except BadSample as e:      # the coarse cut collapsed (seen on COCO photos at side 200): GrabCut at the
            if not e.reason.startswith("grabcut_"):   # fine side alone, with the full iteration count
                raise
            small = _grabcut(fine, fine_boxes, max(iterations, FALLBACK_ITERATIONS), min_box_fraction, retries, seed)
        else:
            better = fine_grabcut(fine, _box_region(fine_boxes, *fine.shape[:2]), small, *models[-1],
                                  fine_iterations, min_box_fraction)
            small = small if better is None else better.astype(np.float32)
    else:
        small = _grabcut(work, work_boxes, iterations, min_box_fraction, retries, seed, models)
    soft = np.zeros((H, W), np.float32)
    soft[cy0:cy1, cx0:cx1] = small if small.shape == (h, w) else cv2.resize(small, (w, h),
                                                                            interpolation=cv2.INTER_LINEAR)
    region = _box_region(_enlarge(boxes, 0.05, H, W), H, W)
    if refine == "guided":
        fg = guided_refine(image, soft)
    elif refine == "band":
        cv2.setRNGSeed(int(seed) % (2**31))
        fg = band_refine(image, soft, region)
    else:
        fg = soft > 0.5
    return (fg & region).astype(np.float32)


def _shrink(crop: np.ndarray, boxes: tuple[Box, ...], side: int | None) -> tuple[np.ndarray, tuple[Box, ...]]:
    """The crop shrunk so its longer side is at most ``side`` (area interpolation) and its boxes scaled alike."""
    h, w = crop.shape[:2]
    scale = 1.0 if side is None else min(1.0, side / max(h, w))
    if scale == 1.0:
        return crop, boxes
    work = cv2.resize(crop, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    sy, sx = work.shape[0] / h, work.shape[1] / w
    return work, tuple((int(np.floor(x0 * sx)), int(np.floor(y0 * sy)), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy)))
                       for x0, y0, x1, y1 in boxes)


def _grabcut(image: np.ndarray, boxes: tuple[Box, ...], iterations: int, min_box_fraction: float, retries: int,
             seed: int, models: list | None = None) -> np.ndarray:
    """GrabCut with the retries of :class:`GrabCutMask`; appends the kept try's (bgd, fgd) GMMs to ``models``."""
    h, w = image.shape[:2]
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    region = _box_region(boxes, h, w)
    area = int(region.sum())
    if area == 0:
        raise BadSample("box_zero_area: every box has zero area inside the image")
    tries = [(boxes, seed), (boxes, derive_seed(seed, "grabcut-retry")), (_enlarge(boxes, 0.05, h, w), seed),
             (boxes, seed)]
    frac, error = 0.0, ""
    for k, (try_boxes, try_seed) in enumerate(tries[: 1 + retries]):
        mask = np.zeros((h, w), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(int(try_seed) % (2**31))
        try:
            if k == 3:
                mask[:], mask[region] = cv2.GC_BGD, cv2.GC_PR_BGD
                mask[_box_region(_inset(try_boxes, 0.05), h, w)] = cv2.GC_PR_FGD
                cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
            elif len(try_boxes) == 1:
                x0, y0, x1, y1 = try_boxes[0]
                cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
            else:
                mask[:] = cv2.GC_BGD
                mask[_box_region(try_boxes, h, w)] = cv2.GC_PR_FGD
                cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as e:
            error = textwrap.shorten(str(e).strip().splitlines()[-1], 120, placeholder=" ...")
            continue
        fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        frac = float(fg[region].sum()) / area
        if frac >= min_box_fraction:
            if models is not None:
                models.append((bgd, fgd))
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


def _inset(boxes: tuple[Box, ...], rate: float) -> tuple[Box, ...]:
    """Every box shrunk by ``rate`` of its size per side (at least 1 px): its core without the border ring."""
    out = []
    for x0, y0, x1, y1 in boxes:
        dx, dy = max(1, round((x1 - x0) * rate)), max(1, round((y1 - y0) * rate))
        out.append((x0 + dx, y0 + dy, max(x0 + dx, x1 - dx), max(y0 + dy, y1 - dy)))
    return tuple(out)


def list_mask_methods(pattern: str = "*") -> list[str]:
    return MASK_METHODS.names(pattern)


def create_mask_method(spec: str | MaskMethod, **kwargs: Any) -> MaskMethod:
    """``"grabcut"``, ``"threshold:0.4"``, ``"model:lraspp_mobilenet_v3_large"`` (weights=FILE) -> method."""
    return spec if isinstance(spec, MaskMethod) else MASK_METHODS.create(spec, **kwargs)
