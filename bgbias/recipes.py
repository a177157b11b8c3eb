"""What a training run is: its config, its data in memory, and the recipes that shape it.

Recipes (``RECIPES``): ``baseline`` (clean images), ``bg-augment`` (report 000:
:class:`~bgbias.augment.BackgroundSwap` with ``--families``), ``mixed-rand``
(paper 001: a build dir's ``mixed_rand`` images, or other-sample backgrounds on
the fly from a source with masks), ``adversarial`` (paper 002, in
:mod:`bgbias.adversarial`: clean stage, mask-generator stage, adversarial game).
A recipe only says which variant to read, its phases, each phase's per-batch
augmentation and the families it shows; :mod:`bgbias.train` runs the loop.

The data is held in memory as uint8 (``[N, 3, H, W]`` images, ``[N, H, W]`` masks)
so that the loop can augment whole batches on the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from .io import read_image, read_mask
from .nets import ARCHS
from .registry import Registry
from .sample import BadSample, Sample
from .seeding import torch_generator

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved into ``model.pt``, ``last.pt`` and ``metrics.json``."""

    recipe: str = "baseline"
    data: str = "digits"
    out: str = "runs/train"
    arch: str = "small-cnn"
    pretrained: str | None = None
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    size: tuple[int, int] | None = None          # resize inputs to (H, W); None keeps the data's size
    val_fraction: float = 0.1
    families: tuple[str, ...] = ("color", "mean", "other_sample")   # bg-augment
    p: float = 0.8                               # bg-augment: chance a sample's background is swapped
    true_masks: bool = False                     # adversarial: use the data's masks instead of f_m
    clean_epochs: int | None = None              # adversarial stage 1 (None -> epochs)
    mask_epochs: int = 3                         # adversarial stage 2
    area: float = 0.2                            # adversarial: area prior a
    threshold: str = "quantile"                  # adversarial: "quantile" (A(m >= t) = a) or "otsu"
    brightness: float | None = 0.5               # adversarial: L_BA limit on mean(b); None disables
    clean_fraction: float = 0.2                  # adversarial: share of each batch left clean
    replay: int = 2048                           # adversarial: past generated backgrounds kept for replay
    resume: bool = False                         # continue from OUT/last.pt (config must match)

    def validate(self) -> "TrainConfig":
        if self.recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {self.recipe!r}; valid: {', '.join(RECIPES.names())}.")
        if self.arch not in ARCHS:
            raise ValueError(f"Unknown architecture {self.arch!r}; valid: {', '.join(ARCHS.names())}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}.")
        if self.threshold not in ("quantile", "otsu"):
            raise ValueError(f"Unknown threshold {self.threshold!r}; valid: quantile, otsu.")
        for name in ("epochs", "batch_size", "mask_epochs"):
            if int(getattr(self, name)) < (0 if name == "mask_epochs" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}.")
        if self.clean_epochs is not None and (self.clean_epochs < 0 or (self.clean_epochs == 0 and not self.pretrained)):
            raise ValueError(f"--clean-epochs must be positive (or 0 with --pretrained), got {self.clean_epochs}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}.")
        if not 0.0 <= self.clean_fraction <= 1.0 or self.replay < 0:
            raise ValueError(f"--clean-fraction must be in [0, 1] and --replay >= 0, got {self.clean_fraction} "
                             f"and {self.replay}.")
        if not 0.0 < self.area < 1.0:
            raise ValueError(f"--area must be in (0, 1), got {self.area}.")
        return self


# ---------------------------------------------------------------------------------------------- data
@dataclass
class TrainData:
    """A labelled dataset in memory: uint8 images ``[N,3,H,W]``, uint8 masks ``[N,H,W]`` (255 = fg) or None."""

    images: torch.Tensor
    masks: torch.Tensor | None
    labels: torch.Tensor
    ids: list[str]
    classes: list[str]
    skipped: list[dict]

    def samples(self, rows: list[int]) -> list[Sample]:
        """``Sample`` objects for fitting backgrounds (``mean``)."""
        out = []
        for r in rows:
            mask = None if self.masks is None else self.masks[r].numpy().astype(np.float32) / 255.0
            out.append(Sample(self.images[r].permute(1, 2, 0).numpy(), mask, int(self.labels[r]), self.ids[r]))
        return out


def is_build_dir(path: str) -> bool:
    """A ``bgbias build`` output (read per variant, with ``fg_mask``) rather than a source spec."""
    p = Path(path)
    return p.is_dir() and ((p / "manifest.json").is_file() or (p / "fg_mask").is_dir())


def _resize(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int] | None):
    if size is None or image.shape[:2] == tuple(size):
        return image, mask
    import cv2

    h, w = size
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    mask = None if mask is None else cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    return image, mask


