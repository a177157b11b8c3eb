"""What every audit shares: config, model + preprocessing + label map, batched prediction, bootstrap, the split
read (``val`` by default) and the check that it holds no training image of the model."""
from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bgbias.core.io import read_image, read_mask
from bgbias.core.layout import (
    MASK_DIR,
    Item,
    find_mask,
    list_classes,
    list_items,
    list_variant_dirs,
    require_split,
)
from bgbias.core.sample import BadSample
from bgbias.models.labelmap import LabelMap, resolve_label_map
from bgbias.models.load import (
    LoadedModel,
    Preprocess,
    load_model,
    make_preprocess,
    resolve_device,
)


@dataclass(frozen=True)
class AuditConfig:
    """The model and data settings every audit run has (eval, challenge, saliency); each adds its own."""

    model: str
    data: str
    weights: str | None = None
    label_map: str | None = None          # None = identity
    batch_size: int = 64
    workers: int = 0
    device: str | None = None             # None = cuda when available
    preprocess: str | None = None         # None = checkpoint meta, torchvision: imagenet, else none
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, ...] | None = None
    trust: bool = False
    download_weights: bool = False        # timm / hf / clip: fetch pretrained weights (offline by default)
    prompts: str | None = None            # clip: prompt templates file (default: the ImageNet templates)
    seed: int = 0
    progress: bool = True
    split: str = "val"                    # which split of the layout to read


@dataclass
class Audit:
    """A loaded model ready to score images of one dataset (shared by eval, challenge and saliency)."""

    model: LoadedModel
    preprocess: Preprocess
    label_map: LabelMap
    device: torch.device
    classes: list[str]
    checked: bool = False
    amp: bool = False             # mixed precision: float16 autocast on GPU, bfloat16 on CPU
    channels_last: bool = False   # channels-last inputs (set on GPU only: faster convolutions, same fp32 maths)

    @property
    def amp_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device.type == "cpu" else torch.float16

    def logits(self, x: torch.Tensor, fp32: bool = False) -> torch.Tensor:
        """Already-preprocessed ``[N, 3, H, W]`` on the device -> float32 ``[N, K]``; checks K once against the map.

        With ``amp`` the forward runs under autocast unless ``fp32`` (the re-check of amp's answers)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp and not fp32
               else contextlib.nullcontext())
        with ctx:
            out = self.model.logits(x)
        out = out.float()
        if not self.checked:
            self.label_map.check(out.shape[1], len(self.classes))
            self.checked = True
        return out

    def predict(self, images: torch.Tensor, fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw uint8 ``[N, 3, H, W]`` -> (dataset predictions ``[N]`` int64 with -1 outside the map, confidence)."""
        logits = self.logits(self.preprocess(images.to(self.device, non_blocking=True)), fp32)
        conf = logits.softmax(-1).max(-1).values
        return self.label_map.predict(logits), conf


def open_audit(cfg: AuditConfig, loaded: LoadedModel | None = None, amp: bool = False,
               channels_last: bool = False) -> Audit:
    """Check the IN-9 layout, load the model (or use ``loaded``), pick preprocessing (explicit > checkpoint
    meta > per-kind default) and the label map: the setup eval, challenge and saliency share.

    ``amp`` turns on mixed precision; ``channels_last`` the channels-last format, on a GPU only."""
    data = Path(cfg.data)
    if not data.is_dir():
        raise ValueError(f"Data folder {data} does not exist; expected the IN-9 layout <variant>/val/<NN_class>/.")
    if not list_variant_dirs(data):
        raise ValueError(f"{data} has no variant folders (<variant>/<split>/<NN_class>/); is it a bgbias build output?")
    present = list_variant_dirs(data, cfg.split)
    if not present:
        require_split(data, cfg.split)
    classes = list_classes(data, "original" if "original" in present else present[0])
    lm = loaded or load_model(cfg.model, weights=cfg.weights, trust=cfg.trust, download=cfg.download_weights,
                              prompts=cfg.prompts, class_names=classes)
    pp = make_preprocess(cfg.preprocess, cfg.mean, cfg.std, cfg.size, default=lm.preprocess)
    dev = resolve_device(cfg.device)
    lm.to(dev)
    label_map, note = resolve_label_map(cfg.label_map, classes, lm.classes, lm.num_outputs)
    if note:
        print(note, file=sys.stderr)
    cl = channels_last and dev.type == "cuda"
    if cl:
        lm.module.to(memory_format=torch.channels_last)
    return Audit(lm, pp, label_map, dev, classes, amp=amp, channels_last=cl)


