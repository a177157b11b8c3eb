"""Texture patterns: the two-colour geometry behind ``texture:NAME[:param]`` backgrounds.

A pattern is ``fn(gen, n, h, w, param) -> float32 [n, H, W]`` in [0, 1] (0 = first colour,
1 = second); :func:`register_texture` adds one. Kept apart from :mod:`bgbias.synth.backgrounds`
(which colours a pattern in ``Texture``) so a new texture is one small function here.
Every random choice comes from ``gen`` through :func:`uniform` (same generator state -> same pattern).
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def uniform(gen: torch.Generator | None, *shape: int) -> torch.Tensor:
    """float32 U[0, 1) of ``shape`` from ``gen``: the one source of randomness for textures."""
    return torch.rand(shape, generator=gen, dtype=torch.float32)


TextureFn = Callable[[torch.Generator | None, int, int, int, float], torch.Tensor]
TEXTURES: dict[str, tuple[TextureFn, float, type]] = {}


def register_texture(name: str, default: float, kind: type = int) -> Callable[[TextureFn], TextureFn]:
    """Register ``fn(gen, n, h, w, param) -> pattern [n, H, W] in [0, 1]``; one registration adds a texture."""

    def deco(fn: TextureFn) -> TextureFn:
        if name in TEXTURES:
            raise ValueError(f"texture {name!r} is already registered.")
        TEXTURES[name] = (fn, default, kind)
        return fn

    return deco


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w) + 0.5
    return ys, xs


@register_texture("stripes", 8)
def _stripes(gen, n, h, w, period):
    """Parallel stripes of ``period`` pixels at a random angle and phase."""
    ys, xs = _grid(h, w)
    ang = uniform(gen, n, 1, 1) * math.pi
    phase = uniform(gen, n, 1, 1) * period
    t = xs * torch.cos(ang) + ys * torch.sin(ang) + phase
    return (torch.remainder(t, period) < period / 2).float()


@register_texture("board", 8)
def _board(gen, n, h, w, cell):
    """Checkerboard of ``cell``-pixel squares with a random offset."""
    ys, xs = _grid(h, w)
    oy, ox = (uniform(gen, 2, n, 1, 1) * 2 * cell).unbind(0)
    return torch.remainder(torch.floor((ys + oy) / cell) + torch.floor((xs + ox) / cell), 2)


@register_texture("border", 4)
def _border(gen, n, h, w, width):
    """A frame ``width`` pixels wide along the image edges (colours are the random part)."""
    ys, xs = _grid(h, w)
    d = torch.minimum(torch.minimum(ys, h - ys), torch.minimum(xs, w - xs))
    return (d < width).float().expand(n, h, w).contiguous()


@register_texture("circles", 8)
def _circles(gen, n, h, w, spacing):
    """Concentric rings ``spacing`` pixels apart around a random centre."""
    ys, xs = _grid(h, w)
    cy, cx = uniform(gen, n, 1, 1) * h, uniform(gen, n, 1, 1) * w
    r = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
    return (torch.remainder(r, spacing) < spacing / 2).float()


@register_texture("clock", 12)
def _clock(gen, n, h, w, spokes):
    """``spokes`` radial lines (clock hands) from a random centre at a random rotation."""
    ys, xs = _grid(h, w)
    cy = (0.25 + 0.5 * uniform(gen, n, 1, 1)) * h
    cx = (0.25 + 0.5 * uniform(gen, n, 1, 1)) * w
    rot = uniform(gen, n, 1, 1) * (2 * math.pi / spokes)
    dy, dx = ys - cy, xs - cx
    r = torch.sqrt(dy ** 2 + dx ** 2)
    step = 2 * math.pi / spokes
    delta = torch.remainder(torch.atan2(dy, dx) - rot + step / 2, step) - step / 2
    half = max(0.75, min(h, w) / 48)
    return ((r * torch.sin(delta).abs() < half) & (torch.cos(delta) > 0)).float()


@register_texture("noise", 0.1, float)
def _noise(gen, n, h, w, p):
    """Bernoulli noise: each pixel takes the second colour with probability ``p``."""
    return (uniform(gen, n, h, w) < p).float()
