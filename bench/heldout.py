"""The held-out protocol of ``bench/generalize.py``: backgrounds no training recipe draws from, and the naive baseline.

* held-out backgrounds: crops of natural scene photos (in no bank) and three procedural patterns that are not
  bgbias families (Voronoi cells, random discs, random thick line segments), written only here;
* paper 002's six textures at their fixed parameters (bgbias families: *seen* by bank-trained recipes);
* ``naive``: issue 15's ~40-line random-background augmentation (uniform noise, random-angle stripes, random
  grey level, smooth noise), registered as a recipe so it trains through the same loop.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from bgbias.core.compose import compose
from bgbias.core.seeding import torch_generator
from bgbias.synth.backgrounds import create_background
from bgbias.train.config import RECIPES
from bgbias.train.data import TrainData
from bgbias.train.recipes import Recipe

PAPER_SIX = [("Stripes", "texture:stripes"), ("Board", "texture:board"), ("Border", "texture:border"),
             ("Circles", "texture:circles"), ("Clock", "texture:clock"), ("Random", "texture:noise")]
HELD_OUT = ["Photos", "Voronoi", "Discs", "Lines"]


# ------------------------------------------------------------------ held-out backgrounds (not in any bank)
def _rand(g, *shape):
    return torch.rand(shape, generator=g)


def voronoi(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Voronoi cells (8-40 seeds), each cell one random colour."""
    out = torch.empty(n, 3, size, size)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(n):
        k = int(8 + _rand(g, 1) * 32)
        pts = _rand(g, k, 2) * size
        d = (ys[None] - pts[:, 0, None, None]) ** 2 + (xs[None] - pts[:, 1, None, None]) ** 2
        out[i] = _rand(g, k, 3)[d.argmin(0)].permute(2, 0, 1)
    return out


def discs(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """A random base colour with 3-12 overlapping discs of random radius and colour."""
    out = _rand(g, n, 3, 1, 1).expand(n, 3, size, size).clone()
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(n):
        for _ in range(int(3 + _rand(g, 1) * 10)):
            cy, cx, r = (_rand(g, 3) * torch.tensor([size, size, size / 3]) + torch.tensor([0, 0, 2.0])).tolist()
            inside = (ys - cy) ** 2 + (xs - cx) ** 2 < r * r
            out[i][:, inside] = _rand(g, 3, 1)
    return out


def lines(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """A random base colour crossed by 2-8 thick random line segments of random colours."""
    out = _rand(g, n, 3, 1, 1).expand(n, 3, size, size).clone()
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(n):
        for _ in range(int(2 + _rand(g, 1) * 7)):
            p, q = _rand(g, 2) * size, _rand(g, 2) * size
            d = q - p
            t = (((ys - p[0]) * d[0] + (xs - p[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-6)).clamp(0, 1)
            dist = ((ys - p[0] - t * d[0]) ** 2 + (xs - p[1] - t * d[1]) ** 2).sqrt()
            out[i][:, dist < 1 + float(_rand(g, 1)) * 2.5] = _rand(g, 3, 1)
    return out


def photo_crops(folder: Path, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Random windows (5-50% of the shorter side) of the scene photos, resized to ``size``."""
    import cv2

    from bgbias.core.io import read_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"No scene photos in {folder}.")
    photos = [read_image(p) for p in files]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = photos[int(_rand(g, 1) * len(photos))]
        h, w = img.shape[:2]
        s = max(size, int(min(h, w) * (0.05 + 0.45 * float(_rand(g, 1)))))
        y0, x0 = int(_rand(g, 1) * (h - s + 1)), int(_rand(g, 1) * (w - s + 1))
        out[i] = cv2.resize(img[y0:y0 + s, x0:x0 + s], (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0


# ------------------------------------------------------------------ the naive augmentation (issue 15's baseline)
class NaiveAugment:
    """Uniform noise, random-angle stripes, random grey level or smooth noise behind the digit (p = 0.8)."""

    seen = ["naive"]

    def __call__(self, x, m, y, g, model):
        n, _, h, w = x.shape
        kind = torch.randint(4, (n,), generator=g)
        noise = torch.rand(n, 3, h, w, generator=g)
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        ang = torch.rand(n, 1, 1, generator=g) * math.pi
        period = 3 + torch.rand(n, 1, 1, generator=g) * 9
        t = xs * torch.cos(ang) + ys * torch.sin(ang)
        stripes = (torch.remainder(t, period) < period / 2).float().unsqueeze(1)
        c0, c1 = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
        stripes = c0 + stripes * (c1 - c0)
        grey = torch.rand(n, 1, 1, 1, generator=g).expand(n, 3, h, w)
        coarse = torch.rand(n, 3, 4, 4, generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        bgs = torch.stack([noise, stripes, grey, smooth], 1)            # [n, 4, 3, H, W]
        bg = bgs[torch.arange(n), kind]
        keep = (torch.rand(n, generator=g) < 0.2).view(n, 1, 1, 1)
        return torch.where(keep, x, compose(x, bg, m))


if "naive" not in RECIPES:
    RECIPES.register("naive", help="bench/generalize.py's naive random-background augmentation")(
        lambda: Recipe(augment=lambda phase, cfg, data, model, ctx: NaiveAugment(), seen=lambda cfg: ["naive"]))


# ------------------------------------------------------------------ the test sets
def test_sets(d: TrainData, photos: Path) -> dict[str, torch.Tensor]:
    x = d.images.float() / 255.0
    m = d.masks.float().unsqueeze(1) / 255.0
    n, size = len(x), x.shape[-1]
    g = lambda name: torch_generator(0, "generalize", name)  # noqa: E731
    bgs = {"Photos": photo_crops(photos, n, size, g("photos")), "Voronoi": voronoi(n, size, g("voronoi")),
           "Discs": discs(n, size, g("discs")), "Lines": lines(n, size, g("lines"))}
    for name, spec in PAPER_SIX:
        bgs[name] = create_background(spec).render(n, (size, size), torch_generator(0, "paper002", spec))
    return {"Clean": x, **{k: compose(x, b, m) for k, b in bgs.items()}}
