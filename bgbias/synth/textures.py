"""Texture patterns: the two-colour geometry behind ``texture:NAME[:param]`` backgrounds.

A pattern is ``fn(gen, n, h, w, param, duty) -> float32 [n, H, W]`` in [0, 1] (0 = first colour,
1 = second). ``param`` (period, cell size, width, spacing, spokes, rate) is a number, or a per-image
tensor ``[n, 1, 1]`` when the texture is drawn with random parameters (``texture:NAME:*``); ``duty``
(``None`` = the fixed 0.5) is the per-image share of the second colour (line width relative to period).
:func:`register_texture` adds one to the ``TEXTURES`` registry with its default and the range its
parameter is drawn from. Kept apart from :mod:`bgbias.synth.backgrounds` (which colours a pattern in
``Texture``) so a new texture is one small function here. Every random choice comes from ``gen``
through :func:`uniform` (same generator state -> same pattern).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from bgbias.core.registry import Registry


def uniform(gen: torch.Generator | None, *shape: int) -> torch.Tensor:
    """float32 U[0, 1) of ``shape`` from ``gen``: the one source of randomness for textures."""
    return torch.rand(shape, generator=gen, dtype=torch.float32)


TextureFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class TextureKind:
    """A registered texture: its pattern function, default parameter, parameter type and random range."""

    name: str
    fn: TextureFn
    default: float
    kind: type
    low: float
    high: float

    def draw(self, gen: torch.Generator | None, n: int) -> torch.Tensor:
        """Per-image parameters ``[n, 1, 1]``: log-uniform in [low, high] (uniform for rates)."""
        u = uniform(gen, n, 1, 1)
        if self.kind is float:
            return self.low + u * (self.high - self.low)
        return torch.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))


TEXTURES: Registry[TextureKind] = Registry("texture")


def register_texture(name: str, default: float, kind: type = int, low: float | None = None,
                     high: float | None = None) -> Callable[[TextureFn], TextureFn]:
    """Register ``fn(gen, n, h, w, param, duty=None) -> [n, H, W] in [0, 1]``; ``low``/``high`` bound ``:*``."""

    def deco(fn: TextureFn) -> TextureFn:
        lo = default / 3 if low is None else low
        hi = default * 2 if high is None else high
        tk = TextureKind(name, fn, default, kind, float(lo), float(hi))
        TEXTURES.register(name, tags=["texture"], help=next(iter((fn.__doc__ or "").strip().splitlines()), ""))(lambda: tk)
        return fn

    return deco


def texture_kind(name: str) -> TextureKind:
    """The registered texture ``name`` (a clear error listing the valid ones otherwise)."""
    if name not in TEXTURES:
        raise ValueError(f"Unknown texture {name!r}; valid: {', '.join(TEXTURES.names())}.")
    return TEXTURES.create(name)


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w) + 0.5
    return ys, xs


def _duty(duty: torch.Tensor | None) -> torch.Tensor | float:
    return 0.5 if duty is None else duty


@register_texture("stripes", 8, low=2, high=16)
def _stripes(gen, n, h, w, period, duty=None):
    """Parallel stripes of ``period`` pixels at a random angle and phase."""
    ys, xs = _grid(h, w)
    ang = uniform(gen, n, 1, 1) * math.pi
    phase = uniform(gen, n, 1, 1) * period
    t = xs * torch.cos(ang) + ys * torch.sin(ang) + phase
    return (torch.remainder(t, period) < period * _duty(duty)).float()


@register_texture("board", 8, low=2, high=14)
def _board(gen, n, h, w, cell, duty=None):
    """Checkerboard of ``cell``-pixel squares with a random offset."""
    ys, xs = _grid(h, w)
    oy, ox = (uniform(gen, 2, n, 1, 1) * 2 * cell).unbind(0)
    return torch.remainder(torch.floor((ys + oy) / cell) + torch.floor((xs + ox) / cell), 2)


@register_texture("border", 4, low=1, high=10)
def _border(gen, n, h, w, width, duty=None):
    """A frame ``width`` pixels wide along the image edges (colours are the random part)."""
    ys, xs = _grid(h, w)
    d = torch.minimum(torch.minimum(ys, h - ys), torch.minimum(xs, w - xs))
    return (d < width).float().expand(n, h, w).contiguous()


@register_texture("circles", 8, low=2, high=16)
def _circles(gen, n, h, w, spacing, duty=None):
    """Concentric rings ``spacing`` pixels apart around a random centre."""
    ys, xs = _grid(h, w)
    cy, cx = uniform(gen, n, 1, 1) * h, uniform(gen, n, 1, 1) * w
    r = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
    return (torch.remainder(r, spacing) < spacing * _duty(duty)).float()


@register_texture("clock", 12, low=3, high=32)
def _clock(gen, n, h, w, spokes, duty=None):
    """``spokes`` radial lines (clock hands) from a random centre at a random rotation."""
    ys, xs = _grid(h, w)
    cy = (0.25 + 0.5 * uniform(gen, n, 1, 1)) * h
    cx = (0.25 + 0.5 * uniform(gen, n, 1, 1)) * w
    if isinstance(spokes, torch.Tensor):
        spokes = spokes.round().clamp_min(1)
    rot = uniform(gen, n, 1, 1) * (2 * math.pi / spokes)
    dy, dx = ys - cy, xs - cx
    r = torch.sqrt(dy ** 2 + dx ** 2)
    step = 2 * math.pi / spokes
    delta = torch.remainder(torch.atan2(dy, dx) - rot + step / 2, step) - step / 2
    half = max(0.75, min(h, w) / 48) * (1.0 if duty is None else 0.5 + 4 * duty)
    return ((r * torch.sin(delta).abs() < half) & (torch.cos(delta) > 0)).float()


@register_texture("noise", 0.1, float, low=0.02, high=0.6)
def _noise(gen, n, h, w, p, duty=None):
    """Bernoulli noise: each pixel takes the second colour with probability ``p``."""
    return (uniform(gen, n, h, w) < p).float()
