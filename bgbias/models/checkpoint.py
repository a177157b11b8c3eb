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
import textwrap
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


def _first_line(e: BaseException, width: int = 160) -> str:
    """The first line of an exception's text, cut at a word (empty messages give the type name)."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return textwrap.shorten(text, width, placeholder=" ...")


def safe_torch_load(path: str | os.PathLike, trust: bool = False,
                    trust_option: str | None = "--trust-checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` unless ``trust``; a refusal becomes one clear sentence.

    ``trust_option`` is the flag the calling command offers to load trusted full pickles (None: it offers none).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Model file {path} does not exist.")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"Model file {path} is empty (0 bytes); it was probably cut off while being written.")
    if not head.startswith((b"PK", b"\x80")):   # torch.save: a zip archive, or a legacy pickle stream
        raise ValueError(f"Model file {path} is not a PyTorch file (it starts with {head!r}).")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ValueError(f"Could not read {path} as a PyTorch file ({_first_line(e)}).") from None
        advice = (f"; if you trust this file, pass {trust_option}" if trust_option
                  else "; re-save it as a state dict of tensors")
        raise ValueError(
            f"Refused to load {path}: it contains Python objects beyond tensors and plain data, which could run "
            f"code when unpickled{advice}.") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, AttributeError) as e:
        raise ValueError(f"Could not read {path} as a PyTorch file ({_first_line(e)}).") from None


def load_state_dict_file(path: str | os.PathLike, trust_option: str | None = None) -> dict[str, torch.Tensor]:
    """Weights from a bgbias checkpoint or a plain state dict file (``{"state_dict": ...}`` accepted);
    anything else (a pickled list, a model object) is one sentence naming the file."""
    obj = safe_torch_load(path, trust_option=trust_option)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v)
                                                       for k, v in obj.items()):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not weights (a bgbias checkpoint or a state dict "
                         "mapping parameter names to tensors).")
    return obj


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """Return the checkpoint dict (``state_dict``, ``meta``, ``extra``); checks the format tag."""
    ckpt = safe_torch_load(path, trust=trust)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bgbias checkpoint (no '{FORMAT}' format tag); "
                         "use torchvision:<arch> --weights or torchscript: for other files.")
    return ckpt
