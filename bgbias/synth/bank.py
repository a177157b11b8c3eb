"""The background bank: many randomised families, one spec syntax to choose and weight them.

    bank                                the default bank (``DEFAULT_BANK`` below)
    texture:*=2,noise,photos:DIR        all textures with random parameters (weight 2), every noise, a photo folder
    bank,photos:DIR=0.5                 the bank plus user photos

A spec is a comma-separated list of ``FAMILY[=WEIGHT]``; a group's weight is shared equally by its
members. Groups: ``bank``; ``texture`` = ``texture:*`` (every texture kind with random parameters:
``texture:NAME:*`` for each NAME; a bare ``texture`` means this in every training spec, ``BackgroundSwap`` and
``create_background``, while a *build variant* named ``texture`` is ``texture:stripes``; ``texture:*:PARAM`` is an
error, a parameter needs one kind); ``noise`` (``noise:smooth``, ``noise:fractal``, ``noise:pixel``); ``gradient``
(``gradient:linear``, ``gradient:radial``); ``color:greys`` (seven flat grey levels, ``GREYS``). Leaves are
any background family (``color:random``, ``color:red``, ``texture:stripes:8``, ``mean``, ``photos:DIR``) or, in
:class:`~bgbias.train.augment.BackgroundSwap`, another image's background (``other_sample``,
``same_class``, ``next_class``). A name means the same everywhere: ``color`` is ``color:random``,
``texture:stripes`` is the fixed stripes of period 8, ``texture:stripes:*`` the randomised family.

``photos:DIR`` in a bank is :class:`PhotoCrops`: a random window (10-100% of the shorter side) at a
random position, random flip and brightness/contrast jitter, so a few photos give many backgrounds.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bgbias.synth.backgrounds import BACKGROUNDS, Background, Photos, Texture, _check_size, create_background
from bgbias.synth.textures import TEXTURES, uniform

PARTNERS = ("other_sample", "same_class", "next_class")
NOISES = ("smooth", "fractal", "pixel")
GRADIENTS = ("linear", "radial")
GREYS = ("#404040", "#666666", "#8c8c8c", "#b3b3b3", "#cccccc", "#e6e6e6", "#ffffff")
"""``color:greys``: flat grey levels, bright-heavy. Random RGB colours average to a mid luminance (87% of the old
bank's renders had mean luminance 0.3-0.7), so bright, flat backgrounds (sky, walls), where white strokes fade,
were rare; the greys lifted held-out photos 95.8 -> 97.4 at 5 epochs (bench/RESULTS.md, issue 15)."""
DEFAULT_BANK: dict[str, float] = {"texture:*": 3.0, "noise": 2.5, "gradient": 1.0, "color:random": 1.0,
                                  "color:greys": 3.5, "other_sample": 0.5}
"""What ``bank`` means: weights of its groups (normalised when used)."""


# ---------------------------------------------------------------- noise and gradients
def _two_colours(gen, n: int, t: torch.Tensor) -> torch.Tensor:
    """Colour a pattern ``t`` [n, 1, H, W] in [0, 1] between two random colours (random contrast)."""
    c0, c1 = uniform(gen, n, 3, 1, 1), uniform(gen, n, 3, 1, 1)
    return c0 + t * (c1 - c0)


def _normalise(t: torch.Tensor) -> torch.Tensor:
    lo = t.amin(dim=(-2, -1), keepdim=True)
    hi = t.amax(dim=(-2, -1), keepdim=True)
    return (t - lo) / (hi - lo).clamp_min(1e-6)


class Noise(Background):
    """``noise:smooth`` (value noise at a random scale, 2-14 cells, per channel or two-colour),
    ``noise:fractal`` (1/f^beta sum of 3-5 octaves, beta 0.5-2) and ``noise:pixel`` (per-pixel uniform
    noise of random amplitude around a random colour)."""

    def __init__(self, kind: str = "smooth"):
        if kind not in NOISES:
            raise ValueError(f"Unknown noise {kind!r}; valid: {', '.join(NOISES)}.")
        self.kind, self.name = kind, f"noise:{kind}"

    def _octave(self, gen, n: int, cells: int, h: int, w: int, channels: int) -> torch.Tensor:
        coarse = uniform(gen, n, channels, cells, cells)
        return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)

    def render(self, n, size, generator=None, device="cpu"):
        h, w = _check_size(size)
        g = generator
        if self.kind == "pixel":
            base, amp = uniform(g, n, 3, 1, 1), 0.2 + 0.8 * uniform(g, n, 1, 1, 1)
            out = base + (uniform(g, n, 3, h, w) - 0.5) * amp
        else:
            colour = uniform(g, n, 1, 1, 1) < 0.5                # per-channel RGB noise, or two-colour
            if self.kind == "smooth":
                cells = int(2 + 12 * float(uniform(g, 1)))
                t = self._octave(g, n, cells, h, w, 3)
            else:
                beta = 0.5 + 1.5 * float(uniform(g, 1))
                t = sum(self._octave(g, n, 2 ** (k + 1), h, w, 3) * 2.0 ** (-beta * k)
                        for k in range(3 + int(3 * float(uniform(g, 1)))))
            t = _normalise(t)
            out = torch.where(colour, t, _two_colours(g, n, t[:, :1]))
        return out.clamp(0, 1).to(device=device, dtype=torch.float32)


class Gradient(Background):
    """``gradient:linear`` (random angle) or ``gradient:radial`` (random centre) between two random colours."""

    def __init__(self, kind: str = "linear"):
        if kind not in GRADIENTS:
            raise ValueError(f"Unknown gradient {kind!r}; valid: {', '.join(GRADIENTS)}.")
        self.kind, self.name = kind, f"gradient:{kind}"

    def render(self, n, size, generator=None, device="cpu"):
        h, w = _check_size(size)
        ys = (torch.arange(h, dtype=torch.float32).view(1, 1, h, 1) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32).view(1, 1, 1, w) + 0.5) / w
        if self.kind == "linear":
            ang = uniform(generator, n, 1, 1, 1) * 2 * math.pi
            t = xs * torch.cos(ang) + ys * torch.sin(ang)
        else:
            cy, cx = uniform(generator, n, 1, 1, 1), uniform(generator, n, 1, 1, 1)
            t = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
        return _two_colours(generator, n, _normalise(t)).to(device=device, dtype=torch.float32)


class PhotoCrops(Photos):
    """``photos:DIR`` for training: random window, position, flip, brightness and contrast per image."""

    def render(self, n, size, generator=None, device="cpu"):
        import cv2

        from bgbias.core.io import read_image
        from bgbias.core.sample import BadSample

        h, w = _check_size(size)
        r = uniform(generator, n, 7).numpy()
        out = np.empty((n, h, w, 3), np.float32)
        for i in range(n):
            k = int(r[i, 0] * len(self.files))
            if ("full", k) not in self._cache:
                try:
                    self._cache[("full", k)] = read_image(self.files[k])
                except BadSample:
                    self._cache[("full", k)] = np.zeros((h, w, 3), np.uint8)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            img = self._cache[("full", k)]
            ih, iw = img.shape[:2]
            s = max(1, int(min(ih, iw) * (0.1 + 0.9 * r[i, 1])))
            sh, sw = min(ih, s), min(iw, max(1, int(s * w / h)))
            y0, x0 = int(r[i, 2] * (ih - sh + 1)), int(r[i, 3] * (iw - sw + 1))
            crop = cv2.resize(img[y0:y0 + sh, x0:x0 + sw], (w, h), interpolation=cv2.INTER_AREA)
            crop = crop[:, ::-1] if r[i, 4] < 0.5 else crop
            x = crop.astype(np.float32) / 255.0
            out[i] = (x - x.mean()) * (0.6 + 0.8 * r[i, 5]) + x.mean() + (r[i, 6] - 0.5) * 0.4
        t = torch.from_numpy(out).permute(0, 3, 1, 2).clamp_(0, 1)
        return t.to(device=device, dtype=torch.float32)


class Mixture(Background):
    """A weighted mixture of families: each image draws one member (by weight), then that member renders it."""

    def __init__(self, members: dict[str, float], name: str):
        self.members = {k: create_bank_background(k) for k in members}
        total = sum(members.values())
        self.weights = torch.tensor([members[k] / total for k in self.members], dtype=torch.float64)
        self.name = name
        if any(b.needs_fit or b.needs_sample for b in self.members.values()):
            raise ValueError(f"Mixture {name!r} cannot hold fitted or per-sample families.")

    def render(self, n, size, generator=None, device="cpu"):
        h, w = _check_size(size)
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        out = torch.empty(n, 3, h, w, device=device)
        for k, bg in enumerate(self.members.values()):
            rows = (which == k).nonzero().flatten()
            if len(rows):
                out[rows.to(device)] = bg.render(len(rows), (h, w), generator, device).to(device, torch.float32)
        return out

    def describe(self):
        return {"name": self.name, "members": {k: round(float(v), 6) for k, v in zip(self.members, self.weights)}}


# ---------------------------------------------------------------- spec syntax
def _expand(name: str) -> list[str]:
    """The leaves a group name stands for (a leaf stands for itself)."""
    if name == "bank":
        return [leaf for g in DEFAULT_BANK for leaf in _expand(g)]
    if name in ("texture", "texture:*"):
        return [f"texture:{t}:*" for t in TEXTURES.names()]
    if name.startswith("texture:*:"):
        raise ValueError(f"Family {name!r} is ambiguous: a texture parameter needs one kind (texture:NAME:PARAM, "
                         f"e.g. texture:stripes:8); texture or texture:* is every kind with random parameters.")
    if name == "noise":
        return [f"noise:{k}" for k in NOISES]
    if name == "gradient":
        return [f"gradient:{k}" for k in GRADIENTS]
    if name == "color":
        return ["color:random"]
    if name == "color:greys":
        return [f"color:{c}" for c in GREYS]
    return [name]


def parse_bank(spec) -> dict[str, float]:
    """``"texture:*=2,noise,photos:DIR"`` (or a list / ``{name: weight}``) -> normalised ``{leaf: weight}``.

    A group's weight is split equally among its leaves; a leaf named twice adds up.
    """
    from collections.abc import Mapping

    if isinstance(spec, str):
        spec = [s for s in spec.split(",") if s.strip()]
    if not isinstance(spec, Mapping):
        items = []
        for s in spec:
            name, eq, wt = str(s).strip().rpartition("=") if "=" in str(s) else (str(s).strip(), "", "1")
            try:
                items.append((name.strip(), float(wt)))
            except ValueError:
                raise ValueError(f"Family weight must be a number (FAMILY=WEIGHT), got {s!r}.") from None
    else:
        items = [(str(k).strip(), float(v)) for k, v in spec.items()]
    if not items or any(v < 0 for _, v in items) or sum(v for _, v in items) <= 0:
        raise ValueError(f"families must be a non-empty set of names with non-negative weights, got {spec!r}.")
    weights: dict[str, float] = {}
    for name, wt in items:
        if name == "bank":
            total = sum(DEFAULT_BANK.values())
            groups = [(g, wt * v / total) for g, v in DEFAULT_BANK.items()]
        else:
            groups = [(name, wt)]
        for g, gw in groups:
            leaves = _expand(g)
            for leaf in leaves:
                weights[leaf] = weights.get(leaf, 0.0) + gw / len(leaves)
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items() if v > 0}


def bank_families(spec: str = "bank") -> list[str]:
    """The leaf families of ``spec`` (default: the bank), in order."""
    return list(parse_bank(spec))


def create_bank_background(leaf: str) -> Background:
    """One leaf as a background for training: ``photos:DIR`` becomes :class:`PhotoCrops`, the rest as named."""
    if leaf in PARTNERS:
        raise ValueError(f"{leaf!r} is another image's background; only BackgroundSwap can draw it.")
    if leaf.startswith("photos:"):
        return PhotoCrops(leaf.partition(":")[2])
    return create_background(leaf)


def create_mixture(spec: str) -> Mixture:
    """A :class:`Mixture` of a spec's leaves (partners, which need a batch, are not allowed here)."""
    members = parse_bank(spec)
    bad = [k for k in members if k in PARTNERS]
    if bad:
        raise ValueError(f"{', '.join(bad)} need other images of a batch; use BackgroundSwap for {spec!r}.")
    return Mixture(members, spec)


@BACKGROUNDS.register("texture", tags=["texture"],
                      help="texture:NAME[:param|*] (stripes, board, border, circles, clock, noise); bare/texture:* = all, random")
def _texture(kind: str = "*", param: str | None = None) -> Background:
    if kind == "*":
        return create_mixture(f"texture:*{':' + param if param else ''}")
    return Texture(kind, param)


@BACKGROUNDS.register("noise", tags=["noise"], help="noise:smooth|fractal|pixel; bare noise = all three")
def _noise(kind: str | None = None) -> Background:
    return Noise(kind) if kind else create_mixture("noise")


@BACKGROUNDS.register("gradient", tags=["gradient"], help="gradient:linear|radial between two random colours")
def _gradient(kind: str | None = None) -> Background:
    return Gradient(kind) if kind else create_mixture("gradient")


@BACKGROUNDS.register("bank", tags=["bank"], help="the default background bank (texture:*, noise, gradient, color, greys)")
def _bank() -> Background:
    return create_mixture(",".join(f"{k}={v}" for k, v in DEFAULT_BANK.items() if k not in PARTNERS))
