"""``bgbias train --task detection``: fine-tune a torchvision detector, plainly or with background augmentation.

Report 000 Table 6's experiment: the same detector trained on the original images
(``baseline``) or with :class:`~bgbias.detect.augment.DetectionBackgroundSwap` (``bg-augment``:
the background behind all instances replaced with probability ``p``, boxes unchanged).
Data: a detection build (``OUT`` of ``bgbias build --task detection``; its ``original``
variant of ``split``) or any detection source spec (``digits-det:600``, ``coco:...``).
Writes ``OUT/model.pt`` (a bgbias checkpoint with ``meta.task = "detection"``, loadable by
``eval-detect --model OUT/model.pt``) and ``OUT/metrics.json``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from bgbias.core.io import write_json
from bgbias.core.sample import BadSample
from bgbias.core.seeding import derive_seed
from bgbias.core.version import __version__
from bgbias.detect.augment import DetectionBackgroundSwap
from bgbias.detect.data import DetSample, DetSource, create_det_source
from bgbias.detect.models import build_detector
from bgbias.models.checkpoint import save_checkpoint, safe_torch_load

DET_RECIPES = ("baseline", "bg-augment")


@dataclass(frozen=True)
class DetTrainConfig:
    """Everything that decides the trained weights (saved in the checkpoint and metrics.json)."""

    data: str
    out: str
    recipe: str = "baseline"
    arch: str = "tiny_centernet"
    arch_kwargs: dict = field(default_factory=dict)
    pretrained: str | None = None
    split: str = "train"
    classes: str | None = None
    epochs: int = 8
    batch_size: int = 8
    lr: float = 0.02
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    max_steps: int | None = None
    families: tuple[str, ...] = ("color", "texture", "other_sample")
    p: float = 0.5
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.recipe not in DET_RECIPES:
            raise ValueError(f"Unknown detection recipe {self.recipe!r}; valid: {', '.join(DET_RECIPES)}.")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; valid: sgd, adamw.")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {self.epochs}, "
                             f"{self.batch_size}, {self.lr}.")


def training_source(data: str, split: str, classes: str | None = None) -> DetSource:
    """A build folder's ``original/<split>`` (masks from ``fg_mask``), or a detection source spec."""
    root = Path(data).expanduser()
    if (root / "manifest.json").is_file():
        from bgbias.detect.build import open_build

        return open_build(root, "original", split)
    return create_det_source(data, classes=classes)


def _target(s: DetSample) -> dict[str, Any]:
    anns = [a for a in s.annotations if not a.get("iscrowd")]   # crowds are "ignore" regions, not objects
    b = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                      for a in anns], dtype=torch.float32).reshape(-1, 4)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    h, w = s.size
    return {"boxes": tv_tensors.BoundingBoxes(b[keep], format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)[keep],
            "masks": tv_tensors.Mask(torch.from_numpy(s.mask)[None])}


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _load_pretrained(model: torch.nn.Module, path: str) -> dict[str, int]:
    """Load a whole-detector or backbone state dict; what matched is counted (nothing matched is an error)."""
    obj = safe_torch_load(path)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ValueError(f"Pretrained file {path} holds no state dict.")
    for target in (model, getattr(getattr(model, "backbone", None), "body", None), getattr(model, "backbone", None)):
        if target is None:
            continue
        own = target.state_dict()
        fit = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        if fit:
            target.load_state_dict(fit, strict=False)
            return {"loaded": len(fit), "of": len(own)}
    raise ValueError(f"No tensor of {path} fits the detector (neither whole-model nor backbone keys).")


def train_detector(config: DetTrainConfig, progress: bool = False) -> dict[str, Any]:
    """Train; returns the metrics written to ``OUT/metrics.json``."""
    src = training_source(config.data, config.split, config.classes)
    idx = [k for k, sp in enumerate(src.splits()) if sp == config.split]
    if not idx:
        raise ValueError(f"{config.data} has no images in split {config.split!r}.")
    num_classes = max(c["id"] for c in src.categories) + 1
    torch.manual_seed(derive_seed(config.seed, "detect-init"))
    model = build_detector(config.arch, num_classes, **config.arch_kwargs)
    pretrained = _load_pretrained(model, config.pretrained) if config.pretrained else None
    device = torch.device(config.device)
    model.to(device).train()
    aug = None
    if config.recipe == "bg-augment":
        aug = DetectionBackgroundSwap(config.families, p=config.p, seed=config.seed)
        if any(f.startswith("mean") for f in config.families):
            aug.fit(src.load(k).as_sample() for k in idx[:256])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
           if config.optimizer == "sgd" else torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay))
    steps_per_epoch = math.ceil(len(idx) / config.batch_size)
    total = min(config.epochs * steps_per_epoch, config.max_steps or 10**12)
    warmup = min(100, max(1, total // 10))
    g = torch.Generator().manual_seed(derive_seed(config.seed, "detect-order"))
    skipped: dict[str, str] = {}
    history, step, t0 = [], 0, time.time()
    for epoch in range(config.epochs):
        order = [idx[int(k)] for k in torch.randperm(len(idx), generator=g)]
        losses = []
        for b0 in range(0, len(order), config.batch_size):
            if step >= total:
                break
            images, targets = [], []
            for k in order[b0:b0 + config.batch_size]:
                try:
                    s = src.load(k)
                except BadSample as e:
                    skipped[src.ids()[k]] = e.reason
                    continue
                img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1))
                tgt = _target(s)
                if aug is not None:
                    img, tgt = aug(img, tgt)
                images.append(img.float().div(255.0).to(device))
                targets.append({"boxes": tgt["boxes"].as_subclass(torch.Tensor).to(device),
                                "labels": tgt["labels"].to(device)})
            if not images:
                continue
            for group in opt.param_groups:
                group["lr"] = config.lr * _schedule(step, total, warmup)
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise ValueError(f"Training diverged at step {step} (loss {float(loss)}); lower --lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None, "steps": step})
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs}  loss {history[-1]['loss']:.4f}  ({time.time() - t0:.0f} s)")
        if step >= total:
            break
    if step == 0:
        raise ValueError(f"No training step ran: every image of {config.data} was skipped ({len(skipped)}).")
    out = Path(config.out)
    meta = {"task": "detection", "arch": config.arch, "arch_kwargs": dict(config.arch_kwargs),
            "num_classes": num_classes, "categories": src.categories, "recipe": config.recipe,
            "families_seen": aug.seen if aug is not None else [], "config": _jsonable(asdict(config)),
            "seed": config.seed, "steps": step, "version": __version__}
    save_checkpoint(out / "model.pt", model.state_dict(), meta)
    metrics = {"kind": "bgbias-train-detect/1", "meta": meta, "history": history, "pretrained": pretrained,
               "n_train_images": len(idx), "skipped": skipped, "train_seconds": round(time.time() - t0, 2),
               "final": {"loss": history[-1]["loss"]}}
    write_json(out / "metrics.json", metrics)
    return metrics


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
