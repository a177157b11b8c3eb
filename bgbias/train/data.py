"""Training data in memory: a source spec (split by ``--val-fraction``) or a build's ``train``/``val`` splits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bgbias.core.io import read_image, read_mask
from bgbias.core.sample import BadSample, Sample


# ---------------------------------------------------------------------------------------------- data
@dataclass
class TrainData:
    """A labelled dataset in memory: uint8 images ``[N,3,H,W]``, uint8 masks ``[N,H,W]`` (255 = fg) or None,
    and each sample's group (class, background) when the build records backgrounds (group recipes need them)."""

    images: torch.Tensor
    masks: torch.Tensor | None
    labels: torch.Tensor
    ids: list[str]
    classes: list[str]
    skipped: list[dict]
    groups: list[str] | None = None   # "<class>|<background>" per sample (spurious / mixed builds); None = unknown

    def take(self, rows: torch.Tensor | list[int]) -> "TrainData":
        """The rows ``rows`` (e.g. a held-out part), same classes, groups kept; ``skipped`` stays with the whole."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return TrainData(self.images[rows], None if self.masks is None else self.masks[rows], self.labels[rows],
                         [self.ids[int(r)] for r in rows], self.classes, self.skipped,
                         None if self.groups is None else [self.groups[int(r)] for r in rows])

    def subset(self, rows: torch.Tensor | list[int]) -> "TrainData":
        """The rows ``rows`` (a train or validation part), same classes and groups; ``skipped`` stays with the whole."""
        return self.take(rows)

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


def load_data(data: str, variant: str = "original", size: tuple[int, int] | None = None,
              split: str | None = None) -> TrainData:
    """Read a source spec (``digits``, ``mnist:DIR``, ...) or a build dir's ``variant`` (in ``split``, or every
    split when None) into memory."""
    images, masks, labels, ids, skipped = [], [], [], [], []
    groups_by_id: dict[str, str] | None = None

    def add(image: np.ndarray, mask: np.ndarray | None, label: int, sid: str) -> None:
        image, mask = _resize(image, mask, size)
        if images and image.shape != images[0].shape:
            raise ValueError(f"Images differ in size ({image.shape[1]}x{image.shape[0]} vs "
                             f"{images[0].shape[1]}x{images[0].shape[0]}); pass --size HxW (e.g. 64x64).")
        images.append(image)
        masks.append(mask)
        labels.append(int(label))
        ids.append(sid)

    if is_build_dir(data):
        from bgbias.audit.groups import training_groups
        from bgbias.core.layout import read_manifest
        from bgbias.core.layout import find_mask, list_classes, list_items

        groups_by_id = training_groups(read_manifest(data), variant)
        classes = list_classes(data, variant)
        for item in list_items(data, variant, split):
            try:
                image = read_image(item.path)
                mpath = find_mask(data, item)
                add(image, read_mask(mpath, image.shape[:2]) if mpath.is_file() else None, item.label, item.id)
            except BadSample as e:
                skipped.append({"path": str(item.path), "reason": e.reason})
    else:
        from bgbias.sources.base import create_source

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
    groups = [groups_by_id[i] for i in ids] if groups_by_id and all(i in groups_by_id for i in ids) else None
    return TrainData(img, msk, torch.tensor(labels, dtype=torch.long), ids, classes, skipped, groups)


def load_train_val(data: str, variant: str, size: tuple[int, int] | None, val_fraction: float,
                   seed: int) -> tuple[TrainData, TrainData | None, dict]:
    """(train, validation or None, where each came from).

    A build dir: ``variant``'s ``train`` split to train on, ``original``'s ``val`` split to validate on
    (a build without ``train`` is one clear sentence saying to rebuild with ``--holdout``). A source spec:
    a seeded ``val_fraction`` of its samples validates, as ``--val-fraction`` says.
    """
    from bgbias.core.layout import list_splits, require_split

    if is_build_dir(data):
        require_split(data, "train", variant if (Path(data) / variant).is_dir() else "original")
        train = load_data(data, variant, size, split="train")
        val = load_data(data, "original", size, split="val") if "val" in list_splits(data, "original") else None
        if val is not None and val.images.shape[-2:] != train.images.shape[-2:]:
            raise ValueError(f"The train and val images of {data} differ in size; pass --size HxW (e.g. 64x64).")
        return train, val, {"train": f"{variant}/train", "val": "original/val" if val is not None else None}
    full = load_data(data, "original", size)
    return (*split_rows(full, val_fraction, seed), {"train": "source", "val": f"val_fraction {val_fraction:g}"})


def split_rows(full: TrainData, val_fraction: float, seed: int) -> tuple[TrainData, TrainData | None]:
    """A seeded ``val_fraction`` of the rows for validation (None when 0), the rest for training."""
    from bgbias.core.seeding import torch_generator

    n = len(full.labels)
    perm = torch.randperm(n, generator=torch_generator(seed, "split"))
    n_val = int(round(val_fraction * n))
    val_rows, train_rows = perm[:n_val].sort().values, perm[n_val:].sort().values
    return full.subset(train_rows), (full.subset(val_rows) if n_val else None)
