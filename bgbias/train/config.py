"""What a training run is: :class:`TrainConfig` (everything a run depends on) and the recipe registry it names."""
from __future__ import annotations

from dataclasses import dataclass

from bgbias.core.registry import Registry
from bgbias.models.nets import ARCHS, NORMS

# Recipes register themselves in bgbias.train.recipes (imported on first use).
RECIPES: Registry = Registry("recipe", plugins=("bgbias.train.recipes", "bgbias.train.group_recipes"))

OPTIMIZERS = ("sgd", "adam", "adamw")


SCHEDULES = ("cosine", "step", "none")


# Fields older runs recorded that no longer change a run: a checkpoint holding them still resumes.
# dfr_epochs: loop epochs at learning rate 0 after DFR's convex refit of the head; they only re-scored it.
RETIRED_FIELDS = ("dfr_epochs",)


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
    val_fraction: float = 0.1                    # source specs only; a build dir validates on its 'val' split
    norm: str = "batch"                          # small-cnn normalisation: batch (with --min-steps) or group
    min_steps: int = 100                         # at least this many optimiser steps (smaller batches, more passes)
    families: tuple[str, ...] = ("bank",)        # bg-augment: background spec (bgbias.synth.bank), FAMILY[=W],...
    p: float = 0.8                               # bg-augment: chance a sample's background is swapped
    true_masks: bool = False                     # adversarial: use the data's masks instead of f_m
    clean_epochs: int | None = None              # adversarial stage 1 (None -> epochs)
    mask_epochs: int = 3                         # adversarial stage 2
    area: float = 0.2                            # adversarial: area prior a
    threshold: str = "quantile"                  # adversarial: "quantile" (A(m >= t) = a) or "otsu"
    brightness: float | None = 0.5               # adversarial: L_BA limit on mean(b); None disables
    clean_fraction: float = 0.2                  # adversarial: share of each batch left clean
    replay: int = 2048                           # adversarial: past generated backgrounds kept for replay
    adv_bank: float = 0.5                        # adversarial: share of backgrounds drawn from --families' bank
    gen_every: int = 2                           # adversarial: generator step (on the generator rows) every N batches
    resume: bool = False                         # continue from OUT/last.pt (config must match)
    # group-robustness baselines (bgbias.train.group_recipes); group labels come from the build's manifest
    dro_eta: float = 0.01                        # group_dro: step size of the online group weights q
    dro_weight_decay: float = 0.1                # group_dro: the strong L2 the paper needs (plus early stopping)
    jtt_epochs: int = 1                          # jtt: epochs of the identification model
    jtt_up: int = 20                             # jtt: lambda_up, each error repeated this often (paper: 50-100, images)

    def validate(self) -> "TrainConfig":
        if self.recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {self.recipe!r}; valid: {', '.join(RECIPES.names())}.")
        if self.arch not in ARCHS:
            raise ValueError(f"Unknown architecture {self.arch!r}; valid: {', '.join(ARCHS.names())}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}.")
        if self.norm not in NORMS:
            raise ValueError(f"Unknown normalisation {self.norm!r}; valid: {', '.join(NORMS)}.")
        if int(self.min_steps) < 0:
            raise ValueError(f"--min-steps must be >= 0, got {self.min_steps}.")
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
        if self.dro_eta < 0 or self.dro_weight_decay < 0 or self.jtt_epochs < 1 or self.jtt_up < 1:
            raise ValueError(f"--dro-eta and --dro-weight-decay must be >= 0, --jtt-epochs and --jtt-up >= 1; got "
                             f"{self.dro_eta}, {self.dro_weight_decay}, {self.jtt_epochs}, {self.jtt_up}.")
        if not 0.0 <= self.adv_bank <= 1.0 or self.gen_every < 1:
            raise ValueError(f"--adv-bank must be in [0, 1] and --gen-every >= 1, got {self.adv_bank} and "
                             f"{self.gen_every}.")
        if not 0.0 < self.area < 1.0:
            raise ValueError(f"--area must be in (0, 1), got {self.area}.")
        return self
