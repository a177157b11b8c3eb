"""``hf:<local dir or hub id>``: a Hugging Face ``transformers`` image classifier, preprocessed as its image processor says.

Offline by default (``local_files_only=True``; ``--download-weights`` allows the
hub). Class names come from ``config.id2label`` unless they are the placeholder
``LABEL_<i>``, so a model fine-tuned on the data's classes is label-mapped by
name automatically. The processor's resize / centre crop / rescale / normalise
become one batched :class:`~bgbias.models.load.Preprocess` (``shortest_edge``
without a crop is treated as a square resize-and-crop; the same on square images).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bgbias.models.load import MODEL_KINDS, LoadedModel, LoadOptions, Preprocess, require

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}     # PIL.Image.Resampling values


class HFClassifier(nn.Module):
    """``pixel_values -> logits`` (a plain tensor, so captum, Grad-CAM hooks and the challenge see one output)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _get(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _interp(resample: Any) -> str:
    if isinstance(resample, str):
        return resample.lower() if resample.lower() in ("nearest", "bilinear", "bicubic") else "bilinear"
    value = getattr(resample, "value", resample)
    return _RESAMPLE.get(int(value), "bilinear") if isinstance(value, int) else "bilinear"


def preprocess_from_processor(proc: Any, name: str = "hf") -> Preprocess:
    """An image processor's eval pipeline as a batched :class:`Preprocess`."""
    size = getattr(proc, "size", None) if getattr(proc, "do_resize", True) else None
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    crop_hw = (int(_get(crop, "height")), int(_get(crop, "width"))) if crop is not None else None
    out_size: tuple[int, int] | None
    resize_to: int | tuple[int, int] | None = None
    if size is None:
        out_size = crop_hw
        if crop_hw is not None:
            raise ValueError(f"{name}: a centre crop without a resize is not supported; pass --size H W.")
    elif _get(size, "height") and _get(size, "width"):
        hw = (int(_get(size, "height")), int(_get(size, "width")))
        out_size, resize_to = (crop_hw, hw) if crop_hw else (hw, None)
    elif _get(size, "shortest_edge"):
        s = int(_get(size, "shortest_edge"))
        crop_pct = getattr(proc, "crop_pct", None)
        if crop_pct is not None:          # ConvNeXt: below 384 px resize to s / crop_pct and crop s; else warp to s
            out_size, resize_to = ((s, s), int(s / crop_pct)) if s < 384 else ((s, s), None)
        else:
            out_size, resize_to = (crop_hw or (s, s)), s
    else:
        raise ValueError(f"{name}: image processor size {dict(size) if isinstance(size, dict) else size} is not "
                         "supported; pass --size H W and --mean/--std.")
    r = float(getattr(proc, "rescale_factor", 1 / 255)) if getattr(proc, "do_rescale", True) else 1.0
    normalize = getattr(proc, "do_normalize", True)
    mean = tuple(float(v) for v in proc.image_mean) if normalize else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in proc.image_std) if normalize else (1.0, 1.0, 1.0)
    k = 255.0 * r                         # our input is already /255: fold a different rescale into mean/std
    if abs(k - 1.0) > 1e-9:
        mean, std = tuple(m / k for m in mean), tuple(s / k for s in std)
    return Preprocess(name, out_size, mean, std, _interp(getattr(proc, "resample", 2)), resize_to)


def weight_files(source: str) -> list[str]:
    """The weights files ``from_pretrained`` reads for a local folder or (from the cache only) a hub id."""
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(p for p in path.glob("*.bin") if "training" not in p.name)
        return [str(p) for p in files]
    from huggingface_hub import try_to_load_from_cache

    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(source, fname)
        if isinstance(hit, str):
            return [hit]
    return []


@MODEL_KINDS.register("hf", path_arg=True, help="<dir or hub id>")
def hf_kind(source: str, opts: LoadOptions) -> LoadedModel:
    """A ``transformers`` image-classification model with its image processor (offline unless --download-weights)."""
    transformers = require("transformers", "hf", "hf")
    transformers.utils.logging.disable_progress_bar()
    local = Path(source).is_dir()
    if not local and not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", source):
        raise ValueError(f"hf:{source} is neither a folder nor a hub id (owner/name).")
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            source, local_files_only=not opts.download)
        proc = transformers.AutoImageProcessor.from_pretrained(source, local_files_only=not opts.download)
    except OSError as e:
        hint = "" if local else "; it is not in the local cache (pass --download-weights to fetch it)"
        raise ValueError(f"Could not load hf:{source} as an image classifier{hint}: "
                         f"{str(e).splitlines()[0][:160]}") from None
    labels = [str(model.config.id2label[i]) for i in range(len(model.config.id2label))]
    named = None if all(re.fullmatch(r"LABEL_\d+", c) for c in labels) else labels
    pp = preprocess_from_processor(proc, f"hf:{Path(source).name if local else source}")
    return LoadedModel(HFClassifier(model).eval(), f"hf:{source}", classes=named, preprocess=pp,
                       files=weight_files(source), num_outputs=len(labels))
