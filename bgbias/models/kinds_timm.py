"""``timm:<name>``: any timm model, with ``--weights FILE`` or timm's pretrained weights from the local cache.

Offline by default: without ``--weights`` the pretrained file must already be in
the Hugging Face cache (``$HF_HOME``/``$HF_HUB_CACHE``) or torch hub's
``checkpoints/`` folder; ``--download-weights`` lets timm fetch it. Either way
the file read is recorded (its sha256 goes into every result), because timm's
weights behind one name have changed over time (the backgrounds challenge's
issue #5). Preprocessing follows the model's own data config
(``timm.data.resolve_data_config``): input size, interpolation, ``crop_pct``
(shorter side resized to ``size / crop_pct``, then a centre crop), mean, std.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from torch import nn

from bgbias.models.kinds_basic import load_weights
from bgbias.models.load import MODEL_KINDS, INTERPOLATIONS, LoadedModel, LoadOptions, Preprocess, require


def preprocess_from_data_config(cfg: dict[str, Any], name: str = "timm") -> Preprocess:
    """timm's eval transform (``transforms_imagenet_eval``) as a batched :class:`Preprocess`."""
    h, w = (int(v) for v in cfg["input_size"][-2:])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    mode = cfg.get("crop_mode") or "center"
    if mode == "border":
        raise ValueError(f"timm crop_mode 'border' (letterbox) is not supported; pass --size {h} {w} to resize "
                         "straight to the model input instead.")
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    resize_to: int | tuple[int, int] = scale[0] if mode == "center" and h == w else scale
    interp = str(cfg.get("interpolation") or "bilinear")
    return Preprocess(name, (h, w), tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                      interp if interp in INTERPOLATIONS else "bilinear", resize_to)


def _classifier_key(model: nn.Module) -> str | None:
    key = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(key, (tuple, list)):
        key = key[0] if key else None
    return key


def cached_pretrained_file(model: nn.Module) -> str | None:
    """The pretrained weights file of ``model``'s pretrained config if it is in a local cache (no network)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return str(cfg["file"])
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo = cfg["hf_hub_id"]
        for fname in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                      "open_clip_pytorch_model.bin"):
            if fname:
                hit = try_to_load_from_cache(repo, fname)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
    if cfg.get("url"):
        import torch.hub

        hit = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"].split("?")[0])
        if hit.is_file():
            return str(hit)
    return None


@MODEL_KINDS.register("timm", path_arg=True, help="<name>")
def timm_kind(name: str, opts: LoadOptions) -> LoadedModel:
    """A timm model, preprocessed as its data config says."""
    timm = require("timm", "timm", "timm")
    if not timm.is_model(name.partition(".")[0]):
        raise ValueError(f"Unknown timm model {name!r}; list them with python -c \"import timm; "
                         f"print(timm.list_models('{name.split('.')[0][:6]}*'))\".")
    files: list[str] = []
    if opts.weights:
        sd = timm.models.load_state_dict(opts.weights, weights_only=not opts.trust) \
            if Path(opts.weights).is_file() else None
        if sd is None:
            raise ValueError(f"Weights file {opts.weights} does not exist.")
        model = timm.create_model(name, pretrained=False)
        key = _classifier_key(model)
        n = opts.num_classes or (int(sd[f"{key}.weight"].shape[0]) if key and f"{key}.weight" in sd else None)
        if n is not None and n != model.num_classes:
            model = timm.create_model(name, pretrained=False, num_classes=n)
        load_weights(model, sd, f"timm:{name}", opts.weights)
        files.append(opts.weights)
    else:
        probe = timm.create_model(name, pretrained=False)
        cached = cached_pretrained_file(probe)
        if cached is not None:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
        elif opts.download:
            model = timm.create_model(name, pretrained=True)
            cached = cached_pretrained_file(model)
        else:
            tag = probe.pretrained_cfg.get("hf_hub_id") or probe.pretrained_cfg.get("url") or name
            raise ValueError(f"timm:{name} has no --weights and its pretrained weights ({tag}) are not in the local "
                             "cache; pass --weights FILE, or --download-weights to let timm fetch them.")
        if cached:
            files.append(cached)
    pp = preprocess_from_data_config(timm.data.resolve_data_config({}, model=model), f"timm:{name}")
    return LoadedModel(model, f"timm:{name}", preprocess=pp, files=files, num_outputs=int(model.num_classes))
