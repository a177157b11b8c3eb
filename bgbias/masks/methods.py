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

    def __init__(self, iterations: int = 5, min_box_fraction: float = 0.1, retries: int = 2, seed: int = 0):
        if int(iterations) < 1 or not 0.0 <= float(min_box_fraction) < 1.0 or not 0 <= int(retries) <= 2:
            raise ValueError(f"GrabCut needs iterations >= 1, 0 <= min_box_fraction < 1 and retries in 0..2; "
                             f"got {iterations}, {min_box_fraction}, {retries}.")
        self.iterations, self.min_box_fraction = int(iterations), float(min_box_fraction)
        self.retries, self.seed = int(retries), int(seed)

    def params(self) -> dict:
        return {"iterations": self.iterations, "min_box_fraction": self.min_box_fraction,
                "retries": self.retries, "seed": self.seed, "opencv": cv2.__version__}

    def __call__(self, sample: Sample) -> np.ndarray:
        if not sample.boxes:
            raise BadSample("no_box: GrabCut needs a box and this image has none (give --boxes)")
        return grabcut_from_boxes(sample.image, sample.boxes, self.iterations, self.min_box_fraction,
                                  self.retries, self.seed)


def grabcut_from_boxes(image: np.ndarray, boxes: tuple[Box, ...], iterations: int = 5,
                       min_box_fraction: float = 0.1, retries: int = 2, seed: int = 0) -> np.ndarray:
    """uint8 HxWx3 RGB + boxes -> float32 HxW {0, 1} foreground. See :class:`GrabCutMask`."""
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
