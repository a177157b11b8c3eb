"""Self-describing checkpoints: weights plus the metadata needed to rebuild and preprocess.

Format (one ``torch.save`` dict, loadable with ``weights_only=True``)::

    {"format": "bgbias-checkpoint/1",
     "state_dict": {...},            # model weights (tensors only)
     "meta": {"arch": "small-cnn", "arch_kwargs": {...}, "classes": [...],
              "preprocess": {"size": [H, W] | None, "mean": [...], "std": [...]},
              "recipe": "baseline", "seed": 0, "config": {...}, "families_seen": [...],
              "epoch": 5, ...},
     "extra": {...}}                 # optional: optimiser state etc. for resuming

Only plain Python types and tensors go in, so loading never runs code.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from bgbias.core.io import atomic_write_bytes

FORMAT = "bgbias-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> None:
    """Write atomically; ``meta`` must hold only JSON-like values."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
                "meta": meta, "extra": extra or {}}, buf)
    atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | os.PathLike, trust: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` unless ``trust``; a refusal becomes one clear sentence."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Model file {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"Refused to load {path}: it contains Python objects beyond tensors and plain data, which could run "
            f"code when unpickled ({str(e).splitlines()[0][:120]}); if you trust this file, pass --trust-checkpoint."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"Could not read {path} as a PyTorch file: {str(e).splitlines()[0][:160]}.") from None


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """Return the checkpoint dict (``state_dict``, ``meta``, ``extra``); checks the format tag."""
    ckpt = safe_torch_load(path, trust=trust)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bgbias checkpoint (no '{FORMAT}' format tag); "
                         "use torchvision:<arch> --weights or torchscript: for other files.")
    return ckpt
