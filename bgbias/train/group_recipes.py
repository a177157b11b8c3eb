"""The group-robustness baselines, written once against the shared loop's :class:`PhaseHooks`.

Group labels (``"<class>|<background>"`` per sample) come from the build's manifest
(:attr:`TrainData.groups`: the spurious family, or the background's class for mixed variants).

- ``group_dro`` (Sagawa et al. 2020): batches drawn group-balanced (their Algorithm 1 samples the group first),
  from a resample redrawn every epoch (``PhaseHooks.rows_for_epoch``),
  online weights ``q_g <- q_g exp(eta L_g)``, loss ``sum_g q_g L_g``,
  with the strong L2 (``--dro-weight-decay``) and early stopping on validation worst-group accuracy the
  paper finds it needs;
- ``jtt`` (Liu et al. 2021): train an identification model for ``--jtt-epochs``, take its training errors,
  retrain from the same initialisation with each error repeated ``--jtt-up`` times;
- ``dfr`` (Kirichenko et al. 2023): ERM, then the last layer refitted as the paper does: L1 logistic regression on
  the standardised embeddings of the held-out rows (C picked on two halves), averaged over random group-balanced
  subsets, with the rest of the network frozen (BatchNorm statistics included); a convex fit, no loop epochs;
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


def group_balanced_rows(rows: torch.Tensor, gid: torch.Tensor, total: int, generator: torch.Generator) -> torch.Tensor:
    """``total`` rows with every group present in ``rows`` equally often (sizes differ by at most one): each group's
    members in a random order from ``generator``, cycled when the group is small, cut when it is large; sorted.

    Sagawa et al.'s Algorithm 1 samples a group uniformly, then a sample of it; with the training mix a group of 2
    images in 1600 is in one batch of 30 and its weight ``q_g`` barely moves (issue 16).
    """
    g = gid[rows]
    present = torch.unique(g).tolist()
    share, extra = divmod(int(total), len(present))
    keep = []
    for j, k in enumerate(present):
        mine = rows[g == k]
        mine = mine[torch.randperm(len(mine), generator=generator)]
        keep.append(mine.repeat(-(-(share + (j < extra)) // len(mine)))[:share + (j < extra)])
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
        # Algorithm 1 draws groups uniformly: batches from a group-balanced resample of ERM's epoch size, redrawn
        # every epoch (as the paper's sampler is) so that a large group shows other images each epoch
        train_rows = ctx["train_rows"]

        def rows_for_epoch(epoch: int, generator: torch.Generator) -> torch.Tensor:
            return group_balanced_rows(train_rows, gid, len(train_rows), generator)

        return PhaseHooks(rows_for_epoch=rows_for_epoch, loss=GroupDROLoss(gid, len(names), cfg.dro_eta),
                          keep_best=True, optim={"weight_decay": max(cfg.weight_decay, cfg.dro_weight_decay)},
                          info={"groups": len(names), "rows": len(train_rows), "resampled": "every epoch"})

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
        info = {"errors": n_err, "rows": len(rows)}
        if data.groups:   # how well the error set finds the small groups (the paper's premise), for the record
            gid, _ = group_index(cfg, data)
            counts = torch.bincount(gid[ctx["train_rows"]])
            small = counts[gid] < len(ctx["train_rows"]) / int((counts > 0).sum())   # below the mean group size
            err_rows = torch.unique(rows)[torch.bincount(rows)[torch.unique(rows)] > 1] if cfg.jtt_up > 1 else rows[:0]
            info.update(small_group_rows=int(small[ctx["train_rows"]].sum()),
                        errors_in_small_groups=int(small[err_rows].sum()))
        return PhaseHooks(rows=rows, info=info)

    return Recipe(phases=lambda cfg: [("identify", cfg.jtt_epochs), ("upweighted", cfg.epochs)], hooks=hooks)


# ------------------------------------------------------------------------------------------- DFR
def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` in module order."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"DFR retrains the last linear layer, but {type(model).__name__} has none.")
    return heads[-1]


DFR_C = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)   # the paper's grid of inverse L1 strengths (sklearn's C)
DFR_SUBSETS = 10                                  # random group-balanced subsets whose fits are averaged


@torch.no_grad()
def penultimate(model: nn.Module, head: nn.Linear, data: TrainData, ctx: dict) -> torch.Tensor:
    """The head's inputs (the frozen embeddings) for every row of ``data``, eval mode, float64 ``[N, D]``."""
    feats: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().cpu()))
    try:
        model.eval()
        for i in range(0, len(data.labels), 256):
            model(ctx["norm"](data.images[i:i + 256].to(ctx["device"]).float() / 255.0))
    finally:
        hook.remove()
    return torch.cat(feats).double()


