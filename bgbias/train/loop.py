"""Train a classifier that ignores backgrounds: ``bgbias train``'s one loop, read top to bottom.

    bgbias train --recipe baseline   --data mnist:DIR --arch small-cnn --epochs 5 --out runs/base
    bgbias train --recipe bg-augment --data digits --families color,mean,other_sample --out runs/aug
    bgbias train --recipe mixed-rand --data BUILD_DIR --out runs/mr
    bgbias train --recipe adversarial --data mnist:DIR --out runs/adv

The config, the in-memory data and the recipes live in :mod:`bgbias.train.recipes`
(re-exported here). Batches are augmented on the device in [0, 1], then normalised with the
checkpoint's ``preprocess`` (``x/255 -> (x - mean) / std``, what ``bgbias eval`` does).
Each epoch writes ``OUT/last.pt`` (weights + optimiser + augmentation state in
``extra``); ``--resume`` continues from it and ends with the same weights as an
uninterrupted run, because every random draw comes from a generator keyed by
``(seed, phase, epoch, step)``. The end writes ``OUT/model.pt`` and ``OUT/metrics.json``.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bgbias.audit.groups import group_accuracy, group_counts
from bgbias.core.io import write_json
from bgbias.core.record import build_record
from bgbias.core.seeding import derive_seed, torch_generator
from bgbias.models.checkpoint import load_checkpoint, load_state_dict_file, save_checkpoint
from bgbias.models.nets import ARCHS, create_arch
from bgbias.models.load import IMAGENET_MEAN, IMAGENET_STD, normalize
from bgbias.train.config import OPTIMIZERS, RETIRED_FIELDS, SCHEDULES, TrainConfig
from bgbias.train.data import TrainData, is_build_dir, load_data, load_train_val, split_rows
from bgbias.train.recipes import RECIPES, Augment, PhaseHooks, Recipe

# the config, data and recipe names are re-exported: callers import them from here
__all__ = ["OPTIMIZERS", "SCHEDULES", "RECIPES", "Augment", "Recipe", "TrainConfig", "TrainData", "load_data",
           "preprocess_for", "build_model", "make_optimizer", "normalizer", "accuracy", "run_epoch", "train"]



# ---------------------------------------------------------------------------------------------- model
def preprocess_for(cfg: TrainConfig, data: TrainData) -> dict[str, Any]:
    """The checkpoint's ``preprocess``: ImageNet stats for torchvision archs, 0.5/0.5 otherwise."""
    tv = "torchvision" in ARCHS.entry(cfg.arch).tags
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if tv else ((0.5,) * 3, (0.5,) * 3)
    return {"size": list(data.images.shape[-2:]), "mean": list(mean), "std": list(std)}


