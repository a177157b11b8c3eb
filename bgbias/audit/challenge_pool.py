"""The background pool of ``bgbias challenge`` (decoded and preprocessed once) and one foreground's tensors."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bgbias.audit.core import Audit, ImageFiles, collate_by_size


class Pool:
    """The background pool, preprocessed once: float ``[N, 3, H, W]`` on the device, or uint8 when too big."""

    def __init__(self, audit: Audit, paths: list, batch_size: int, workers: int, pool_bytes: int, progress: bool,
                 raw: tuple[list[torch.Tensor], list[tuple[int, str]], list[int]] | None = None):
        self.audit = audit
        if raw is None:
            raw = read_pool(paths, batch_size, workers, progress)
        self.decoded = raw                                        # kept for shard workers (sent once each)
        self.raw, self.bad, keep = list(raw[0]), list(raw[1]), list(raw[2])
        order = np.argsort(keep, kind="stable")
        self.index = np.asarray(keep, dtype=np.int64)[order]     # pool row -> position in `paths`
        self.raw = [self.raw[i] for i in order]
        if not self.raw:
            raise ValueError("No readable only_bg_t background in the pool.")
        sizes = {tuple(t.shape[-2:]) for t in self.raw}
        if audit.preprocess.size is None and len(sizes) > 1:
            raise ValueError(f"Backgrounds differ in size ({sorted(sizes)[:3]}); pass --size H W to resize them.")
        first = self.prep(self.raw[0][None])
        self.shape = tuple(first.shape[-2:])
        need = len(self.raw) * first[0].numel() * 4
        self.dense = None
        if need <= pool_bytes:
            self.dense = torch.cat([self.prep(torch.stack(self.raw[i:i + batch_size])) if len(sizes) == 1
                                    else self.prep(self.raw[i][None])
                                    for i in range(0, len(self.raw), batch_size if len(sizes) == 1 else 1)])
            self.raw = []
        else:
            self.raw_t = torch.stack(self.raw) if len(sizes) == 1 else None

    def prep(self, images: torch.Tensor) -> torch.Tensor:
        return self.audit.preprocess(images.to(self.audit.device))

    def __len__(self) -> int:
        return len(self.index)

    def get(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Preprocessed backgrounds for pool rows (identical values whichever storage is used)."""
        if self.dense is not None:
            return self.dense[torch.as_tensor(rows, device=self.dense.device)]
        if self.raw_t is not None:
            return self.prep(self.raw_t[torch.as_tensor(rows)])
        return torch.cat([self.prep(self.raw[int(r)][None]) for r in rows])


def read_pool(paths: list, batch_size: int, workers: int, progress: bool):
    """Decode the pool once: (uint8 images, bad (index, reason), kept indices); shipped as is to shard workers."""
    raw, bad, keep = [], [], []
    loader = DataLoader(ImageFiles(paths), batch_size=batch_size, num_workers=workers, collate_fn=collate_by_size)
    for groups, b in tqdm(loader, desc="backgrounds", disable=not progress, leave=False):
        bad.extend(b)
        for images, idx in groups:
            raw.extend(images)
            keep.extend(idx.tolist())
    return raw, bad, keep


def prep_fg(audit: Audit, img: torch.Tensor, mask: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    x = audit.preprocess(img[None].to(audit.device))[0]
    m = mask[None, None].to(audit.device, torch.float32)
    if tuple(m.shape[-2:]) != tuple(x.shape[-2:]):      # the image's own geometry (resize, centre crop)
        m = audit.preprocess.resize(m, "bilinear").clamp_(0, 1)
    if tuple(x.shape[-2:]) != tuple(shape):
        raise ValueError(f"A foreground is {x.shape[-1]}x{x.shape[-2]} but the backgrounds are {shape[1]}x{shape[0]}; "
                         "pass --size H W so both are resized to the model input.")
    return x, m[0]
