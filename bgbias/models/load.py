"""Load any classifier for auditing (torchvision, TorchScript, bgbias checkpoint, module factory) plus its preprocessing.

Model specs:

- ``torchvision:<arch>`` with ``weights=FILE`` (a state dict; the class count is
  read from the last 2-D weight unless given); ``<arch>`` is any bgbias arch
  (``bgbias list archs``) or torchvision model name.
- ``torchscript:FILE`` (``torch.jit.load``).
- ``checkpoint:FILE``: written by ``bgbias train``; the arch, classes, preprocessing
  and ``families_seen`` come from its ``meta``.
- ``module:pkg.mod:factory``: ``factory()`` (or ``factory(num_classes=...)``) returns
  an ``nn.Module``; optional ``weights=FILE`` state dict.

Weights load with ``weights_only=True`` unless ``trust``. Preprocessing runs on
batched tensors on the model's device: uint8/float ``[N, 3, H, W]`` -> float in
[0, 1] -> optional bilinear (antialiased) resize -> ``(x - mean) / std``.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bgbias.models.checkpoint import load_checkpoint, safe_torch_load
from bgbias.models.nets import ARCHS, create_arch

MODEL_KINDS = ("torchvision", "torchscript", "checkpoint", "module")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IN9_MEAN, IN9_STD = (0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575)


@dataclass(frozen=True)
class Preprocess:
    """What the model expects: ``size`` (H, W) or None (keep), per-channel ``mean``/``std`` (after /255)."""

    name: str = "none"
    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        return d

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[N, C, H, W]`` -> ``[N, C, *size]`` (no-op when size is None or equal)."""
        if self.size is None or tuple(x.shape[-2:]) == tuple(self.size):
            return x
        return F.interpolate(x, size=tuple(self.size), mode="bilinear", align_corners=False, antialias=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (0..255) or float (0..1) ``[N, 3, H, W]`` -> normalised float32 model input, same device."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return self.normalize(self.resize(x))


PRESETS = {
    "imagenet": Preprocess("imagenet", (224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "in9": Preprocess("in9", None, IN9_MEAN, IN9_STD),
    "none": Preprocess("none", None),
}


def make_preprocess(preset: str | None = None, mean=None, std=None, size=None,
                    default: Preprocess | None = None) -> Preprocess:
    """A preset (``imagenet``: 224x224 + ImageNet stats; ``in9``: IN-9 stats, no resize; ``none``) with overrides.

    Without a preset the ``default`` (e.g. from a checkpoint's meta) is used, else ``none``.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preprocessing {preset!r}; valid: {', '.join(PRESETS)}.")
    base = PRESETS[preset] if preset is not None else (default or PRESETS["none"])
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and (len(v) != 3 or (name == "std" and min(v) <= 0)):
            raise ValueError(f"--{name} needs 3 {'positive ' if name == 'std' else ''}numbers, got {list(v)}.")
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        if len(size) == 1:
            size = (size[0], size[0])
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"--size needs one or two positive integers (H W), got {list(size)}.")
    changed = any(v is not None for v in (mean, std, size))
    return Preprocess(base.name + ("+custom" if changed else ""),
                      size if size is not None else base.size,
                      tuple(float(v) for v in mean) if mean is not None else base.mean,
                      tuple(float(v) for v in std) if std is not None else base.std)


def preprocess_from_meta(meta: dict[str, Any]) -> Preprocess | None:
    pp = meta.get("preprocess") or None
    if not isinstance(pp, dict):
        return None
    size = pp.get("size")
    return Preprocess("checkpoint", tuple(int(s) for s in size) if size else None,
                      tuple(float(v) for v in pp.get("mean", (0.0, 0.0, 0.0))),
                      tuple(float(v) for v in pp.get("std", (1.0, 1.0, 1.0))))


@dataclass
class LoadedModel:
    """An eval-mode module with what we know about it (classes, preprocessing, training families)."""

    module: nn.Module
    spec: str
    classes: list[str] | None = None
    preprocess: Preprocess | None = None        # from a checkpoint's meta; None = not known
    families_seen: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: str | torch.device) -> "LoadedModel":
        self.module.to(device)
        return self

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float ``[N, 3, H, W]`` -> float32 ``[N, K]``; NaN/inf outputs fail loudly."""
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = out.get("logits", next(iter(out.values())))
        if not torch.is_tensor(out) or out.ndim != 2:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"Model {self.spec} returned {shape}; expected logits of shape [N, classes].")
        if not torch.isfinite(out).all():
            raise ValueError(f"Model {self.spec} returned NaN or infinite logits; check its weights and preprocessing.")
        return out.float()


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict, ``{"state_dict"|"model": ...}``, and strip DataParallel's ``module.`` prefix."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors).")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _classes_in_state_dict(sd: dict[str, torch.Tensor]) -> int | None:
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
        detail = lines[0][:200] if lines else str(e).splitlines()[0][:200]
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


def load_model(spec: str, weights: str | None = None, trust: bool = False,
               num_classes: int | None = None) -> LoadedModel:
    """Build the model named by ``spec`` in eval mode on the CPU (see the module docstring for specs)."""
    kind, sep, rest = (spec or "").partition(":")
    if not sep or kind not in MODEL_KINDS or not rest:
        hint = ""
        if spec and Path(spec).is_file():
            hint = f" Did you mean 'checkpoint:{spec}' (bgbias train's model.pt) or 'torchscript:{spec}'?"
        elif kind:
            from bgbias.core.registry import did_you_mean

            hint = did_you_mean(kind, MODEL_KINDS)
        raise ValueError(f"Unknown model spec {spec!r}; valid: torchvision:<arch>, torchscript:FILE, "
                         f"checkpoint:FILE, module:pkg.mod:factory.{hint}")
    if kind == "torchvision":
        sd = _unwrap_state_dict(safe_torch_load(weights, trust=trust), Path(weights)) if weights else None
        n = num_classes or (sd is not None and _classes_in_state_dict(sd)) or 1000
        module = _build_arch(rest, int(n))
        if sd is not None:
            load_weights(module, sd, rest, weights)
        lm = LoadedModel(module, spec)
    elif kind == "torchscript":
        path = Path(rest)
        if not path.is_file():
            raise ValueError(f"TorchScript file {path} does not exist.")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"Could not load {path} as TorchScript ({str(e).splitlines()[0][:120]}); "
                             "for a bgbias checkpoint use checkpoint:FILE, for a state dict torchvision:<arch>.") \
                from None
        lm = LoadedModel(module, spec)
    elif kind == "checkpoint":
        ckpt = load_checkpoint(rest, trust=trust)
        meta = dict(ckpt.get("meta") or {})
        classes = list(meta.get("classes") or []) or None
        if "arch" not in meta:
            raise ValueError(f"Checkpoint {rest} has no 'arch' in its meta; cannot rebuild the network.")
        n = num_classes or (len(classes) if classes else None) or _classes_in_state_dict(ckpt["state_dict"])
        module = create_arch(meta["arch"], num_classes=int(n), **dict(meta.get("arch_kwargs") or {}))
        load_weights(module, ckpt["state_dict"], meta["arch"], rest)
        fam = meta.get("families_seen")
        lm = LoadedModel(module, spec, classes, preprocess_from_meta(meta),
                         list(fam) if fam is not None else None, meta)
    else:
        mod_name, _, fn_name = rest.rpartition(":")
        if not mod_name or not fn_name:
            raise ValueError(f"Model spec {spec!r} must be module:pkg.mod:factory.")
        try:
            factory = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"Cannot import {fn_name!r} from module {mod_name!r} ({e}).") from None
        module = factory(num_classes=num_classes) if num_classes else factory()
        if not isinstance(module, nn.Module):
            raise TypeError(f"{rest} returned {type(module).__name__}, expected a torch.nn.Module.")
        if weights:
            load_weights(module, _unwrap_state_dict(safe_torch_load(weights, trust=trust), Path(weights)),
                         fn_name, weights)
        lm = LoadedModel(module, spec)
    lm.module.eval()
    return lm


def resolve_device(device: str | None) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` | None (cuda when available); an unavailable GPU is one clear error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"Unknown device {device!r}; valid: cpu, cuda, cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} requested but CUDA is not available; use --device cpu.")
    return dev
