"""The synthetic multi-object set ``digits-det``: several scikit-learn digits per canvas, with boxes and masks.

Ships with the install (scikit-learn carries the 1,797 8x8 digits), so the detection demo,
benchmark and tests need no download. Each canvas has a smooth, earthy, low-saturation "scene"
background (low-frequency luminance noise, a brownish tint, pixel noise) and 1..``max_objects`` light digits placed
without overlap; a digit's pixels are exactly its mask (hard edges), so replacing the
background never leaves the old one in the picture. Everything about canvas ``i`` comes from
``(seed, i)``: the same spec gives the same bytes on any machine.
"""
from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from bgbias.core.sample import BadSample
from bgbias.core.seeding import numpy_rng
from bgbias.detect.data import DET_SOURCES, DetSample, DetSource


class DigitsDetSource(DetSource):
    """``n`` canvases of ``size`` x ``size``; split ``train`` / ``val`` by ``val_fraction`` (last images are val).

    classes: comma list of digits (default all ten); category id = digit + 1, name = the digit.
    """

    def __init__(self, n: int = 400, size: int = 64, classes: str | None = None, val_fraction: float = 0.25,
                 max_objects: int = 4, digit_size: tuple[int, int] | None = None, seed: int = 0):
        super().__init__()
        from sklearn.datasets import load_digits

        n, size = int(n), int(size)
        if n < 1 or not 32 <= size <= 1024:
            raise ValueError(f"digits-det needs n >= 1 and 32 <= size <= 1024, got n={n}, size={size}.")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        lo, hi = (int(v) for v in digit_size) if digit_size else (round(size * 3 / 16), round(size * 5 / 16))
        if not 8 <= lo <= hi <= size // 2:
            raise ValueError(f"digit_size must satisfy 8 <= min <= max <= size/2, got {digit_size} for size {size}.")
        digits = [int(c) for c in str(classes).split(",")] if classes not in (None, "") else list(range(10))
        if not digits or any(not 0 <= d <= 9 for d in digits) or len(set(digits)) != len(digits):
            raise ValueError(f"classes must be distinct digits 0..9 (e.g. 0,1,2), got {classes!r}.")
        d = load_digits()
        self._bank = {k: d.images[d.target == k].astype(np.float32) / 16.0 for k in digits}
        self.digits, self.size, self.n, self.max_objects, self.digit_size = digits, size, n, int(max_objects), (lo, hi)
        self.seed = int(seed)
        self.categories = [{"id": k + 1, "name": str(k)} for k in sorted(digits)]
        n_val = int(round(n * float(val_fraction)))
        self._ids = [f"digitsdet_{i:05d}" for i in range(n)]
        self._splits = ["train"] * (n - n_val) + ["val"] * n_val
        self.val_fraction = float(val_fraction)
        self.spec = f"digits-det:{n}:{size}"

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Earthy, low-saturation scenes: luminance varies a lot, hue little (so saturated colours are new)."""
        s = self.size
        tint = np.array([1.0, 0.92, 0.78]) + rng.uniform(-0.06, 0.06, 3)
        lum = rng.uniform(0.15, 0.45) + cv2.resize(rng.normal(0.0, 0.12, (4, 4)).astype(np.float32), (s, s),
                                                     interpolation=cv2.INTER_CUBIC)
        fine = rng.normal(0.0, 0.03, (s, s, 1)).astype(np.float32)
        return np.clip(lum[..., None] * tint + fine, 0.0, 1.0)

    def load(self, i: int) -> DetSample:
        if not 0 <= i < self.n:
            raise BadSample(f"index {i} is outside 0..{self.n - 1}")
        rng = numpy_rng(self.seed, "digits-det", self.size, i)
        s = self.size
        canvas = self._background(rng)
        fg = np.zeros((s, s), bool)
        anns, taken = [], []
        for _ in range(int(rng.integers(1, self.max_objects + 1))):
            k = self.digits[int(rng.integers(len(self.digits)))]
            glyph = self._bank[k][int(rng.integers(len(self._bank[k])))]
            side = int(rng.integers(self.digit_size[0], self.digit_size[1] + 1))
            alpha = cv2.resize(glyph, (side, side), interpolation=cv2.INTER_LINEAR)
            hard = alpha > 0.35
            ys, xs = np.nonzero(hard)
            if ys.size == 0:
                continue
            hard = hard[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            alpha = alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            bh, bw = hard.shape
            for _try in range(30):
                x0, y0 = int(rng.integers(0, s - bw + 1)), int(rng.integers(0, s - bh + 1))
                if all(x0 + bw + 2 <= a or a2 + 2 <= x0 or y0 + bh + 2 <= b or b2 + 2 <= y0 for a, b, a2, b2 in taken):
                    break
            else:
                continue
            taken.append((x0, y0, x0 + bw, y0 + bh))
            colour = np.clip(rng.uniform(0.8, 1.0) + rng.uniform(-0.08, 0.08, 3), 0.0, 1.0)
            region = canvas[y0:y0 + bh, x0:x0 + bw]
            shade = (0.65 + 0.35 * np.clip(alpha, 0.0, 1.0))[..., None] * colour
            region[hard] = shade[hard]
            m = np.zeros((s, s), bool)
            m[y0:y0 + bh, x0:x0 + bw] = hard
            fg |= m
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"id": i * 16 + len(anns) + 1, "image_id": i + 1, "category_id": k + 1,
                         "bbox": [float(x0), float(y0), float(bw), float(bh)], "area": float(m.sum()), "iscrowd": 0,
                         "segmentation": {"size": [s, s], "counts": rle["counts"].decode()}})
        image = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
        return DetSample(image, fg.astype(np.float32), np.zeros((s, s), bool), self._ids[i], i + 1, tuple(anns),
                         self._splits[i])

    def describe(self) -> dict:
        return {**super().describe(), "size": self.size, "digits": self.digits, "val_fraction": self.val_fraction,
                "max_objects": self.max_objects, "digit_size": list(self.digit_size), "seed": self.seed}


@DET_SOURCES.register("digits-det", help="digits-det[:N[:SIZE]], N canvases of several sklearn digits (no download)")
def _digits_det(n: str | int = 400, size: str | int = 64, classes: str | None = None,
                val_fraction: float | None = None, split: str | None = None, seed: int | None = None) -> DetSource:
    if split:
        raise ValueError(f"digits-det makes its own train and val splits (val_fraction); got split={split!r}.")
    return DigitsDetSource(int(n), int(size), classes, 0.25 if val_fraction is None else val_fraction,
                           seed=seed or 0)
