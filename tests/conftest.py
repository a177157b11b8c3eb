"""Shared fixtures: small generated images with masks, a tiny digits source, image folders with bad files.

Everything is generated (or scikit-learn digits); nothing reads /work/shared.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bgbias.core.sample import Sample
from bgbias.sources.base import Source

# Tests run on busy shared cores: one intra-op thread keeps tiny tensor ops in microseconds.
torch.set_num_threads(1)


def make_image_and_mask(h: int = 32, w: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 with a textured background (no pure-black pixels) and a float32 HxW ellipse mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(40, 200, size=3)
    img = (base + 30 * np.sin(xx[..., None] / (2 + seed % 3) + yy[..., None] / 5)).clip(10, 250)
    cy, cx = h / 2 + rng.integers(-2, 3), w / 2 + rng.integers(-3, 4)
    mask = (((yy - cy) / (h / 4)) ** 2 + ((xx - cx) / (w / 5)) ** 2 <= 1).astype(np.float32)
    fg = np.array([250, 40 + 20 * (seed % 5), 30], float)
    img = np.where(mask[..., None] > 0, fg, img).astype(np.uint8)
    return img, mask


@pytest.fixture
def sample() -> Sample:
    img, mask = make_image_and_mask(32, 40, 1)
    return Sample(img, mask, 0, "s_00001")


class ArraySource(Source):
    """An in-memory source of generated samples (``classes`` may hold any names, even hostile ones)."""

    def __init__(self, n: int = 12, classes=("a", "b", "c"), h: int = 32, w: int = 40, bad: dict | None = None):
        super().__init__()
        self.spec, self.classes = f"array:{n}", list(classes)
        self._ids = [f"gen_{i:03d}" for i in range(n)]
        self._labels = [i % len(self.classes) for i in range(n)]
        self.h, self.w, self.bad = h, w, dict(bad or {})

    def load(self, i):
        img, mask = make_image_and_mask(self.h, self.w, i)
        if i in self.bad:
            mask = np.full_like(mask, self.bad[i])
        return Sample(img, mask, self._labels[i], self._ids[i])


@pytest.fixture
def array_source() -> ArraySource:
    return ArraySource()


@pytest.fixture(scope="session")
def digits_source():
    """60 scikit-learn digits (6 per class), 32x32."""
    from bgbias.sources.base import SubsetSource, create_source

    base = create_source("digits")
    labels = base.labels()
    idx = [i for c in range(10) for i in [k for k, y in enumerate(labels) if y == c][:6]]
    return SubsetSource(base, sorted(idx))


def _save(img: np.ndarray, path: Path, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img)
    if mode:
        im = im.convert(mode)
    im.save(path)


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, Path]:
    """``images/<class>/*.png`` + ``masks/<class>/*.png`` (0/255): 3 classes x 4 good images."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    for c, name in enumerate(("cat", "dog", "bird")):
        for k in range(4):
            img, m = make_image_and_mask(36, 44, 10 * c + k)
            _save(img, images / name / f"img {k}.png")
            _save((m * 255).astype(np.uint8), masks / name / f"img {k}.png")
    return images, masks


@pytest.fixture
def bad_folder(image_folder) -> tuple[Path, Path]:
    """``image_folder`` plus every kind of bad input, one file each (names say what they are)."""
    images, masks = image_folder
    img, m = make_image_and_mask(36, 44, 99)
    (images / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (images / "cat" / "notes.txt").write_text("not an image")
    _save(img, images / "dog" / "wrong_size.png")
    _save((make_image_and_mask(20, 20, 1)[1] * 255).astype(np.uint8), masks / "dog" / "wrong_size.png")
    _save(img, images / "dog" / "empty_mask.png")
    _save(np.zeros(m.shape, np.uint8), masks / "dog" / "empty_mask.png")
    _save(img, images / "bird" / "full_mask.png")
    _save(np.full(m.shape, 255, np.uint8), masks / "bird" / "full_mask.png")
    _save(img, images / "bird" / "no_mask.png")
    for mode in ("L", "RGBA", "P"):
        _save(img, images / "cat" / f"mode_{mode}.png", mode)
        _save((m * 255).astype(np.uint8), masks / "cat" / f"mode_{mode}.png")
    Image.fromarray((img[..., 0].astype(np.uint16) * 257)).save(images / "cat" / "mode_16bit.png")
    np.save(masks / "cat" / "mode_16bit.npy", m)
    return images, masks
