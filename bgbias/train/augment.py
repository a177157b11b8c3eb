"""Background augmentation: ``BackgroundSwap`` replaces the background of (image, mask) pairs, per sample or per batch.

Report 000's colour / mean / other-image / photo backgrounds and paper 001's
Mixed-Rand (another sample's background) as one transform:

    aug = BackgroundSwap(families="bank", p=0.8, seed=0)          # or {"color": 0.3, "texture": 0.7}
    image, mask = aug(tv_tensors.Image(img), tv_tensors.Mask(m))     # torchvision v2, one pair
    x = aug.batch(images, masks, labels)                              # a whole batch, on its device

Families: one spec (:func:`bgbias.synth.bank.parse_bank`), default ``"bank"``: every texture with random
parameters, multi-scale smooth / fractal / pixel noise, gradients, random colours and other images'
backgrounds; weights with ``=W`` (``"texture:*=2,noise,photos:DIR"``; a group's weight is shared by its
members). Leaves:
    ``color:random`` (= ``color``), ``color:<c>``, ``mean``, ``mean_color``, ``texture:<name>[:param|*]``,
    ``noise:<kind>``, ``gradient:<kind>``, ``photos:DIR`` (random crops)
                              any background family of :mod:`bgbias.synth.backgrounds` / ``bank`` (``mean*`` need :meth:`fit`)
    ``other_sample``          another sample's background (Mixed-Rand on the fly)
    ``same_class``            ... of a sample of the same class (Mixed-Same); none in the batch -> any other sample
    ``next_class``            ... of class ``(y+1) mod C`` (Mixed-Next); absent -> the next class present

A partner's background has a hole where its own foreground was. We fill it by
push-pull inpainting (:func:`fill_foreground`: masked average pyramid, coarse
values pulled into the hole), which is exact on background pixels, batched, a
few pooling ops, and never leaves the partner's object (or its soft edge) in the picture. (A build
dir's ``mixed_rand`` uses IN-9's Only-BG-T tiling instead; training from it is
the ``mixed-rand`` recipe's other path.)

Every draw (apply?, family, colour, texture, partner) comes from an explicit
``torch.Generator``, never the global RNG. Foreground pixels (mask == 1) come
out bit-identical: the pixels are mixed only by :func:`bgbias.core.compose.compose`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from bgbias.core.compose import compose
from bgbias.core.seeding import derive_seed

PARTNERS = {"other_sample": "mixed_rand", "same_class": "mixed_same", "next_class": "mixed_next"}
"""Batch-partner families and the IN-9 variant each one imitates (used for ``families_seen``)."""
DEFAULT_FAMILIES = ("bank",)


def parse_families(families: Mapping[str, float] | Sequence[str] | str) -> dict[str, float]:
    """``"bank"`` / ``"color,mean"`` / ``["texture:*=2", "noise"]`` / ``{"color": 0.3}`` -> normalised ``{leaf: w}``."""
    from bgbias.synth.bank import parse_bank

    return parse_bank(families)


def families_seen(families: Iterable[str] | Mapping[str, float] | str) -> list[str]:
    """Variant-style names of what training showed: leaves of the spec, ``texture:K:*`` -> ``texture:K``
    (marks every ``texture_K*`` variant), ``color:random`` -> ``color`` (every ``color_*``), partners -> ``mixed_*``."""
    seen: list[str] = []
    for f in parse_families(families):
        if f.startswith("texture:") and f.endswith(":*"):
            f = f[:-2]
        name = "color" if f == "color:random" else PARTNERS.get(f, f)
        if name not in seen:
            seen.append(name)
    return seen


def fill_foreground(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Background-only images: foreground holes filled by push-pull inpainting from the surrounding background.

    images: float ``[N, C, H, W]``; masks: ``[N, 1, H, W]`` float in [0, 1] (1 = foreground).
    Returns float ``[N, C, H, W]``, equal to ``images`` where mask == 0. Only pixels with mask == 0
    count as known background: soft-edge pixels hold some foreground colour, so they are filled too.
    """
    w = (masks == 0).to(images.dtype)
    pyramid = [(images * w, w)]
    while min(pyramid[-1][1].shape[-2:]) > 1:
        num, den = pyramid[-1]
        pyramid.append((F.avg_pool2d(num, 2, ceil_mode=True), F.avg_pool2d(den, 2, ceil_mode=True)))
    num, den = pyramid[-1]
    fill = num / den.clamp_min(1e-6)
    for num, den in reversed(pyramid[:-1]):
        up = F.interpolate(fill, size=num.shape[-2:], mode="bilinear", align_corners=False)
        alpha = den.clamp(0.0, 1.0)
        fill = alpha * (num / den.clamp_min(1e-6)) + (1.0 - alpha) * up
    return torch.where(w == 1, images, fill)


