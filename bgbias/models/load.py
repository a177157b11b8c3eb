"""Load any classifier for auditing plus its preprocessing: one registry of model kinds, one ``load_model`` call.

Model specs are ``<kind>:<arg>``; each kind is a registered factory (``bgbias list``
shows them; add one with ``@MODEL_KINDS.register("name", path_arg=True)``):

- ``torchvision:<arch>`` with ``weights=FILE`` (a state dict; the class count is
  read from the last 2-D weight unless given); ``<arch>`` is any bgbias arch
  (``bgbias list archs``) or torchvision model name.
- ``torchscript:FILE`` (``torch.jit.load``).
- ``checkpoint:FILE``: written by ``bgbias train``; the arch, classes, preprocessing
  and ``families_seen`` come from its ``meta``.
- ``module:pkg.mod:factory``: ``factory()`` (or ``factory(num_classes=...)``) returns
  an ``nn.Module``; optional ``weights=FILE`` state dict.
- ``timm:<name>``, ``hf:<dir>``, ``clip:<arch>``: optional extras, in
  :mod:`bgbias.models.kinds_timm`, :mod:`~bgbias.models.kinds_hf`, :mod:`~bgbias.models.kinds_clip`.

Weights load with ``weights_only=True`` unless ``trust``; nothing is downloaded
unless ``download``. Preprocessing runs on batched tensors on the model's
device: uint8/float ``[N, 3, H, W]`` -> float in [0, 1] -> optional resize (and
centre crop, as timm / Hugging Face / CLIP evaluate) -> ``(x - mean) / std``.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bgbias.core.registry import Registry

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IN9_MEAN, IN9_STD = (0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a float ``[N, C, H, W]`` batch in [0, 1], on its device and dtype.

    The one normalisation: audits (:class:`Preprocess`) and training (``bgbias.train.loop.normalizer``) both
    call it, so a checkpoint's ``preprocess`` means the same numbers in both.
    """
    m = torch.tensor(tuple(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(tuple(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


@dataclass(frozen=True)
class Preprocess:
    """What the model expects: input ``size`` (H, W) or None (keep), per-channel ``mean``/``std`` (after /255).

    ``resize`` None resizes straight to ``size`` (squash); an int resizes the shorter side to it and a pair to
    exactly (H, W), then a centre crop to ``size`` follows (timm's ``crop_pct``, CLIP's and Hugging Face's
    resize-then-crop). ``interpolation`` is the image resampling filter (masks always use bilinear).
    """

    name: str = "none"
    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "bilinear"
    resize_to: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        d["resize_to"] = list(self.resize_to) if isinstance(self.resize_to, tuple) else self.resize_to
        return d

    def resize(self, x: torch.Tensor, interpolation: str | None = None) -> torch.Tensor:
        """float ``[N, C, H, W]`` -> ``[N, C, *size]``: the geometry only (no-op when size is None or equal).

        Images, masks and backgrounds all go through this, so a mask stays aligned with its image.
        """
        if self.size is None:
            return x
        mode = interpolation or self.interpolation
        if self.resize_to is None:
            if tuple(x.shape[-2:]) == tuple(self.size):
                return x
            return _interpolate(x, tuple(self.size), mode)
        from torchvision.transforms.v2 import functional as TF

        h, w = x.shape[-2:]
        if isinstance(self.resize_to, int):
            s = self.resize_to       # shorter side -> s, as torchvision's Resize(int) computes it
            target = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        else:
            target = tuple(self.resize_to)
        if tuple(target) != (h, w):
            x = _interpolate(x, target, mode)
        return TF.center_crop(x, list(self.size))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (0..255) or float (0..1) ``[N, 3, H, W]`` -> normalised float32 model input, same device."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        y = self.resize(x)
        if y is not x and self.interpolation == "bicubic":
            y = y.clamp(0, 1)        # bicubic overshoots; PIL (what the libraries resize with) clamps to 0..255
        return self.normalize(y)


def _interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


PRESETS = {
    "imagenet": Preprocess("imagenet", (224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "in9": Preprocess("in9", None, IN9_MEAN, IN9_STD),
    "none": Preprocess("none", None),
}


def make_preprocess(preset: str | None = None, mean=None, std=None, size=None,
                    default: Preprocess | None = None) -> Preprocess:
    """A preset (``imagenet``: 224x224 + ImageNet stats; ``in9``: IN-9 stats, no resize; ``none``) with overrides.

    Without a preset the ``default`` (the model's own: checkpoint meta, timm data config, image processor,
    CLIP transforms) is used, else ``none``. An explicit ``size`` replaces the model's resize-and-crop with a
    plain resize to that size.
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
                      tuple(float(v) for v in std) if std is not None else base.std,
                      base.interpolation, None if size is not None else base.resize_to)


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
    """An eval-mode module with what we know about it (classes, preprocessing, training families, files read)."""

    module: nn.Module
    spec: str
    classes: list[str] | None = None
    preprocess: Preprocess | None = None        # the model's own; None = not known
    families_seen: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)    # every weights file read (hashed into the result's record)
    num_outputs: int | None = None                    # output size when known before a forward pass

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


@dataclass(frozen=True)
class LoadOptions:
    """Everything a model kind may need besides its spec argument (kinds ignore what does not apply to them)."""

    weights: str | None = None          # a weights file (state dict, safetensors, open_clip checkpoint)
    trust: bool = False                 # allow unpickling arbitrary objects
    num_classes: int | None = None
    download: bool = False              # timm / Hugging Face / open_clip may fetch pretrained weights
    prompts: str | None = None          # zero-shot prompt templates file (clip:)
    class_names: tuple[str, ...] | None = None   # the data's classes (zero-shot text, name matching)


MODEL_KINDS: Registry[LoadedModel] = Registry(
    "model kind", plugins=("bgbias.models.kinds_basic", "bgbias.models.kinds_timm", "bgbias.models.kinds_hf",
                           "bgbias.models.kinds_clip"))


def import_factory(spec: str) -> Any:
    """``pkg.mod:factory`` -> that callable (for ``module:`` classifiers and detectors), or one sentence."""
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"Model spec 'module:{spec}' must be module:pkg.mod:factory.")
    try:
        return getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"Cannot import {fn_name!r} from module {mod_name!r} ({e}).") from None


def require(module: str, extra: str, kind: str) -> Any:
    """Import an optional library, or fail with the one sentence that says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"Model kind '{kind}:' needs the {module.split('.')[0]} package, which is not installed; "
                         f"install it with pip install 'bgbias[{extra}]'.") from None


def load_model(spec: str, weights: str | None = None, trust: bool = False, num_classes: int | None = None, *,
               download: bool = False, prompts: str | None = None,
               class_names: tuple[str, ...] | list[str] | None = None) -> LoadedModel:
    """Build the model named by ``spec`` (``<kind>:<arg>``) in eval mode on the CPU."""
    kind, sep, rest = (spec or "").partition(":")
    if not sep or not rest or kind not in MODEL_KINDS:
        first = ("torchvision", "torchscript", "checkpoint", "module")
        names = sorted(MODEL_KINDS.names(), key=lambda k: (first.index(k) if k in first else len(first), k))
        valid = ", ".join(f"{k}:{MODEL_KINDS.entry(k).help}" for k in names)
        hint = ""
        if spec and Path(spec).is_file():
            hint = f" Did you mean 'checkpoint:{spec}' (bgbias train's model.pt) or 'torchscript:{spec}'?"
        elif kind:
            from bgbias.core.registry import did_you_mean

            hint = did_you_mean(kind, MODEL_KINDS.names())
        raise ValueError(f"Unknown model spec {spec!r}; valid: {valid}.{hint}")
    opts = LoadOptions(weights, trust, num_classes, download, prompts,
                       tuple(class_names) if class_names is not None else None)
    lm = MODEL_KINDS.create(spec, opts=opts)
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
