"""The unit of data everywhere in bgbias: a ``Sample`` (image, foreground mask, label, id, boxes).

Readers convert whatever they read (grayscale, RGBA, palette, 16-bit, bool or
0/255 masks) to this one form at the edge, so later stages never branch on
formats. A sample that cannot be made raises :class:`BadSample` with a
one-sentence reason; long runs catch it, count it and record it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` in pixels, 0-based, x1/y1 exclusive."""


_RULE_PREFIX = re.compile(r"^([a-z][a-z0-9_]*): (.+)$", re.S)


GENERIC_RULE = "bad_sample"     # a reader's reason without a rule of its own


@dataclass(frozen=True)
class Drop:
    """Why one sample was dropped: a short ``rule`` to count by, a one-sentence ``detail`` with the real
    values in it, and those ``values`` (file, fraction, size, ...) as data, so summaries never parse text."""

    rule: str
    detail: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """``rule: detail``, the text recorded in manifests (just the detail for the generic rule)."""
        return self.detail if self.rule == GENERIC_RULE else f"{self.rule}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "reason": self.reason, "values": dict(self.values)}

    @classmethod
    def from_reason(cls, reason: str, rule: str | None = None, values: dict | None = None) -> "Drop":
        """From a reason text; a leading ``rule: `` (as annotation readers write) becomes the rule."""
        m = _RULE_PREFIX.match(reason)
        if rule is None and m:
            rule, reason = m.group(1), m.group(2)
        return cls(rule or GENERIC_RULE, reason, dict(values or {}))


class BadSample(Exception):
    """A sample that must be skipped; ``.drop`` is the structured reason, ``str(exc)`` its text."""

    def __init__(self, reason: "str | Drop", sample_id: str | None = None, *, rule: str | None = None,
                 values: dict[str, Any] | None = None):
        drop = reason if isinstance(reason, Drop) else Drop.from_reason(str(reason), rule, values)
        super().__init__(drop.reason)
        self.drop = drop
        self.reason = drop.reason
        self.sample_id = sample_id

    def for_id(self, sample_id: str) -> "BadSample":
        """The same reason, attributed to ``sample_id`` (readers re-raise with their id)."""
        return BadSample(self.drop, sample_id)


@dataclass(frozen=True)
class Sample:
    """One labelled image with its foreground.

    image: uint8 HxWx3 RGB.
    mask: float32 HxW in [0, 1], 1 = foreground (soft values blend); ``None``
        only between a source and its mask method.
    label: class index into the source's ``classes``.
    id: stable, unique, filesystem-safe identifier (used for file names and seeding).
    boxes: object boxes from annotations; empty means "use the mask's bounding box".
    """

    image: np.ndarray
    mask: np.ndarray | None
    label: int
    id: str
    boxes: tuple[Box, ...] = field(default=())

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def with_(self, **changes) -> "Sample":
        return replace(self, **changes)

    def object_boxes(self) -> tuple[Box, ...]:
        """The annotation boxes, else the tight box of the mask (> 0.5), else empty."""
        if self.boxes:
            return self.boxes
        if self.mask is None:
            return ()
        b = mask_box(self.mask)
        return (b,) if b is not None else ()


def mask_box(mask: np.ndarray, thresh: float = 0.5) -> Box | None:
    """Tight box of ``mask > thresh`` or ``None`` when empty (row/column reductions: no index arrays)."""
    on = np.asarray(mask) > thresh
    if on.ndim != 2:
        ys, xs = np.nonzero(on)
        return None if ys.size == 0 else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Any HxW / HxWx1 / HxWx3 / HxWx4 array (uint8, uint16, bool, float in [0,1]) -> uint8 HxWx3.

    Alpha is dropped (composited on black would invent pixels; the mask carries
    transparency separately if a reader wants it).
    """
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
        a = a.astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.rint(np.nan_to_num(a) * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise BadSample(f"image has unsupported shape {tuple(np.shape(arr))}")
    return np.ascontiguousarray(a)


def to_mask(arr: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Any 2-D mask (bool, 0/1, 0/255, uint16, float) -> float32 HxW in [0, 1].

    Integer masks with a maximum above 1 are scaled by their dtype's range
    (255 for uint8, 65535 for uint16) so 0/255 PNGs and 0/1 .npy files agree.
    Raises :class:`BadSample` when the size differs from ``shape`` (H, W).
    """
    m = np.asarray(arr)
    if m.ndim == 3 and m.shape[2] in (1, 3, 4):
        m = m[:, :, 0]
    if m.ndim != 2:
        raise BadSample(f"mask has unsupported shape {tuple(m.shape)}")
    if m.dtype == bool:
        out = m.astype(np.float32)
    elif np.issubdtype(m.dtype, np.integer):
        top = float(m.max()) if m.size else 0.0
        scale = 1.0 if top <= 1 else (65535.0 if m.dtype == np.uint16 and top > 255 else 255.0)
        out = m.astype(np.float32) / scale
    else:
        out = np.nan_to_num(m.astype(np.float32))
    out = np.clip(out, 0.0, 1.0)
    if shape is not None and out.shape != tuple(shape):
        raise BadSample(f"mask size {out.shape[1]}x{out.shape[0]} differs from image size {shape[1]}x{shape[0]}")
    return out


def check_mask_usable(mask: np.ndarray, min_fraction: float = 1e-4, max_fraction: float = 0.9999) -> None:
    """Raise :class:`BadSample` for an empty or all-foreground mask (no variant is meaningful)."""
    frac = float((mask > 0.5).mean()) if mask.size else 0.0
    size = f"{mask.shape[1]}x{mask.shape[0]}" if mask.ndim == 2 else str(mask.shape)
    if frac < min_fraction:
        raise BadSample(f"mask is empty (no foreground pixels; {100 * frac:.3g}% of {size})", rule="mask_empty",
                        values={"fraction": round(frac, 6), "size": size})
    if frac > max_fraction:
        raise BadSample(f"mask covers the whole image (no background pixels; {100 * frac:.4g}% of {size})",
                        rule="mask_full", values={"fraction": round(frac, 6), "size": size})
