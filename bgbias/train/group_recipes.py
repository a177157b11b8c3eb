"""The group-robustness baselines, written once against the shared loop's :class:`PhaseHooks`.

Group labels (``"<class>|<background>"`` per sample) come from the build's manifest
(:attr:`TrainData.groups`: the spurious family, or the background's class for mixed variants).

- ``group_dro`` (Sagawa et al. 2020): online weights ``q_g <- q_g exp(eta L_g)``, loss ``sum_g q_g L_g``,
  with the strong L2 (``--dro-weight-decay``) and early stopping on validation worst-group accuracy the
  paper finds it needs;
- ``jtt`` (Liu et al. 2021): train an identification model for ``--jtt-epochs``, take its training errors,
  retrain from the same initialisation with each error repeated ``--jtt-up`` times;
- ``dfr`` (Kirichenko et al. 2023): ERM, then retrain only the last layer (fresh) on a group-balanced
  subsample of the held-out rows, with the rest of the network frozen (BatchNorm statistics included);
- ``reweight``: each sample's loss weighted by 1 / its group's training count;
- ``subsample``: every group cut down to the smallest group's training count (SUBG), passed over
  repeatedly so that an epoch has as many steps as ERM's.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bgbias.core.seeding import torch_generator
from bgbias.train.config import RECIPES, TrainConfig
from bgbias.train.data import TrainData
from bgbias.train.recipes import PhaseHooks, Recipe


def group_index(cfg: TrainConfig, data: TrainData) -> tuple[torch.Tensor, list[str]]:
    """Per-sample group ids ``[N]`` and the group names (sorted); one clear sentence when the data has none."""
    if not data.groups:
        raise ValueError(f"Recipe {cfg.recipe!r} needs group labels (class x background), but {cfg.data!r} records "
                         "none; train on a spurious build (bgbias build SOURCE --spurious RHO) or a build's "
                         "mixed variants.")
    names = sorted(set(data.groups))
    pos = {g: k for k, g in enumerate(names)}
    return torch.tensor([pos[g] for g in data.groups], dtype=torch.long), names


def balanced_rows(rows: torch.Tensor, gid: torch.Tensor, seed: int, *tag: Any) -> torch.Tensor:
    """Every group present in ``rows`` cut to the smallest one's count (seeded choice), sorted."""
    g = gid[rows]
    present = torch.unique(g)
    n = int(min((g == k).sum() for k in present))
    keep = []
    for k in present.tolist():
        mine = rows[g == k]
        keep.append(mine[torch.randperm(len(mine), generator=torch_generator(seed, "balance", k, *tag))[:n]])
    return torch.cat(keep).sort().values