def arch_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Architecture options saved in the checkpoint: small-cnn's normalisation (``--norm``)."""
    return {"norm": cfg.norm} if cfg.arch == "small-cnn" else {}


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """Seeded init (global RNG forked so the caller's is untouched), then optional ``--pretrained`` weights.

    ``--pretrained FILE`` (a state dict, e.g. torchvision's ``resnet18-*.pth``, or a bgbias checkpoint) is read
    with ``weights_only=True``; every tensor whose name and shape fit is loaded, the rest (the classifier
    head of another class count) keeps its fresh init. What was loaded is in ``model.pretrained_report``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = create_arch(cfg.arch, num_classes, **arch_kwargs(cfg))
    model.pretrained_report = None
    if cfg.pretrained:
        state = {k.removeprefix("module."): v for k, v in load_state_dict_file(cfg.pretrained).items()}
        own = model.state_dict()
        fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if not fits:
            raise ValueError(f"No weights in {cfg.pretrained} fit architecture {cfg.arch!r} (e.g. the file has "
                             f"{next(iter(state), 'nothing')!r}, the model {next(iter(own))!r}).")
        model.load_state_dict(fits, strict=False)
        model.pretrained_report = {"file": str(cfg.pretrained), "loaded": len(fits), "of_model": len(own),
                                   "not_loaded": sorted(k for k in own if k not in fits)[:20]}
    return model


MIN_BATCH = 16


def step_plan(n_train: int, batch_size: int, epochs: int, min_steps: int) -> tuple[int, int]:
    """(batch size, passes over the data per epoch) so a run takes at least ``min_steps`` optimiser steps.

    A small set first gets smaller batches (down to 16: the same images per epoch, more steps), then
    several passes per epoch. 254 images at batch 128 for 5 epochs were 10 steps: too few to learn.
    """
    bs = max(1, min(int(batch_size), n_train))
    if min_steps and epochs * math.ceil(n_train / bs) < min_steps:
        want = math.ceil(min_steps / max(epochs, 1))                   # steps per epoch
        bs = max(min(int(batch_size), MIN_BATCH), min(bs, math.ceil(n_train / want)))
    steps = epochs * math.ceil(n_train / bs)
    passes = max(1, math.ceil(min_steps / steps)) if min_steps and steps else 1
    return bs, passes


def make_optimizer(cfg: TrainConfig, model: nn.Module, total_steps: int):
    """Optimiser plus a per-step LR schedule (cosine to 0, or /10 at 50% and 75%)."""
    params = model.parameters()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        t = min(step / max(total_steps, 1), 1.0)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if cfg.schedule == "step":
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def normalizer(preprocess: dict[str, Any], device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The checkpoint's ``preprocess`` normalisation (:func:`bgbias.models.load.normalize`, what audits apply).

    ``device`` is kept for callers; the batch's own device is used."""
    mean, std = tuple(preprocess["mean"]), tuple(preprocess["std"])
    return lambda x: normalize(x, mean, std)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: Callable, device: torch.device,
             batch_size: int = 256) -> float:
    """Top-1 accuracy on uint8 images (eval mode, no augmentation)."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = images[i:i + batch_size].to(device).float() / 255.0
        correct += int((model(norm(x)).argmax(1).cpu() == labels[i:i + batch_size]).sum())
    return correct / max(len(labels), 1)


def val_scores(model: nn.Module, val: TrainData, norm: Callable, device: torch.device,
               batch_size: int = 256) -> dict[str, float]:
    """``val_accuracy`` and, when the data has groups, ``val_worst_group_accuracy`` (over every group present:
    what early stopping selects on)."""
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(val.labels), batch_size):
            x = val.images[i:i + batch_size].to(device).float() / 255.0
            preds.append(model(norm(x)).argmax(1).cpu())
    correct = (torch.cat(preds) == val.labels).numpy() if preds else np.zeros(0, bool)
    out = {"val_accuracy": float(correct.mean()) if len(correct) else 0.0}
    if val.groups and len(correct):
        out["val_worst_group_accuracy"] = group_accuracy(val.groups, correct, min_count=1)["worst_group_accuracy"]
    return out


# ----------------------------------------------------------------------------------------------- loop
def run_epoch(model, opt, sched, data: TrainData, rows: torch.Tensor, cfg: TrainConfig, phase: str, epoch: int,
              augment: Augment | None, norm: Callable, device: torch.device, progress: bool,
              batch_size: int | None = None, passes: int = 1, hooks: PhaseHooks | None = None) -> dict[str, float]:
    """``passes`` passes over ``rows``, each in a seeded order; returns mean loss and train accuracy (on augmented
    inputs).

    ``hooks`` (group recipes): its ``loss`` replaces the mean cross-entropy, ``train_mode`` runs after
    ``model.train()``."""
    from tqdm.auto import tqdm

    hooks = hooks or PhaseHooks()

    def train_mode() -> None:
        model.train()
        if hooks.train_mode is not None:
            hooks.train_mode(model)

    train_mode()
    bs = batch_size or cfg.batch_size
    batches = []
    for k in range(passes):
        key = (phase, epoch) if k == 0 else (phase, epoch, "pass", k)
        order = rows[torch.randperm(len(rows), generator=torch_generator(cfg.seed, "shuffle", *key))]
        batches += [order[i:i + bs] for i in range(0, len(order), bs)]
    loss_sum, correct, seen, t0 = 0.0, 0, 0, time.time()
    bar = tqdm(batches, desc=f"{phase} {epoch + 1}", leave=False, disable=not progress, dynamic_ncols=True)
    for step, idx in enumerate(bar):
        x = data.images[idx].to(device).float() / 255.0
        y = data.labels[idx].to(device)
        if augment is not None:
            m = None if data.masks is None else data.masks[idx].to(device).unsqueeze(1).float() / 255.0
            x = augment(x, m, y, torch_generator(cfg.seed, "augment", phase, epoch, step), model)
            train_mode()
        logits = model(norm(x))
        loss = F.cross_entropy(logits, y) if hooks.loss is None else hooks.loss(logits, y, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return {"loss": loss_sum / seen, "train_accuracy": correct / seen, "seconds": round(time.time() - t0, 2)}


def epoch_rows(hooks: PhaseHooks, cfg: TrainConfig, phase: str, epoch: int, rows: torch.Tensor) -> torch.Tensor:
    """The rows an epoch trains on: the phase's ``rows_for_epoch`` draw (seeded by ``(seed, phase, epoch)``, so a
    resumed run redraws the same), else its fixed ``rows``, else ``rows`` as given (epoch 0: the training rows)."""
    if hooks.rows_for_epoch is None:
        return rows if hooks.rows is None else hooks.rows
    drawn = hooks.rows_for_epoch(epoch, torch_generator(cfg.seed, "rows", phase, epoch))
    if epoch and len(drawn) != len(rows):
        raise ValueError(f"Recipe {cfg.recipe!r} drew {len(drawn)} rows for {phase} epoch {epoch + 1} but {len(rows)} "
                         "before; rows_for_epoch must give every epoch as many rows (the LR schedule is fixed).")
    return drawn


RUN_FILES = ("model.pt", "last.pt", "metrics.json")


def train(cfg: TrainConfig, progress: bool = True, stop_after: int | None = None,
          data: TrainData | None = None) -> dict[str, Any]:
    """Run a recipe end to end; returns the metrics dict (also written to ``OUT/metrics.json``).

    ``data``: already-loaded data to use instead of reading ``cfg.data`` (benchmarks use a split of a source).
    ``stop_after``: stop after this many epochs of this call (all phases counted), leaving ``last.pt``
    to ``--resume`` from (used by tests and for time-sliced runs).
    The run folder is locked for the run, and one holding a run is refused unless ``resume``.
    """
    from bgbias.core.lock import FolderLock

    cfg.validate()
    with FolderLock(cfg.out, "bgbias train"):
        held = [f for f in RUN_FILES if (Path(cfg.out) / f).exists()]
        if held and not cfg.resume:
            raise ValueError(f"Run folder {cfg.out} already holds a training run ({', '.join(held)}); "
                             "pass --resume to continue it, or choose a new --out.")
        return _train(cfg, progress, stop_after, data)


def _train(cfg: TrainConfig, progress: bool, stop_after: int | None, data: TrainData | None) -> dict[str, Any]:
    recipe = RECIPES.create(cfg.recipe)
    device = torch.device(cfg.device)
    out = Path(cfg.out)
    if data is None:
        variant = recipe.variant if is_build_dir(cfg.data) else "original"
        data, val, origin = load_train_val(cfg.data, variant, cfg.size, cfg.val_fraction, cfg.seed)
    else:
        (data, val), origin = split_rows(data, cfg.val_fraction, cfg.seed), {"train": "given", "val": "val_fraction"}
    data = dataclasses.replace(data)  # recipes may swap in learned masks; the caller's object stays as given
    train_rows = torch.arange(len(data.labels))
    n_val = 0 if val is None else len(val.labels)
    preprocess = preprocess_for(cfg, data)
    norm = normalizer(preprocess, device)
    model = build_model(cfg, len(data.classes)).to(device)
    config = dataclasses.asdict(cfg)
    meta = {"arch": cfg.arch, "arch_kwargs": arch_kwargs(cfg), "classes": data.classes, "preprocess": preprocess,
            "recipe": cfg.recipe, "seed": cfg.seed, "config": config, "families_seen": recipe.seen(cfg),
            "epoch": 0, "train_data": str(cfg.data), "train_ids": list(data.ids)}
    if data.groups:   # the training set's group shares: eval weights group accuracies by them
        meta["group_counts"] = group_counts(data.groups)

    # resume: weights, history, and where we were (phase index, epoch within phase)
    history: list[dict] = []
    start_phase, start_epoch, extra = 0, 0, {}
    last = out / "last.pt"
    if cfg.resume and last.is_file():
        ckpt = load_checkpoint(last)
        free = ("device", "out", "resume", *RETIRED_FIELDS)
        old = {k: v for k, v in ckpt["meta"]["config"].items() if k not in free}
        new = {k: v for k, v in config.items() if k not in free}
        if old != new:
            diff = sorted(k for k in new if old.get(k) != new[k])
            raise ValueError(f"Cannot resume {last}: the config differs in {', '.join(diff)}; use a new --out.")
        model.load_state_dict(ckpt["state_dict"])
        extra = ckpt["extra"]
        history = list(extra.get("history", []))
        start_phase, start_epoch = int(extra["phase_index"]), int(extra["phase_epoch"])

    ctx: dict[str, Any] = {"norm": norm, "device": device, "train_rows": train_rows, "val": val,
                           "extra": extra, "progress": progress,
                           "init_state": lambda: build_model(cfg, len(data.classes)).state_dict()}
    phase_info: dict[str, dict] = dict(extra.get("phase_info", {}))
    done_now, plans = 0, {}
    for pi, (phase, epochs) in enumerate(recipe.phases(cfg)):
        bs, passes = plans[phase] = step_plan(len(train_rows), cfg.batch_size, epochs, cfg.min_steps)
        if pi < start_phase:
            continue
        first = start_epoch if pi == start_phase else 0
        saved = extra.get("hooks") if first else None
        ctx["phase_state"] = saved
        augment = recipe.augment(phase, cfg, data, model, ctx)
        hooks = recipe.hooks(phase, cfg, data, model, ctx) or PhaseHooks()
        rows = epoch_rows(hooks, cfg, phase, 0, train_rows)
        phase_data = data if hooks.data is None else hooks.data
        best = None
        if saved is not None:
            if hasattr(hooks.loss, "load_state_dict") and "loss" in saved:
                hooks.loss.load_state_dict(saved["loss"])
            best = saved.get("best")
        if hooks.info:
            phase_info[phase] = dict(hooks.info)
        bs, passes = plans[phase] = step_plan(len(rows), cfg.batch_size, epochs, cfg.min_steps)
        opt, sched = make_optimizer(dataclasses.replace(cfg, **hooks.optim), model,
                                    epochs * passes * math.ceil(len(rows) / bs))
        if first and "optimizer" in extra:
            opt.load_state_dict(extra["optimizer"])
            sched.load_state_dict(extra["scheduler"])
        for epoch in range(first, epochs):
            rows = epoch_rows(hooks, cfg, phase, epoch, rows)
            stats = run_epoch(model, opt, sched, phase_data, rows, cfg, phase, epoch, augment, norm, device,
                              progress, bs, passes, hooks)
            row = {"epoch": len(history) + 1, "phase": phase, **stats}
            if n_val:
                row.update(val_scores(model, val, norm, device))
            history.append(row)
            if progress:
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            if hooks.keep_best and n_val:   # early stopping: the best validation worst-group (else overall) epoch
                score = [row.get("val_worst_group_accuracy", row["val_accuracy"]), row["val_accuracy"]]  # ties: overall
                if best is None or score > best["score"]:
                    best = {"score": score, "epoch": row["epoch"],
                            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            state = {"phase_index": pi, "phase_epoch": epoch + 1, "history": history, "phase_info": phase_info,
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "hooks": {"rows": rows, "info": hooks.info, "best": best,
                               **({"loss": hooks.loss.state_dict()} if hasattr(hooks.loss, "state_dict") else {})}}
            if hasattr(augment, "state_dict"):
                state["augment"] = augment.state_dict()
            if epoch + 1 == epochs:  # next phase starts fresh
                if best is not None:
                    model.load_state_dict(best["state"])
                    phase_info.setdefault(phase, {})["best_epoch"] = best["epoch"]
                state = {"phase_index": pi + 1, "phase_epoch": 0, "history": history, "phase_info": phase_info,
                         **({"augment": state["augment"]} if "augment" in state else {})}
            save_checkpoint(last, model.state_dict(), {**meta, "epoch": len(history)}, state)
            done_now += 1
            if stop_after is not None and done_now >= stop_after:
                return {"kind": "bgbias-train/1", "stopped": True, "history": history}
        extra = {}

    final = {"train_accuracy": history[-1]["train_accuracy"] if history else None}
    reference = None
    if n_val:
        final.update(val_scores(model, val, norm, device))
        reference = reference_rates(val.labels, data.classes)
        if final["val_accuracy"] <= reference["majority_rate"] + 1e-12:
            warnings.warn(
                f"Validation accuracy {100 * final['val_accuracy']:.1f}% is not above the majority-class rate "
                f"{100 * reference['majority_rate']:.1f}% (always predicting {reference['majority_class']!r}; "
                f"chance is {100 * reference['chance_rate']:.1f}%): the model learned nothing beyond the class "
                "balance. Train longer (--epochs), fine-tune pretrained weights (--pretrained FILE with a torchvision "
                "--arch), or add images.", stacklevel=2)
    metrics = {"kind": "bgbias-train/1", "recipe": cfg.recipe, "arch": cfg.arch, "classes": data.classes,
               "families_seen": meta["families_seen"], "config": config, "history": history, "final": final,
               "n_train": len(train_rows), "n_val": n_val, "data_splits": origin, "reference": reference,
               "steps": {ph: {"batch_size": b, "passes_per_epoch": k} for ph, (b, k) in plans.items()},
               "pretrained": model.pretrained_report, "skipped": data.skipped}
    if phase_info:
        metrics["phases"] = phase_info
    if data.groups:
        metrics["group_counts"] = meta["group_counts"]
    save_checkpoint(out / "model.pt", model.state_dict(), {**meta, "epoch": len(history)})
    metrics["record"] = build_record([cfg.pretrained] if cfg.pretrained else [], model, device, cfg.seed, cfg.data,
                                     preprocess)
    write_json(out / "metrics.json", metrics)
    return metrics


def reference_rates(labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Chance (1/C) and the majority-class rate of ``labels``: what an accuracy must beat to mean anything."""
    counts = torch.bincount(labels, minlength=len(classes))
    top = int(counts.argmax())
    return {"chance_rate": 1.0 / max(len(classes), 1), "majority_rate": float(counts[top]) / max(int(counts.sum()), 1),
            "majority_class": classes[top], "n": int(counts.sum())}
