"""The built-in model kinds: ``torchvision:``, ``torchscript:``, ``checkpoint:``, ``module:`` (registered on import).

Each is ``factory(arg, opts=LoadOptions) -> LoadedModel``; :func:`bgbias.models.load.load_model` is the front door.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bgbias.models.checkpoint import _first_line, load_checkpoint, safe_torch_load
from bgbias.models.load import MODEL_KINDS, PRESETS, LoadedModel, LoadOptions, import_factory, preprocess_from_meta
from bgbias.models.nets import ARCHS, create_arch


def unwrap_state_dict(obj: Any, path: Path | str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict, ``{"state_dict"|"model": ...}``, and strip DataParallel's ``module.`` prefix."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors).")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (``weights_only`` unless ``trust``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ValueError(f"Model file {path} does not exist.")
        from safetensors.torch import load_file

        return load_file(str(path))
    return unwrap_state_dict(safe_torch_load(path, trust=trust), path)


def classes_in_state_dict(sd: dict[str, torch.Tensor]) -> int | None:
    """Output size of the last linear layer (the last 2-D ``weight``), if any."""
    for k, v in reversed(list(sd.items())):
        if k.endswith("weight") and v.ndim == 2:
            return int(v.shape[0])
    return None


def load_weights(module: nn.Module, sd: dict[str, torch.Tensor], arch: str, path: Path | str) -> None:
    """``load_state_dict(strict=True)``; a mismatch becomes one sentence naming the architecture."""
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        detail = _first_line(RuntimeError(lines[0]) if lines else e, 200)
        raise ValueError(f"Weights file {path} does not fit architecture '{arch}' (it was probably saved from "
                         f"another architecture or class count): {detail}") from None


def _build_arch(arch: str, num_classes: int) -> nn.Module:
    if arch in ARCHS:
        return create_arch(arch, num_classes=num_classes)
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ValueError(f"Unknown architecture {arch!r}; valid: {', '.join(ARCHS.names())} "
                         "or any torchvision.models name.")
    return torchvision.models.get_model(arch, weights=None, num_classes=int(num_classes))


@MODEL_KINDS.register("torchvision", path_arg=True, help="<arch>")
def torchvision_kind(arch: str, opts: LoadOptions) -> LoadedModel:
    """A bgbias or torchvision architecture with a state dict; ImageNet preprocessing unless told otherwise."""
    sd = read_state_dict(opts.weights, opts.trust) if opts.weights else None
    n = opts.num_classes or (sd is not None and classes_in_state_dict(sd)) or 1000
    module = _build_arch(arch, int(n))
    if sd is not None:
        load_weights(module, sd, arch, opts.weights)
    return LoadedModel(module, f"torchvision:{arch}", preprocess=PRESETS["imagenet"],
                       files=[opts.weights] if opts.weights else [], num_outputs=int(n))


@MODEL_KINDS.register("torchscript", path_arg=True, help="FILE")
def torchscript_kind(file: str, opts: LoadOptions) -> LoadedModel:
    """A TorchScript file (``torch.jit.load``)."""
    path = Path(file)
    if not path.is_file():
        raise ValueError(f"TorchScript file {path} does not exist.")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"Could not load {path} as TorchScript ({_first_line(e, 120)}); "
                         "for a bgbias checkpoint use checkpoint:FILE, for a state dict torchvision:<arch>.") from None
    return LoadedModel(module, f"torchscript:{file}", files=[file])


@MODEL_KINDS.register("checkpoint", path_arg=True, help="FILE")
def checkpoint_kind(file: str, opts: LoadOptions) -> LoadedModel:
    """A checkpoint written by ``bgbias train``: arch, classes, preprocessing and training families from its meta."""
    ckpt = load_checkpoint(file, trust=opts.trust)
    meta = dict(ckpt.get("meta") or {})
    classes = list(meta.get("classes") or []) or None
    if "arch" not in meta:
        raise ValueError(f"Checkpoint {file} has no 'arch' in its meta; cannot rebuild the network.")
    n = opts.num_classes or (len(classes) if classes else None) or classes_in_state_dict(ckpt["state_dict"])
    module = create_arch(meta["arch"], num_classes=int(n), **dict(meta.get("arch_kwargs") or {}))
    load_weights(module, ckpt["state_dict"], meta["arch"], file)
    fam = meta.get("families_seen")
    return LoadedModel(module, f"checkpoint:{file}", classes, preprocess_from_meta(meta),
                       list(fam) if fam is not None else None, meta, files=[file], num_outputs=int(n))


@MODEL_KINDS.register("module", path_arg=True, help="pkg.mod:factory")
def module_kind(rest: str, opts: LoadOptions) -> LoadedModel:
    """``factory()`` (or ``factory(num_classes=...)``) from an importable module, optionally with a state dict."""
    fn_name = rest.rpartition(":")[2]
    factory = import_factory(rest)
    module = factory(num_classes=opts.num_classes) if opts.num_classes else factory()
    if not isinstance(module, nn.Module):
        raise TypeError(f"{rest} returned {type(module).__name__}, expected a torch.nn.Module.")
    if opts.weights:
        load_weights(module, read_state_dict(opts.weights, opts.trust), fn_name, opts.weights)
    return LoadedModel(module, f"module:{rest}", files=[opts.weights] if opts.weights else [])
