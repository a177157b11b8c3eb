"""Background families: what goes behind a foreground (colours, dataset mean, tiles, textures, photos).

Each family is a :class:`Background` created from a spec such as
``color:red``, ``color:#ff8800``, ``mean``, ``mean_color``, ``tiled``,
``texture:stripes:8`` or ``photos:DIR``. ``render(n, size, generator)``
returns float32 ``[n, 3, H, W]`` in [0, 1] for any size, drawing every random
choice from the given ``torch.Generator`` (same generator state -> same pixels).
``only_bg_t`` is the IN-9 Only-BG-T fill (tile the largest strip outside the box).
The texture patterns themselves (stripes, board, ...) are in :mod:`bgbias.synth.textures`.
Another sample's background (Mixed-*) is a pairing, planned in ``variants``/``build``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import torch

from bgbias.core.registry import Registry
from bgbias.core.sample import BadSample, Box, Sample
from bgbias.synth.textures import TEXTURES, texture_kind, uniform

BACKGROUNDS: Registry["Background"] = Registry("background", plugins=("bgbias.synth.bank",))
"""Families; :mod:`bgbias.synth.bank` adds ``texture`` (its bare form is a mixture of every kind), ``noise``, ``gradient`` and the ``bank`` mixtures on first use."""

COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "grey": (128, 128, 128),
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "cyan": (0, 255, 255), "magenta": (255, 0, 255), "orange": (255, 128, 0), "purple": (128, 0, 128),
}


# ---------------------------------------------------------------- geometry helpers

def resize_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize so the image covers ``size`` (H, W) (shorter side first, as IN-9 did), then centre-crop.

    Works on HxW and HxWxC arrays of any dtype cv2 resizes (uint8, float32).
    Area interpolation when shrinking, bilinear when enlarging.
    """
    th, tw = int(size[0]), int(size[1])
    h, w = arr.shape[:2]
    if (h, w) == (th, tw):
        return arr
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.resize(arr, (nw, nh), interpolation=interp)
    y0, x0 = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(out[y0:y0 + th, x0:x0 + tw])


def box_mask(shape: tuple[int, int], boxes: Iterable[Box]) -> np.ndarray:
    """float32 HxW, 1 inside any of ``boxes`` (clipped to the image), 0 elsewhere."""
    m = np.zeros(tuple(shape), np.float32)
    for ys, xs in _box_slices(shape, boxes):
        m[ys, xs] = 1.0
    return m


def _strip(image: np.ndarray, boxes: Iterable[Box]) -> tuple[str, np.ndarray, int]:
    """(side, strip, phase) of :func:`tile_strip`: the largest margin around the union of ``boxes``."""
    h, w = image.shape[:2]
    x0 = max(0, min(b[0] for b in boxes)); y0 = max(0, min(b[1] for b in boxes))
    x1 = min(w, max(b[2] for b in boxes)); y1 = min(h, max(b[3] for b in boxes))
    strips = [("left", x0 * h), ("right", (w - x1) * h), ("top", y0 * w), ("bottom", (h - y1) * w)]
    side, area = max(strips, key=lambda s: s[1])  # max keeps the first of equal areas
    if area <= 0:
        raise BadSample("object box covers the whole image (no background strip to tile for Only-BG-T)")
    if side in ("left", "right"):
        return side, (image[:, :x0] if side == "left" else image[:, x1:]), x0
    return side, (image[:y0] if side == "top" else image[y1:]), y0


def tile_strip(image: np.ndarray, boxes: Iterable[Box]) -> np.ndarray:
    """The full-frame tiling behind Only-BG-T: the largest background strip outside the box(es), repeated.

    image: uint8 HxWx3. The strip is the larger of the left/right/top/bottom
    margins around the union of ``boxes`` (ties: left, right, top, bottom); it
    is repeated along its short axis, phase-aligned to the box edge.
    Raises :class:`BadSample` when the boxes leave no margin to tile from.
    """
    h, w = image.shape[:2]
    side, strip, phase = _strip(image, boxes)
    if side in ("left", "right"):
        return np.ascontiguousarray(strip[:, (np.arange(w) - phase) % strip.shape[1]])
    return np.ascontiguousarray(strip[(np.arange(h) - phase) % strip.shape[0]])


