"""Small IN-9 layouts for the eval / challenge / saliency tests, written with bgbias.core.io, plus tiny fixed models.

``colour_layout`` makes images whose class is a colour channel: a square
foreground of the class colour on a background of some class colour. With
:class:`MeanColour` (logits = per-channel image mean) the prediction is
whichever class colour covers more intensity, so every accuracy can be worked
out by hand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bgbias.core.io import write_npy, write_png
from bgbias.core.layout import class_dirname

CLASSES = ["red", "green", "blue"]


class MeanColour(nn.Module):
    """logits = mean of each RGB channel: predicts the colour with the most total intensity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def mean_colour() -> nn.Module:
    """Factory for ``module:tests._layouts:mean_colour``."""
    return MeanColour()


def solid(colour_class: int, intensity: float, size: int) -> np.ndarray:
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[:, :, colour_class] = int(round(intensity * 255))
    return img


def square_mask(size: int, side: int, x0: int | None = None, y0: int | None = None) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.float32)
    x0 = (size - side) // 2 if x0 is None else x0
    y0 = (size - side) // 2 if y0 is None else y0
    m[y0:y0 + side, x0:x0 + side] = 1.0
    return m


def paste(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[:, :, None] > 0.5, fg, bg).astype(np.uint8)


def write_layout(root: Path, classes: list[str], samples: list[dict]) -> Path:
    """samples: ``{"label", "id", "mask", "variants": {name: uint8 HxWx3}}`` -> the IN-9 folder layout."""
    root = Path(root)
    for s in samples:
        cdir = class_dirname(s["label"], classes[s["label"]], len(classes))
        for v, img in s["variants"].items():
            write_png(root / v / "val" / cdir / f"{s['id']}.png", img)
        if s.get("mask") is not None:
            write_npy(root / "fg_mask" / "val" / cdir / f"{s['id']}.npy", s["mask"].astype(np.float32))
    return root


def colour_layout(root: Path, fg_side=(4, 4, 4, 4), bg_levels=(0.5, 0.2, 0.5, 0.2), size: int = 8) -> Path:
    """Per class c and sample j: a ``fg_side[j]`` square of full colour c on a colour-c background of ``bg_levels[j]``.

    mixed_same takes the background of sample (j+1) of the same class; mixed_rand the background of
    sample j of class (c+1) mod 3 (fixed so accuracies can be computed by hand).
    """
    samples = []
    for c in range(len(CLASSES)):
        for j, (side, level) in enumerate(zip(fg_side, bg_levels)):
            m = square_mask(size, side)
            fg = solid(c, 1.0, size)
            own_bg = solid(c, level, size)
            same_bg = solid(c, bg_levels[(j + 1) % len(bg_levels)], size)
            rand_bg = solid((c + 1) % 3, level, size)
            samples.append({"label": c, "id": f"c{c}_s{j}", "mask": m, "variants": {
                "original": paste(fg, own_bg, m), "only_bg_t": own_bg, "only_fg": paste(fg, 0 * fg, m),
                "mixed_same": paste(fg, same_bg, m), "mixed_rand": paste(fg, rand_bg, m)}})
    return write_layout(root, CLASSES, samples)


def random_layout(root: Path, n_per_class: int = 6, size: int = 12, seed: int = 0) -> Path:
    """Random foreground squares (size, place, intensity) and random mixed-colour backgrounds: some fool, some don't."""
    rng = np.random.default_rng(seed)
    samples = []
    for c in range(len(CLASSES)):
        for j in range(n_per_class):
            side = int(rng.integers(3, size - 2))
            m = square_mask(size, side, int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1)))
            fg = solid(c, float(rng.uniform(0.4, 1.0)), size)
            bg = (rng.uniform(0, 1, 3) ** 2 * 255 * rng.uniform(0.2, 1.0)).astype(np.uint8)
            bg = np.broadcast_to(bg, (size, size, 3)).copy()
            bg = np.clip(bg.astype(int) + rng.integers(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            samples.append({"label": c, "id": f"r{c}_{j}", "mask": m,
                            "variants": {"original": paste(fg, bg, m), "only_bg_t": bg}})
    return write_layout(root, CLASSES, samples)