def load_data(data: str, variant: str = "original", size: tuple[int, int] | None = None) -> TrainData:
    """Read a source spec (``digits``, ``mnist:DIR``, ...) or a build dir's ``variant`` into memory."""
    images, masks, labels, ids, skipped = [], [], [], [], []

    def add(image: np.ndarray, mask: np.ndarray | None, label: int, sid: str) -> None:
        image, mask = _resize(image, mask, size)
        if images and image.shape != images[0].shape:
            raise ValueError(f"Images differ in size ({image.shape[1]}x{image.shape[0]} vs "
                             f"{images[0].shape[1]}x{images[0].shape[0]}); pass --size H W.")
        images.append(image)
        masks.append(mask)
        labels.append(int(label))
        ids.append(sid)

    if is_build_dir(data):
        from .layout import find_mask, list_classes, list_items

        classes = list_classes(data, variant)
        for item in list_items(data, variant):
            try:
                image = read_image(item.path)
                mpath = find_mask(data, item)
                add(image, read_mask(mpath, image.shape[:2]) if mpath.is_file() else None, item.label, item.id)
            except BadSample as e:
                skipped.append({"path": str(item.path), "reason": e.reason})
    else:
        from .sources import create_source

        source = create_source(data)
        classes = list(source.classes)
        for i in range(len(source)):
            try:
                s = source.load(i)
                add(s.image, s.mask, s.label, s.id)
            except BadSample as e:
                skipped.append({"id": source.ids()[i], "reason": e.reason})
    if not images:
        raise ValueError(f"No usable images in {data!r} ({len(skipped)} skipped).")
    img = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    msk = None
    if all(m is not None for m in masks):
        msk = torch.from_numpy(np.rint(np.stack(masks) * 255.0).astype(np.uint8))
    return TrainData(img, msk, torch.tensor(labels, dtype=torch.long), ids, classes, skipped)


# ------------------------------------------------------------------------------------------- recipes
class Augment(Protocol):
    """A per-batch transform inside the training step: ``x`` float [N,3,H,W] in [0,1] -> same."""

    seen: list[str]

    def __call__(self, x: torch.Tensor, m: torch.Tensor | None, y: torch.Tensor, g: torch.Generator,
                 model: nn.Module) -> torch.Tensor: ...


@dataclass
class Recipe:
    """What a recipe changes: the build-dir variant it reads, its phases, each phase's augmentation, and
    the background families it shows (variant-style names; ``bgbias eval`` marks matching variants as seen)."""

    variant: str = "original"
    phases: Callable[[TrainConfig], list[tuple[str, int]]] = lambda cfg: [("main", cfg.epochs)]
    augment: Callable[..., Augment | None] = lambda phase, cfg, data, model, ctx: None
    seen: Callable[[TrainConfig], list[str]] = lambda cfg: []


RECIPES: Registry[Recipe] = Registry("recipe")


class SwapAugment:
    """:class:`~bgbias.augment.BackgroundSwap` as a training-step augmentation."""

    def __init__(self, swap: Any):
        self.swap, self.seen = swap, swap.seen

    def __call__(self, x, m, y, g, model):
        return self.swap.batch(x, m, y, generator=g)


def _swap(cfg: TrainConfig, data: TrainData, families: Any, p: float) -> SwapAugment:
    from .augment import BackgroundSwap

    if data.masks is None:
        raise ValueError(f"Recipe {cfg.recipe!r} needs foreground masks, but {cfg.data!r} has none; "
                         "use a source with masks or a build dir with fg_mask.")
    swap = BackgroundSwap(families, p=p, seed=cfg.seed, num_classes=len(data.classes))
    rows = torch.randperm(len(data.labels), generator=torch_generator(cfg.seed, "fit"))[:2000].tolist()
    return SwapAugment(swap.fit(data.samples(rows)))


@RECIPES.register("baseline", help="clean images, no background augmentation")
def _baseline() -> Recipe:
    return Recipe()


@RECIPES.register("bg-augment", help="report 000: BackgroundSwap with --families")
def _bg_augment() -> Recipe:
    from .augment import families_seen

    return Recipe(augment=lambda phase, cfg, data, model, ctx: _swap(cfg, data, cfg.families, cfg.p),
                  seen=lambda cfg: families_seen(cfg.families))


@RECIPES.register("mixed-rand", help="paper 001: train on Mixed-Rand (build dir mixed_rand, or on the fly)")
def _mixed_rand() -> Recipe:
    def augment(phase, cfg, data, model, ctx):
        return None if is_build_dir(cfg.data) else _swap(cfg, data, {"other_sample": 1.0}, 1.0)

    return Recipe(variant="mixed_rand", augment=augment, seen=lambda cfg: ["mixed_rand"])


@RECIPES.register("adversarial", help="paper 002: mask generator + adversarial background generator")
def _adversarial() -> Recipe:
    from .adversarial import adversarial_augment

    return Recipe(phases=lambda cfg: [("clean", cfg.epochs if cfg.clean_epochs is None else cfg.clean_epochs),
                                       ("adversarial", cfg.epochs)],
                  augment=adversarial_augment, seen=lambda cfg: ["adversarial"])