def l1_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float,
                iters: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with an L1 penalty, sklearn's objective ``||W||_1 + C sum_i CE_i`` (bias
    unpenalised), by FISTA (proximal gradient, deterministic): ``(W [D, K], b [K])``."""
    n, d = x.shape
    lam = 1.0 / (float(c) * n)                                    # the objective divided by C n
    lip = 0.5 * float(torch.linalg.matrix_norm(torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1), 2)) ** 2 / n
    step = 1.0 / max(lip, 1e-12)
    w = torch.zeros(d, n_classes, dtype=x.dtype)
    b = torch.zeros(n_classes, dtype=x.dtype)
    zw, zb, t = w, b, 1.0
    onehot = F.one_hot(y, n_classes).to(x.dtype)
    for _ in range(iters):
        r = (torch.softmax(x @ zw + zb, 1) - onehot) / n
        u = zw - step * (x.T @ r)
        w_new = u.sign() * (u.abs() - step * lam).clamp_min(0)   # soft threshold: the L1 proximal step
        b_new = zb - step * r.sum(0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        zw = w_new + (t - 1) / t_new * (w_new - w)
        zb = b_new + (t - 1) / t_new * (b_new - b)
        w, b, t = w_new, b_new, t_new
    return w, b


def dfr_fit(x: torch.Tensor, y: torch.Tensor, gid: torch.Tensor, n_classes: int, seed: int,
            subsets: int = DFR_SUBSETS) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """DFR^Val (Kirichenko et al.): standardise the held-out embeddings, pick C on two halves (fit on group-balanced
    subsets of one, worst-group accuracy on the other, ties by mean group accuracy), then average the L1 logistic
    fits over ``subsets`` random group-balanced subsets of all held-out rows. Returns the head's ``weight [K, D]``
    and ``bias [K]`` on the *raw* embeddings (the standardisation folded in) and what was chosen."""
    mu, sd = x.mean(0), x.std(0)
    sd = torch.where(sd > 1e-8, sd, torch.ones_like(sd))          # a dead feature stays 0
    z = (x - mu) / sd
    n = len(y)
    perm = torch.randperm(n, generator=torch_generator(seed, "dfr", "halves"))
    half_a, half_b = perm[: n // 2].sort().values, perm[n // 2:].sort().values

    def averaged(rows: torch.Tensor, c: float, k: int, tag: str) -> tuple[torch.Tensor, torch.Tensor]:
        fits = [l1_logistic(z[r], y[r], n_classes, c) for r in (balanced_rows(rows, gid, seed, "dfr", tag, s)
                                                                  for s in range(k))]
        return torch.stack([w for w, _ in fits]).mean(0), torch.stack([b for _, b in fits]).mean(0)

    def score(w: torch.Tensor, b: torch.Tensor, rows: torch.Tensor) -> tuple[float, float]:
        right = ((z[rows] @ w + b).argmax(1) == y[rows]).double()
        acc = [float(right[gid[rows] == k].mean()) for k in torch.unique(gid[rows])]
        return min(acc), sum(acc) / len(acc)

    scores = {c: score(*averaged(half_a, c, max(1, subsets // 2), "tune"), half_b) for c in DFR_C}
    best = max(DFR_C, key=lambda c: (scores[c], c))                # ties: the weaker penalty
    w, b = averaged(torch.arange(n), best, subsets, "final")
    weight, bias = (w / sd[:, None]).T, b - (mu / sd) @ w
    info = {"c": best, "tune_worst_group": scores[best][0], "nonzero": float((w != 0).double().mean()),
            "subsets": subsets, "rows": len(balanced_rows(torch.arange(n), gid, seed, "dfr", "final", 0))}
    return weight, bias, info


@RECIPES.register("dfr", help="DFR (Kirichenko et al.): retrain the last layer on a group-balanced held-out split")
def _dfr() -> Recipe:
    def hooks(phase, cfg, data, model, ctx):
        if phase != "last_layer":
            return None
        val = ctx.get("val")
        if val is None or len(val.labels) == 0:
            raise ValueError("Recipe 'dfr' retrains the last layer on held-out rows; give --val-fraction > 0 "
                             "(or a build with a val split).")
        head = last_linear(model)
        gid, _ = group_index(cfg, val)
        x = penultimate(model, head, val, ctx)
        weight, bias, info = dfr_fit(x, val.labels, gid, len(data.classes), cfg.seed)
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight))
            head.bias.copy_(bias.to(head.bias))
        info["held_out"] = len(val.labels)
        return PhaseHooks(info=info)

    # the last layer is a convex fit at the phase's start (the rest frozen: BatchNorm statistics included, since no
    # batch passes in train mode); the phase has no loop epochs, the run's final validation scores the refitted head
    return Recipe(phases=lambda cfg: [("erm", cfg.epochs), ("last_layer", 0)], hooks=hooks)


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