def swap_kernel(images: torch.Tensor, masks: torch.Tensor, backgrounds: torch.Tensor,
                apply: torch.Tensor) -> torch.Tensor:
    """Composite ``images`` onto ``backgrounds`` where ``apply``; the one pixel path of both forms.

    images: ``[..., C, H, W]`` float in [0, 1] or uint8; masks: ``[..., H, W]`` / ``[..., 1, H, W]``
    (float, bool, or uint8 0/255); backgrounds: float ``[..., C, H, W]`` in [0, 1]; apply: bool ``[...]``.
    Returns a new tensor of the images' dtype and device.
    """
    if masks.dtype == torch.uint8:
        masks = masks.float() / 255.0
    bg = backgrounds.to(images.device)
    bg = (bg * 255.0).round_().clamp_(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else bg.to(images.dtype)
    out = compose(images, bg.expand_as(images), masks.to(images.device))
    keep = apply.to(images.device).reshape(*apply.shape, 1, 1, 1)
    return torch.where(keep, out, images)


@dataclass
class SwapParams:
    """All randomness of one swap: which rows change, and the background (float [N,3,H,W] in [0,1]) each gets."""

    apply: torch.Tensor        # bool [N]
    background: torch.Tensor   # float32 [N, 3, H, W]
    family: list[str]          # per row, "" where not applied

    def sample(self, i: int, mask: torch.Tensor) -> dict[str, Any]:
        """The per-sample params of row ``i`` (what :meth:`BackgroundSwap.transform` takes)."""
        return {"apply": self.apply[i], "background": self.background[i], "mask": mask, "family": self.family[i]}


class BackgroundSwap(v2.Transform):
    """Replace the background (mask < 1) with one drawn from ``families``, with probability ``p``.

    Per sample (torchvision v2): call with a ``tv_tensors.Image`` and a ``tv_tensors.Mask``
    (``[H, W]`` or ``[1, H, W]``); the mask passes through unchanged. Partner families use a
    bank of the last ``bank_size`` backgrounds this transform has seen (none yet -> no swap).
    Batched: :meth:`batch`, where partners come from the same batch.
    """

    def __init__(self, families: Mapping[str, float] | Sequence[str] | str = DEFAULT_FAMILIES,
                 p: float = 0.8, seed: int = 0, num_classes: int | None = None, bank_size: int = 64):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}.")
        self.families = parse_families(families)
        self.p, self.seed, self.num_classes = float(p), int(seed), num_classes
        self._names = list(self.families)
        self._weights = torch.tensor([self.families[n] for n in self._names], dtype=torch.float64)
        self._backgrounds = {n: self._make_background(n) for n in self._names if n not in PARTNERS}
        self._bank: deque[tuple[torch.Tensor, int | None]] = deque(maxlen=int(bank_size))
        self._generator: torch.Generator | None = None
        self._batch_generator: torch.Generator | None = None

    @staticmethod
    def _make_background(name: str) -> Any:
        from bgbias.synth.bank import create_bank_background

        bg = create_bank_background(name)
        if getattr(bg, "needs_sample", False):
            raise ValueError(f"Background family {name!r} uses the sample's own pixels and cannot be swapped in; "
                             f"use other_sample, same_class or next_class.")
        return bg

    @property
    def seen(self) -> list[str]:
        """The families this augmentation shows, as variant names (for ``families_seen``)."""
        return families_seen(self._names)

    def fit(self, samples: Iterable[Any]) -> "BackgroundSwap":
        """Fit the families that need a dataset pass (``mean``, ``mean_color``) on ``Sample`` objects."""
        needs = [b for b in self._backgrounds.values() if getattr(b, "needs_fit", False)]
        if needs:
            samples = list(samples)
            for b in needs:
                b.fit(samples)
        return self

    # -- drawing -----------------------------------------------------------------------------------------
    def _render(self, name: str, n: int, size: tuple[int, int], g: torch.Generator, device: torch.device
                ) -> torch.Tensor:
        return self._backgrounds[name].render(n, size, g, device).to(device, torch.float32)

    def _partners(self, kind: str, labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Index of the partner row for every row (CPU long [N]); never the row itself when N > 1."""
        n = len(labels)
        score = torch.rand(n, n, generator=g, dtype=torch.float64)
        score.fill_diagonal_(-1.0)
        if kind == "same_class":
            same = labels[:, None] == labels[None, :]
            score = torch.where(same & (score >= 0), score + 2.0, score)
        elif kind == "next_class":
            c = int(self.num_classes or int(labels.max()) + 1)
            d = (labels[None, :] - labels[:, None]) % c           # class distance forward, 0 = same class
            d = torch.where(d == 0, c, d).to(torch.float64)
            score = torch.where(score >= 0, 2.0 * c - d + score, score)  # nearest next class first, random within
        return score.argmax(dim=1)

    def make_batch_params(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> SwapParams:
        """Draw everything for a batch ``[N, C, H, W]``; backgrounds are rendered on the images' device."""
        if images.ndim != 4:
            raise ValueError(f"Expected a batched input with 4 dims [N, C, H, W], got shape {tuple(images.shape)}.")
        g = generator or self._default_batch_generator()
        n, size, device = images.shape[0], tuple(images.shape[-2:]), images.device
        labels = torch.zeros(n, dtype=torch.long) if labels is None else labels.detach().to("cpu", torch.long)
        apply = torch.rand(n, generator=g) < self.p
        fam = torch.multinomial(self._weights, n, replacement=True, generator=g)
        background = torch.zeros(n, 3, *size, device=device)
        family = [""] * n
        filled = None
        for k, name in enumerate(self._names):
            rows = ((fam == k) & apply).nonzero().flatten()
            if not len(rows):
                continue
            for r in rows.tolist():
                family[r] = name
            if name in PARTNERS:
                partner = self._partners(name, labels, g)[rows]
                if filled is None:
                    m = masks if masks.ndim == 4 else masks.unsqueeze(1)
                    m = m.float() / 255.0 if m.dtype == torch.uint8 else m.float()
                    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
                    filled = fill_foreground(x, m).expand(-1, 3, -1, -1)
                background[rows.to(device)] = filled[partner.to(device)]
            else:
                background[rows.to(device)] = self._render(name, len(rows), size, g, device)
        return SwapParams(apply.to(device), background, family)

    def batch(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Swap backgrounds of a whole batch: images float [N,C,H,W] in [0,1] (or uint8), masks [N,1,H,W] or [N,H,W]."""
        params = self.make_batch_params(images, masks, labels, generator)
        return swap_kernel(images, masks, params.background, params.apply)

    def _default_batch_generator(self) -> torch.Generator:
        if self._batch_generator is None:
            self._batch_generator = torch.Generator().manual_seed(derive_seed(self.seed, "BackgroundSwap", "batch"))
        return self._batch_generator

    # -- torchvision v2 ------------------------------------------------------------------------------------
    def check_inputs(self, flat_inputs: list[Any]) -> None:
        """Remember the sample's label (an int or 0-dim tensor next to the image) for same/next-class partners."""
        labels = [int(x) for x in flat_inputs if (isinstance(x, int) and not isinstance(x, bool))
                  or (isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.TVTensor) and x.ndim == 0)]
        self._label = labels[0] if labels else None

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next((x for x in flat_inputs if isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.Mask)),
                     None)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        if image is None or mask is None:
            raise TypeError("BackgroundSwap needs an image and a tv_tensors.Mask in the same call, got "
                            f"{[type(x).__name__ for x in flat_inputs]}.")
        label = getattr(self, "_label", None)
        if self._generator is None:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
            self._generator = torch.Generator().manual_seed(derive_seed(self.seed, "BackgroundSwap", worker))
        g = self._generator
        m = torch.as_tensor(mask).reshape(1, 1, *image.shape[-2:])
        m = m.float() / 255.0 if m.dtype == torch.uint8 else m.float()
        x = torch.as_tensor(image).unsqueeze(0)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        own = fill_foreground(x.cpu(), m.cpu())[0].expand(3, -1, -1)
        apply = bool(torch.rand(1, generator=g) < self.p)
        name = self._names[int(torch.multinomial(self._weights, 1, generator=g))]
        background = torch.zeros(3, *image.shape[-2:])
        if apply and name in PARTNERS:
            pool = [b for b, lab in self._bank if name == "other_sample" or label is None or lab is None
                    or lab == (label if name == "same_class" else (label + 1) % int(self.num_classes or 10**9))]
            if pool:
                background = pool[int(torch.randint(len(pool), (1,), generator=g))]
            else:
                apply = False
        elif apply:
            background = self._render(name, 1, tuple(image.shape[-2:]), g, torch.device("cpu"))[0]
        self._bank.append((own, label))
        return {"apply": torch.tensor(apply), "background": background, "mask": m[0, 0].to(image.device),
                "family": name if apply else ""}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        out = swap_kernel(torch.as_tensor(inpt), params["mask"], params["background"], params["apply"])
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