# ------------------------------------------------------------------------------------------- group DRO
class GroupDROLoss:
    """Online group DRO (Sagawa et al., Algorithm 1): exponentiated-gradient weights over groups."""

    def __init__(self, gid: torch.Tensor, n_groups: int, eta: float):
        self.gid, self.eta = gid, float(eta)
        self.q = torch.full((n_groups,), 1.0 / n_groups)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        g = self.gid[rows].to(ce.device)
        n = len(self.q)
        counts = torch.bincount(g, minlength=n).float()
        group_loss = torch.zeros(n, device=ce.device).index_add(0, g, ce) / counts.clamp_min(1)
        q = self.q.to(ce.device) * torch.exp(self.eta * group_loss.detach())
        self.q = (q / q.sum()).cpu()
        return group_loss @ self.q.to(ce.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"q": self.q.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.q = state["q"].clone()


@RECIPES.register("group_dro", help="GroupDRO (Sagawa et al.): online group weights, strong L2, early stopping")
def _group_dro() -> Recipe:
    def hooks(phase, cfg, data, model, ctx):
        gid, names = group_index(cfg, data)
        return PhaseHooks(loss=GroupDROLoss(gid, len(names), cfg.dro_eta), keep_best=True,
                          optim={"weight_decay": max(cfg.weight_decay, cfg.dro_weight_decay)},
                          info={"groups": len(names)})

    return Recipe(hooks=hooks)


# ------------------------------------------------------------------------------------------- JTT
@torch.no_grad()
def _errors(model: nn.Module, data: TrainData, rows: torch.Tensor, ctx: dict) -> torch.Tensor:
    model.eval()
    wrong = []
    for i in range(0, len(rows), 256):
        r = rows[i:i + 256]
        x = data.images[r].to(ctx["device"]).float() / 255.0
        wrong.append(model(ctx["norm"](x)).argmax(1).cpu() != data.labels[r])
    return rows[torch.cat(wrong)] if wrong else rows[:0]


@RECIPES.register("jtt", help="JTT (Liu et al.): train, find the errors, upweight them, retrain")
def _jtt() -> Recipe:
    def hooks(phase, cfg, data, model, ctx):
        if phase != "upweighted":
            return None
        saved = ctx.get("phase_state")
        if saved is not None:                    # resuming inside the phase: the error set is in last.pt
            rows = saved["rows"]
            n_err = int(saved["info"]["errors"])
        else:
            err = _errors(model, data, ctx["train_rows"], ctx)
            n_err = len(err)
            rows = torch.cat([ctx["train_rows"]] + [err] * (cfg.jtt_up - 1)).sort().values
            model.load_state_dict(ctx["init_state"]())      # retrain from the same initialisation
        return PhaseHooks(rows=rows, info={"errors": n_err, "rows": len(rows)})

    return Recipe(phases=lambda cfg: [("identify", cfg.jtt_epochs), ("upweighted", cfg.epochs)], hooks=hooks)


# ------------------------------------------------------------------------------------------- DFR
def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` in module order."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"DFR retrains the last linear layer, but {type(model).__name__} has none.")
    return heads[-1]


@RECIPES.register("dfr", help="DFR (Kirichenko et al.): retrain the last layer on a group-balanced held-out split")
def _dfr() -> Recipe:
    def hooks(phase, cfg, data, model, ctx):
        if phase != "last_layer":
            return None
        val = ctx.get("val")
        if val is None or len(val.labels) == 0:
            raise ValueError("Recipe 'dfr' retrains the last layer on held-out rows; give --val-fraction > 0 "
                             "(or a build with a val split).")
        saved = ctx.get("phase_state")
        head = last_linear(model)
        if saved is not None:
            rows = saved["rows"]
        else:
            gid, _ = group_index(cfg, val)
            rows = balanced_rows(torch.arange(len(val.labels)), gid, cfg.seed, "dfr")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                head.reset_parameters()
            # fitted to convergence as in the paper: an epoch has as many steps as an ERM epoch (rows repeated)
            rows = rows.repeat(max(1, len(ctx["train_rows"]) // max(len(rows), 1)))
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)

        def train_mode(m: nn.Module) -> None:
            m.eval()                              # frozen features: BatchNorm keeps its ERM statistics

        return PhaseHooks(rows=rows, data=val, train_mode=train_mode,
                          info={"rows": len(torch.unique(rows)), "held_out": len(val.labels), "steps_rows": len(rows)})

    return Recipe(phases=lambda cfg: [("erm", cfg.epochs), ("last_layer", cfg.dfr_epochs)], hooks=hooks)


# ------------------------------------------------------------------------------------------- balancing
class WeightedLoss:
    """Cross-entropy with per-sample weights, normalised by the batch's total weight."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights

    def __call__(self, logits, y, rows):
        w = self.weights[rows].to(logits.device)
        return (w * F.cross_entropy(logits, y, reduction="none")).sum() / w.sum()


@RECIPES.register("reweight", help="group balancing: each loss weighted by 1 / its group's training count")
def _reweight() -> Recipe:
    def hooks(phase, cfg, data, model, ctx):
        gid, names = group_index(cfg, data)
        counts = torch.bincount(gid[ctx["train_rows"]], minlength=len(names)).float()
        return PhaseHooks(loss=WeightedLoss(1.0 / counts.clamp_min(1)[gid]), info={"groups": int((counts > 0).sum())})

    return Recipe(hooks=hooks)


@RECIPES.register("subsample", help="group balancing: every group cut to the smallest group's count")
def _subsample() -> Recipe:
    def hooks(phase, cfg, data, model, ctx):
        gid, _ = group_index(cfg, data)
        rows = balanced_rows(ctx["train_rows"], gid, cfg.seed, "subsample")
        # as many steps per epoch as ERM: the (small) balanced subset is passed over repeatedly
        reps = max(1, len(ctx["train_rows"]) // max(len(rows), 1))
        return PhaseHooks(rows=rows.repeat(reps), info={"rows": len(rows), "passes_per_epoch": reps})

    return Recipe(hooks=hooks)
