"""Foreground masks for sources that have none: mask methods, IN-9 box rules, the mask cache, ``with_masks``.

Methods (registry ``MASK_METHODS``): ``given`` (the source's own mask), ``threshold[:VALUE]``
(intensity, Otsu by default), ``grabcut`` (OpenCV GrabCut from the annotation boxes, as
ImageNet-9 made its masks) and ``model:<arch>`` (a torchvision segmentation network with a
local weights file; never downloads unless asked; in :mod:`bgbias.masks_model`, loaded by the
registry on first use).
:func:`with_masks` wraps any source so ``load(i)`` returns a sample with a mask; masks are
cached on disk per (source spec, item, image content, boxes, method, parameters).
Drop reasons are ``"<rule>: <detail>"`` so :func:`~bgbias.masks_run.quality_summary` can count
them per rule. Running a source's masks (``bgbias masks``: :func:`~bgbias.masks_run.run_masks`,
:func:`~bgbias.masks_run.write_masks`) is in :mod:`bgbias.masks_run`, re-exported here. The CLI
glue (``add_mask_arguments``, ``source_from_args``) is in :mod:`bgbias.cli._mask_options`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .io import atomic_write_bytes, encode_png
from .masks_run import format_summary, quality_summary, run_masks, write_masks
from .registry import Registry
from .sample import BadSample, Box, Sample, check_mask_usable
from .seeding import derive_seed
from .sources import Source

__all__ = ["MASK_METHODS", "CACHE_VERSION", "BOX_MODES", "MaskMethod", "GivenMask", "ThresholdMask", "GrabCutMask",
           "grabcut_from_boxes", "list_mask_methods", "create_mask_method", "BoxRules", "IN9_RULES",
           "default_cache_dir", "MaskCache", "MaskedSource", "with_masks",
           # run by masks_run, importable from here as before
           "quality_summary", "format_summary", "run_masks", "write_masks"]

MASK_METHODS: Registry = Registry("mask method", plugins=("bgbias.masks_model",))
CACHE_VERSION = "bgbias-mask-cache/1"
BOX_MODES = ("one", "union")


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


# ---------------------------------------------------------------- IN-9 selection rules

@dataclass(frozen=True)
class BoxRules:
    """IN-9's image selection, applied before any mask is computed (so GrabCut runs only on kept images).

    box_mode 'one': exactly one box, else drop (rule ``box_count``); 'union': use every box.
    crop_rules: drop boxes covering > ``max_crop_cover`` of the centre crop (``box_crop_cover``)
    or with < ``min_in_crop`` of their area inside it (``box_in_crop``). The crop is ImageNet's
    evaluation crop: resize the short side to ``resize``, take the centre ``crop`` square.
    """

    box_mode: str = "union"
    crop_rules: bool = False
    max_crop_cover: float = 0.9
    min_in_crop: float = 0.5
    resize: int = 256
    crop: int = 224

    def __post_init__(self) -> None:
        if self.box_mode not in BOX_MODES:
            raise ValueError(f"Unknown box mode {self.box_mode!r}; valid: {', '.join(BOX_MODES)}.")

    def apply(self, sample: Sample) -> Sample:
        """Return the sample unchanged or raise ``BadSample('<rule>: ...')``."""
        boxes = sample.boxes
        if self.box_mode == "one" and len(boxes) != 1:
            raise BadSample(f"box_count: {len(boxes)} boxes (the IN-9 recipe keeps images with exactly one)")
        if self.crop_rules and boxes:
            h, w = sample.size
            side = min(h, w) * self.crop / self.resize
            cx0, cy0 = (w - side) / 2, (h - side) / 2
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
            inter = max(0.0, min(x1, cx0 + side) - max(x0, cx0)) * max(0.0, min(y1, cy0 + side) - max(y0, cy0))
            if inter / (side * side) > self.max_crop_cover:
                raise BadSample(f"box_crop_cover: box covers {inter / side ** 2:.0%} of the centre crop "
                                f"(> {self.max_crop_cover:.0%})")
            if inter / max(1, (x1 - x0) * (y1 - y0)) < self.min_in_crop:
                raise BadSample(f"box_in_crop: {inter / ((x1 - x0) * (y1 - y0)):.0%} of the box is inside the "
                                f"centre crop (< {self.min_in_crop:.0%})")
        return sample


IN9_RULES = BoxRules(box_mode="one", crop_rules=True)


# ---------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    """``$BGBIAS_CACHE/masks`` or ``~/.cache/bgbias/masks``."""
    root = os.environ.get("BGBIAS_CACHE")
    return Path(root) / "masks" if root else Path.home() / ".cache" / "bgbias" / "masks"


class MaskCache:
    """Masks on disk, one file per key; failures are cached too (as the drop reason) so they are not retried."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.hits = self.misses = 0

    @staticmethod
    def key(spec: str, sample: Sample, method: MaskMethod) -> str:
        h = hashlib.blake2b(digest_size=20)
        head = {"v": CACHE_VERSION, "spec": spec, "id": sample.id, "method": method.name, "params": method.params(),
                "shape": list(sample.image.shape), "boxes": [list(b) for b in sample.boxes]}
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        h.update(np.ascontiguousarray(sample.image).data)
        return h.hexdigest()

    def _path(self, key: str, ext: str) -> Path:
        return self.root / key[:2] / f"{key}{ext}"

    def get(self, key: str) -> np.ndarray | BadSample | None:
        png, fail = self._path(key, ".png"), self._path(key, ".json")
        if png.is_file():
            arr = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
            if arr is not None:
                self.hits += 1
                return arr.astype(np.float32) / 255.0
        if fail.is_file():
            try:
                reason = json.loads(fail.read_text())["reason"]
                self.hits += 1
                return BadSample(reason)
            except (ValueError, KeyError, OSError):
                pass
        self.misses += 1
        return None

    def put(self, key: str, result: np.ndarray | BadSample) -> None:
        if isinstance(result, BadSample):
            atomic_write_bytes(self._path(key, ".json"), json.dumps({"reason": result.reason}).encode())
        else:
            atomic_write_bytes(self._path(key, ".png"), encode_png(np.rint(result * 255).astype(np.uint8)))