def only_bg_t(image: np.ndarray, boxes: Iterable[Box]) -> np.ndarray:
    """IN-9 Only-BG-T: the box region filled by :func:`tile_strip`; pixels outside the boxes unchanged.

    Returns a new uint8 HxWx3 array (a copy of ``image`` when there are no boxes). Only the boxes'
    pixels of the tiling are made (the same pixels as pasting the full tiling through :func:`box_mask`).
    """
    boxes = tuple(boxes)
    out = image.copy()
    if not boxes:
        return out
    side, strip, phase = _strip(image, boxes)
    for ys, xs in _box_slices(image.shape[:2], boxes):
        if side in ("left", "right"):
            out[ys, xs] = strip[ys, (np.arange(xs.start, max(xs.start, xs.stop)) - phase) % strip.shape[1]]
        else:
            out[ys, xs] = strip[(np.arange(ys.start, max(ys.start, ys.stop)) - phase) % strip.shape[0], xs]
    return out


def only_bg_b(image: np.ndarray, boxes: Iterable[Box]) -> np.ndarray:
    """IN-9 Only-BG-B: a copy of ``image`` with the box(es) black (the pixels of ``box_mask``)."""
    out = image.copy()
    for ys, xs in _box_slices(image.shape[:2], boxes):
        out[ys, xs] = 0
    return out


