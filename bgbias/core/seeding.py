"""Deterministic randomness: one generator per ``(seed, *keys)``, never the global RNG.

Every random choice in bgbias (which background, which texture phase, which
augmentation) is drawn from a generator derived from the run seed plus the
names of what it is for (sample id, variant name, ...). So results do not
depend on worker count, order, or machine.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit integer that depends only on ``seed`` and ``keys`` (stable across runs and machines)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for k in keys:
        h.update(b"\x1f")
        h.update(str(k).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def torch_generator(seed: int, *keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def numpy_rng(seed: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *keys))