def chw(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> uint8 ``[3, H, W]`` (own, writable memory)."""
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Paths -> (uint8 ``[3, H, W]`` tensor or None, index, reason); decoding happens in the workers."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return chw(read_image(self.paths[i])), i, ""
        except BadSample as e:
            return None, i, e.reason


def collate_by_size(batch):
    """Group a batch by image size (models may be fully convolutional); bad images go to a separate list."""
    groups: dict[tuple[int, int], list] = {}
    bad = []
    for img, i, reason in batch:
        if img is None:
            bad.append((i, reason))
        else:
            groups.setdefault(tuple(img.shape[-2:]), []).append((img, i))
    return [(torch.stack([g[0] for g in v]), torch.tensor([g[1] for g in v])) for v in groups.values()], bad


def predict_paths(audit: Audit, paths: Sequence[Path], batch_size: int = 64, workers: int = 0,
                  progress: bool = False, desc: str = "", fp32: bool = False,
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Predict every file: (preds int64 [N] (-1 outside map, -2 skipped), confidence float32 [N], bad).

    ``fp32`` predicts in full precision even when the audit runs mixed precision."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}.")
    preds = np.full(len(paths), -2, dtype=np.int64)
    conf = np.zeros(len(paths), dtype=np.float32)
    bad: list[tuple[int, str]] = []
    loader = DataLoader(ImageFiles(paths), batch_size=batch_size, num_workers=workers, collate_fn=collate_by_size)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for groups, b in loader:
            bad.extend(b)
            for images, idx in groups:
                p, c = audit.predict(images, fp32)
                preds[idx.numpy()] = p.cpu().numpy()
                conf[idx.numpy()] = c.cpu().numpy()
            bar.update(sum(len(g[1]) for g in groups) + len(b))
    return preds, conf, bad


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = 1000) -> list[float] | None:
    """Percentile 95% interval of the mean of ``values`` over ``n_boot`` resamples (None when empty)."""
    if len(values) == 0:
        return None
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return [float(lo), float(hi)]


def foreground_items(data: Path, split: str = "val") -> tuple[list[Item], list[Path]]:
    """Original images of ``split`` with their ``fg_mask`` files; names must match (one clear error if they don't)."""
    items = list_items(data, "original", split)
    masks = [find_mask(data, it) for it in items]
    missing = [it for it, m in zip(items, masks) if not m.is_file()]
    if missing:
        ex = missing[0]
        raise ValueError(f"{len(missing)} of {len(items)} images in {data}/original/{split} have no mask in "
                         f"{MASK_DIR}/{split} (e.g. {ex.path.parent.name}/{ex.id}.npy); image and mask names must match.")
    return items, masks


def overlap_with_training(audit: Audit, ids: Iterable[str], split: str) -> int | None:
    """How many evaluated ids the model was trained on (its checkpoint's ``train_ids``); None when unknown.

    Warns when any: those images score what the model memorised, not what it learned.
    """
    train_ids = audit.model.meta.get("train_ids") if audit.model.meta else None
    if train_ids is None:
        return None
    ids = set(ids)
    n = len(ids & set(train_ids))
    if n:
        warnings.warn(f"{n} of the {len(ids)} images evaluated (split {split!r}) were in the model's training set; "
                      "their accuracy measures memory, not generalisation. Evaluate the 'val' split of a build made "
                      "with --holdout, or a build of other images.", stacklevel=2)
    return n


class ForegroundFiles(Dataset):
    """(image uint8 ``[3, H, W]``, mask float32 ``[H, W]``, index, reason); None, None on a bad file."""

    def __init__(self, items, masks):
        self.items, self.masks = items, masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            img = read_image(self.items[i].path)
            m = read_mask(self.masks[i], shape=img.shape[:2])
            return chw(img), torch.from_numpy(np.array(m, copy=True)), i, ""
        except BadSample as e:
            return None, None, i, e.reason