# ---------------------------------------------------------------- the wrapper

class MaskedSource(Source):
    """A source whose samples get masks from ``method`` (after box lookup and the box rules).

    ``fill_only``: keep masks the base source already has (e.g. VOC segmentation PNGs) and
    compute the rest. Same contract as ``bgbias.sources.Source``.
    """

    def __init__(self, base: Any, method: MaskMethod, rules: BoxRules = BoxRules(),
                 boxes: Any = None, cache: MaskCache | None = None,
                 fill_only: bool = False):
        super().__init__()
        self.base, self.method, self.rules, self.box_table = base, method, rules, boxes
        self.cache, self.fill_only = cache, fill_only
        self.spec, self.classes = base.spec, base.classes
        self.scan_dropped = list(getattr(base, "scan_dropped", []))

    def __len__(self) -> int:
        return len(self.base)

    def ids(self) -> list[str]:
        return self.base.ids()

    def labels(self) -> list[int]:
        return self.base.labels()

    def mask_method(self, i: int) -> str:
        """Which method makes item ``i``'s mask (``given`` where ``fill_only`` and the source has one)."""
        has = getattr(self.base, "has_mask", None)
        return "given" if self.fill_only and has is not None and has(i) else self.method.name

    def load(self, i: int) -> Sample:
        sample = self.base.load(i)
        if self.box_table is not None:
            sample = sample.with_(boxes=self.box_table.lookup(sample))
        sample = self.rules.apply(sample)
        if self.fill_only and sample.mask is not None:
            return sample
        result = self.cache.get(key := MaskCache.key(self.spec, sample, self.method)) if self.cache else None
        if result is None:
            try:
                result = self.method(sample)
                check_mask_usable(result)
            except BadSample as e:
                result = BadSample(_rule_reason(e.reason, self.method.name))
            if self.cache:
                self.cache.put(key, result)
        if isinstance(result, BadSample):
            raise result
        return sample.with_(mask=result)

    def describe(self) -> dict:
        return {**self.base.describe(), "masks": {
            "method": self.method.name, "params": self.method.params(), "fill_only": self.fill_only,
            "rules": asdict(self.rules), "boxes_file": self.box_table is not None,
            "cache": str(self.cache.root) if self.cache else None}}


def _rule_reason(reason: str, method: str) -> str:
    """Give every mask-stage drop a rule name: ``mask_empty`` / ``mask_full`` / the method's own rule."""
    if ":" in reason.split(" ")[0]:
        return reason
    rule = "mask_empty" if "empty" in reason else "mask_full" if "whole image" in reason else method
    return f"{rule}: {method} gave a {reason}" if rule != method else f"{method}: {reason}"


def with_masks(source: Any, method: str | MaskMethod = "grabcut", *, rules: BoxRules | None = None,
               box_mode: str | None = None, crop_rules: bool | None = None,
               boxes: str | os.PathLike | dict | None = None, cache: Any = True, fill_only: bool = False,
               **params: Any) -> MaskedSource:
    """Wrap ``source`` so every sample has a mask from ``method`` (``params`` go to the method).

    ``boxes``: a JSON file ``{id: [[x0, y0, x1, y1], ...]}`` (x1/y1 exclusive), a folder of
    VOC XML files, or such a dict. ``cache``: True (default folder), a folder, or False/None.
    """
    rules = rules or BoxRules()
    if box_mode is not None or crop_rules is not None:
        rules = BoxRules(box_mode or rules.box_mode, rules.crop_rules if crop_rules is None else crop_rules)
    if boxes is not None:
        from .annotations import BoxTable, load_boxes
        boxes = BoxTable(boxes, "the given boxes") if isinstance(boxes, dict) else load_boxes(boxes)
    if cache is True or isinstance(cache, (str, os.PathLike)):
        cache = MaskCache(None if cache is True else cache)
    return MaskedSource(source, create_mask_method(method, **params), rules, boxes, cache or None, fill_only)
