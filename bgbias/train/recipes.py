"""What a training run is: its config, its data in memory, and the recipes that shape it.

Recipes (``RECIPES``): ``baseline`` (clean images), ``bg-augment`` (report 000:
:class:`~bgbias.train.augment.BackgroundSwap` with ``--families``), ``mixed-rand``
(paper 001: a build dir's ``mixed_rand`` images, or other-sample backgrounds on
the fly from a source with masks), ``adversarial`` (paper 002, in
:mod:`bgbias.train.adversarial`: clean stage, mask-generator stage, adversarial game).
A recipe only says which variant to read, its phases, each phase's per-batch
augmentation and the families it shows; :mod:`bgbias.train.loop` runs the loop.

The data is held in memory as uint8 (``[N, 3, H, W]`` images, ``[N, H, W]`` masks)
so that the loop can augment whole batches on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from bgbias.core.seeding import torch_generator
from bgbias.train.config import RECIPES, TrainConfig
from bgbias.train.data import TrainData, is_build_dir


# ------------------------------------------------------------------------------------------- recipes
class Augment(Protocol):
    """A per-batch transform inside the training step: ``x`` float [N,3,H,W] in [0,1] -> same."""

    seen: list[str]

    def __call__(self, x: torch.Tensor, m: torch.Tensor | None, y: torch.Tensor, g: torch.Generator,
                 model: nn.Module) -> torch.Tensor: ...


@dataclass
class PhaseHooks:
    """What a phase changes in the shared loop (group recipes): which rows (of which data) it trains on (repeats upweight),
    the loss, which modules train, optimiser settings, and whether the best validation epoch is kept.

    ``loss(logits, y, rows) -> scalar`` may keep state (``state_dict``/``load_state_dict``, saved for
    ``--resume``); ``train_mode(model)`` runs after ``model.train()`` (e.g. keep a frozen backbone in eval);
    ``optim``: :class:`TrainConfig` fields overridden for this phase's optimiser (e.g. ``weight_decay``);
    ``keep_best``: restore the weights of the epoch with the best validation worst-group accuracy
    (validation accuracy without groups) at the phase's end: early stopping. ``info`` goes into metrics.
    ``rows_for_epoch(epoch, generator)``: each epoch's rows instead of ``rows`` (a resample redrawn every epoch, as
    GroupDRO's sampler does); ``generator`` is keyed by ``(seed, "rows", phase, epoch)``, so a resumed run draws the
    same rows, and every epoch must give as many rows as epoch 0 (the phase's step plan and LR schedule are fixed).
    """

    rows: torch.Tensor | None = None
    rows_for_epoch: Callable[[int, torch.Generator], torch.Tensor] | None = None
    data: TrainData | None = None          # train on these rows of this data instead (dfr: the held-out part)
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    train_mode: Callable[[nn.Module], None] | None = None
    optim: dict[str, Any] = field(default_factory=dict)
    keep_best: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """What a recipe changes: the build-dir variant it reads, its phases, each phase's augmentation and loop
    hooks, and the background families it shows (variant-style names; ``bgbias eval`` marks matching
    variants as seen). ``hooks`` is called once at each phase's start (after ``augment``)."""

    variant: str = "original"
    phases: Callable[[TrainConfig], list[tuple[str, int]]] = lambda cfg: [("main", cfg.epochs)]
    augment: Callable[..., Augment | None] = lambda phase, cfg, data, model, ctx: None
    seen: Callable[[TrainConfig], list[str]] = lambda cfg: []
    hooks: Callable[..., PhaseHooks | None] = lambda phase, cfg, data, model, ctx: None




class SwapAugment:
    """:class:`~bgbias.train.augment.BackgroundSwap` as a training-step augmentation."""

    def __init__(self, swap: Any):
        self.swap, self.seen = swap, swap.seen

    def __call__(self, x, m, y, g, model):
        return self.swap.batch(x, m, y, generator=g)


def _swap(cfg: TrainConfig, data: TrainData, families: Any, p: float) -> SwapAugment:
    from bgbias.train.augment import BackgroundSwap

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
    from bgbias.train.augment import families_seen

    return Recipe(augment=lambda phase, cfg, data, model, ctx: _swap(cfg, data, cfg.families, cfg.p),
                  seen=lambda cfg: families_seen(cfg.families))


@RECIPES.register("mixed-rand", help="paper 001: train on Mixed-Rand (build dir mixed_rand, or on the fly)")
def _mixed_rand() -> Recipe:
    def augment(phase, cfg, data, model, ctx):
        return None if is_build_dir(cfg.data) else _swap(cfg, data, {"other_sample": 1.0}, 1.0)

    return Recipe(variant="mixed_rand", augment=augment, seen=lambda cfg: ["mixed_rand"])


@RECIPES.register("adversarial", help="paper 002: mask generator + adversarial background generator")
def _adversarial() -> Recipe:
    from bgbias.train.adversarial import adversarial_augment

    return Recipe(phases=lambda cfg: [("clean", cfg.epochs if cfg.clean_epochs is None else cfg.clean_epochs),
                                       ("adversarial", cfg.epochs)],
                  augment=adversarial_augment, seen=_adversarial_seen)


def _adversarial_seen(cfg: TrainConfig) -> list[str]:
    """The generator's backgrounds, plus the bank's families when ``--adv-bank`` mixes them in."""
    from bgbias.train.augment import families_seen

    bank = [f for f in families_seen(cfg.families) if not f.startswith("mixed_")] if cfg.adv_bank > 0 else []
    return ["adversarial", *bank]