def _box_slices(shape: tuple[int, int], boxes: Iterable[Box]) -> list[tuple[slice, slice]]:
    """Each box clipped to the image as (rows, cols) slices (what :func:`box_mask` fills)."""
    h, w = shape
    return [(slice(max(0, y0), max(0, min(h, y1))), slice(max(0, x0), max(0, min(w, x1)))) for x0, y0, x1, y1 in boxes]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float [3, H, W] in [0, 1] -> uint8 HxWx3 (rounded to nearest)."""
    return t.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


# ---------------------------------------------------------------- base class

class Background(ABC):
    """A background family. ``render`` is batched and device-agnostic; ``for_sample`` is one uint8 image."""

    name: str = "background"
    needs_sample: bool = False
    needs_fit: bool = False

    def fit(self, samples: Iterable[Sample]) -> "Background":
        """No-op unless the family needs dataset statistics (``needs_fit``)."""
        return self

    @abstractmethod
    def render(self, n: int, size: tuple[int, int], generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> torch.Tensor:
        """float32 ``[n, 3, H, W]`` in [0, 1]; random choices come only from ``generator``."""

    def for_sample(self, sample: Sample, size: tuple[int, int] | None = None,
                   generator: torch.Generator | None = None) -> np.ndarray:
        """uint8 HxWx3 background for ``sample`` (default size: the sample's own)."""
        return to_uint8(self.render(1, tuple(size or sample.size), generator)[0])

    def describe(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"Background size must be positive (H, W), got {tuple(size)}.")
    return h, w


# ---------------------------------------------------------------- colour, mean, tiled

class SolidColor(Background):
    """One solid colour for every image."""

    def __init__(self, color: str):
        self.random = str(color).strip().lower() == "random"
        if self.random:  # one uniformly random RGB colour per image (drawn from the generator)
            self.rgb, self.name = None, "color:random"
            return
        self.rgb = parse_color(color)
        named = color.lower() in COLORS
        self.name = f"color:{color.lower()}" if named else "color:#{:02x}{:02x}{:02x}".format(*self.rgb)

    def render(self, n, size, generator=None, device="cpu"):
        h, w = _check_size(size)
        if self.random:
            return uniform(generator, n, 3, 1, 1).to(device).expand(n, 3, h, w).contiguous()
        c = torch.tensor(self.rgb, dtype=torch.float32, device=device) / 255.0
        return c.view(1, 3, 1, 1).expand(n, 3, h, w).contiguous()


def parse_color(text: str) -> tuple[int, int, int]:
    """``red`` or ``#RRGGBB`` / ``RRGGBB`` -> (r, g, b) uint8 values."""
    t = str(text).strip().lower()
    if t in COLORS:
        return COLORS[t]
    hexpart = t[1:] if t.startswith("#") else t
    if len(hexpart) == 6 and all(ch in "0123456789abcdef" for ch in hexpart):
        return tuple(int(hexpart[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    raise ValueError(f"Unknown colour {text!r}; valid: {', '.join(COLORS)}, random or #RRGGBB.")


class MeanBackground(Background):
    """Dataset mean of background pixels: per pixel (``mean``) or one colour (``mean_color``).

    ``fit`` accumulates ``sum(image * (1 - mask))`` and ``sum(1 - mask)`` at
    ``fit_size`` (default: the first sample's size); pixels that are never
    background fall back to the mean colour. ``add_sums`` lets a parallel
    build reduce per-chunk sums in a fixed order (float64, deterministic).
    """

    needs_fit = True

    def __init__(self, per_pixel: bool = True, fit_size: tuple[int, int] | None = None):
        self.per_pixel = per_pixel
        self.name = "mean" if per_pixel else "mean_color"
        self.fit_size = tuple(fit_size) if fit_size else None
        self.sum_rgb: np.ndarray | None = None
        self.sum_w: np.ndarray | None = None
        self.mean_image: np.ndarray | None = None  # float32 HxWx3 in [0, 1]

    def sums(self, samples: Iterable[Sample]) -> tuple[np.ndarray, np.ndarray] | None:
        """float64 (HxWx3 weighted pixel sums, HxW weights) over ``samples`` at ``fit_size``."""
        srgb = sw = None
        for s in samples:
            if s.mask is None:
                continue
            size = self.fit_size or s.size
            self.fit_size = tuple(size)
            img = resize_crop(s.image, size).astype(np.float64) / 255.0
            wgt = 1.0 - resize_crop(s.mask.astype(np.float32), size).astype(np.float64)
            srgb = img * wgt[..., None] if srgb is None else srgb + img * wgt[..., None]
            sw = wgt if sw is None else sw + wgt
        return None if srgb is None else (srgb, sw)

    def add_sums(self, sums: tuple[np.ndarray, np.ndarray] | None) -> "MeanBackground":
        if sums is not None:
            if self.sum_rgb is None:
                self.sum_rgb, self.sum_w = sums[0].copy(), sums[1].copy()
            else:
                self.sum_rgb += sums[0]; self.sum_w += sums[1]
            self._finish()
        return self

    def fit(self, samples):
        return self.add_sums(self.sums(samples))

    def _finish(self) -> None:
        total = self.sum_w.sum()
        color = self.sum_rgb.reshape(-1, 3).sum(0) / max(total, 1e-12)
        if self.per_pixel:
            w = self.sum_w[..., None]
            img = np.where(w > 1e-6, self.sum_rgb / np.maximum(w, 1e-12), color)
        else:
            img = np.broadcast_to(color, self.sum_rgb.shape)
        self.mean_image = np.ascontiguousarray(img, dtype=np.float32)

    def render(self, n, size, generator=None, device="cpu"):
        if self.mean_image is None:
            raise ValueError(f"Background {self.name!r} must be fitted on a dataset first (call fit(samples)).")
        h, w = _check_size(size)
        img = resize_crop(self.mean_image, (h, w))
        img = np.array(img, dtype=np.float32, order="C", copy=not img.flags.writeable)  # Ray hands read-only arrays
        t = torch.from_numpy(img).permute(2, 0, 1).to(device)
        return t.unsqueeze(0).expand(n, 3, h, w).contiguous()

    def describe(self):
        color = None if self.mean_image is None else [round(float(v), 6) for v in self.mean_image.reshape(-1, 3).mean(0)]
        return {"name": self.name, "fit_size": list(self.fit_size) if self.fit_size else None, "mean_color": color}


class TiledBackground(Background):
    """Only-BG-T from the sample's own background (needs the sample, not a generator)."""

    name = "tiled"
    needs_sample = True

    def render(self, n, size, generator=None, device="cpu"):
        raise ValueError("Background 'tiled' is made from a sample's own pixels; call for_sample(sample).")

    def for_sample(self, sample, size=None, generator=None):
        out = only_bg_t(sample.image, sample.object_boxes())
        return resize_crop(out, size) if size is not None else out


# ---------------------------------------------------------------- textures (the patterns are in textures.py)

class Texture(Background):
    """A two-colour pattern; the pattern's geometry and both colours are drawn per image.

    ``texture:NAME[:param]``: the fixed parameter (default: the texture's own); the second colour is
    the first shifted by about half the range per channel, so the pattern always has contrast.
    ``texture:NAME:*``: everything random per image: the parameter (log-uniform over the texture's
    range), line width (duty 0.2-0.8), an independent colour pair and its contrast (40-100%).
    """

    def __init__(self, kind: str, param: str | float | None = None):
        tk = texture_kind(kind)
        self.kind, self.tk, self.fn = kind, tk, tk.fn
        self.random = param == "*"
        if self.random:
            self.param, self.name = None, f"texture:{kind}:*"
            return
        try:
            value = tk.kind(tk.default if param in (None, "") else param)
        except (TypeError, ValueError):
            raise ValueError(f"Texture {kind!r} takes a {tk.kind.__name__} parameter (or *), got {param!r}.") from None
        if tk.kind is float and not 0 <= value <= 1:
            raise ValueError(f"Texture {kind!r} parameter must be a rate in [0, 1], got {value}.")
        if tk.kind is int and value < 1:
            raise ValueError(f"Texture {kind!r} parameter must be a positive integer, got {value}.")
        self.param = value
        self.name = f"texture:{kind}:{value}"

    def render(self, n, size, generator=None, device="cpu"):
        h, w = _check_size(size)
        if self.random:
            param = self.tk.draw(generator, n)
            duty = 0.2 + 0.6 * uniform(generator, n, 1, 1)
            pattern = self.fn(generator, n, h, w, param, duty)
            c0, c1 = uniform(generator, n, 3, 1, 1), uniform(generator, n, 3, 1, 1)
            c1 = c0 + (c1 - c0) * (0.4 + 0.6 * uniform(generator, n, 1, 1, 1))
        else:
            pattern = self.fn(generator, n, h, w, self.param)                       # [n, H, W]
            c0 = uniform(generator, n, 3, 1, 1)
            c1 = torch.remainder(c0 + 0.5 + (uniform(generator, n, 3, 1, 1) - 0.5) * 0.3, 1.0)
        out = c0 + pattern.unsqueeze(1) * (c1 - c0)
        return out.to(device=device, dtype=torch.float32)


# ---------------------------------------------------------------- photos

class Photos(Background):
    """Scene photos from a folder (recursive), resized (shorter side) and centre-cropped.

    Which photo: drawn from the generator, so per-sample generators give a
    deterministic photo per sample. Unreadable files are skipped at listing time.
    """

    def __init__(self, folder: str, cache: int = 64):
        from bgbias.core.io import IMAGE_EXTENSIONS

        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ValueError(f"Photo folder {folder!r} does not exist or is not a folder.")
        self.root = root
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith("."))
        if not self.files:
            raise ValueError(f"Photo folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        self.name = f"photos:{folder}"
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache

    def _photo(self, i: int, size: tuple[int, int]) -> np.ndarray:
        from bgbias.core.io import read_image

        key = (i, size)
        if key not in self._cache:
            try:
                img = read_image(self.files[i])
            except BadSample:
                img = np.zeros((*size, 3), np.uint8)  # an unreadable photo renders black; listed in describe()
            self._cache[key] = resize_crop(img, size)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return self._cache[key]

    def render(self, n, size, generator=None, device="cpu"):
        h, w = _check_size(size)
        idx = torch.randint(len(self.files), (n,), generator=generator).tolist()
        arr = np.stack([self._photo(i, (h, w)) for i in idx])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device=device, dtype=torch.float32) / 255.0

    def describe(self):
        return {"name": self.name, "n_photos": len(self.files)}


# ---------------------------------------------------------------- registry

@BACKGROUNDS.register("color", tags=["color"], help="solid colour: color:red, color:#RRGGBB, color:random (bare color)")
def _color(color: str = "random") -> Background:
    return SolidColor(color)


@BACKGROUNDS.register("mean", tags=["mean"], help="per-pixel dataset mean of background pixels (fitted)")
def _mean(fit_size: tuple[int, int] | None = None) -> Background:
    return MeanBackground(True, fit_size)


@BACKGROUNDS.register("mean_color", tags=["mean"], help="mean colour of all background pixels (fitted)")
def _mean_color(fit_size: tuple[int, int] | None = None) -> Background:
    return MeanBackground(False, fit_size)


@BACKGROUNDS.register("tiled", tags=["in9"], help="Only-BG-T: the sample's own background tiled over its box")
def _tiled() -> Background:
    return TiledBackground()


@BACKGROUNDS.register("photos", tags=["photos"], path_arg=True, help="photos:DIR, a folder of scene photos")
def _photos(folder: str | None = None) -> Background:
    if not folder:
        raise ValueError("Background 'photos' needs a folder: photos:DIR.")
    return Photos(folder)


def create_background(spec: str, **kwargs) -> Background:
    """``color:red``, ``color:#ff8800``, ``mean``, ``mean_color``, ``tiled``, ``texture:stripes:8``, ``photos:DIR``."""
    return BACKGROUNDS.create(spec, **kwargs)


def list_backgrounds(pattern: str = "*") -> list[str]:
    """Family names, textures expanded (``texture:stripes``), matching a wildcard pattern."""
    import fnmatch

    from bgbias.core.registry import natural_key

    names = [n for n in BACKGROUNDS.names() if n != "texture"] + [f"texture:{t}" for t in TEXTURES.names()]
    return sorted(fnmatch.filter(names, pattern), key=natural_key)
