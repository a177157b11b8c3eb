"""``clip:<arch>[:<tag>]``: an open_clip model used zero-shot on the data's class names.

``clip:ViT-B-32 --weights FILE`` loads an open_clip checkpoint (``weights_only``
unless ``--trust-checkpoint``); ``clip:ViT-B-32:laion2b_s34b_b79k`` reads that
pretrained tag's file from the local cache (``--download-weights`` fetches it);
``<arch>`` may also be a model config JSON file (it is registered with
``open_clip.add_model_config``). The classifier is the standard zero-shot one
(Radford et al.): each class's text embedding is the normalised mean of the
normalised embeddings of its prompts (``--prompts FILE``: one template per line
with ``{}`` for the class name; default: the 80 OpenAI ImageNet templates),
and logits = ``exp(logit_scale) * cos(image, class)`` (+ ``logit_bias`` for
SigLIP). Class names are the data's class folders with ``_`` read as spaces.
Preprocessing follows the model's own ``preprocess_cfg`` (bicubic shortest-side
resize + centre crop for the OpenAI/LAION models).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bgbias.models.load import MODEL_KINDS, INTERPOLATIONS, LoadedModel, LoadOptions, Preprocess, require


class ZeroShotClassifier(nn.Module):
    """An image tower plus fixed class embeddings: ``logits = scale * normalise(visual(x)) @ text + bias``."""

    def __init__(self, visual: nn.Module, text_embeddings: torch.Tensor, logit_scale: float,
                 logit_bias: float | None = None):
        super().__init__()
        if text_embeddings.ndim != 2:
            raise ValueError(f"text_embeddings must be [dim, classes], got {tuple(text_embeddings.shape)}.")
        self.visual = visual
        self.register_buffer("text", F.normalize(text_embeddings.float(), dim=0))
        self.logit_scale = float(logit_scale)
        self.logit_bias = None if logit_bias is None else float(logit_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.visual(x)
        if isinstance(feats, (tuple, list)):
            feats = feats[0]
        out = self.logit_scale * F.normalize(feats.float(), dim=-1) @ self.text
        return out if self.logit_bias is None else out + self.logit_bias


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompt templates, one per line, each with ``{}`` where the class name goes (blank / ``#`` lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Prompts file {path} does not exist.")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    bad = [ln for ln in lines if ln.count("{}") != 1]
    if not lines or bad:
        raise ValueError(f"Prompts file {path} needs one template per line with exactly one {{}} for the class name"
                         + (f"; line {bad[0]!r} has {bad[0].count('{}')}." if bad else "; it has none."))
    return lines


def class_prompt_names(classes: Sequence[str]) -> list[str]:
    """Folder names to words: ``golden_retriever`` -> ``golden retriever``."""
    return [c.replace("_", " ").strip() for c in classes]


def preprocess_from_clip_cfg(cfg: dict[str, Any], name: str = "clip") -> Preprocess:
    """open_clip's eval transform (``image_transform(is_train=False)``) as a batched :class:`Preprocess`."""
    size = cfg.get("size", 224)
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mode = cfg.get("resize_mode") or "shortest"
    if mode == "longest":
        raise ValueError(f"{name}: resize_mode 'longest' (letterbox padding) is not supported; pass --size {h} {w}.")
    resize_to = None if mode == "squash" else (h if h == w else (h, w))
    interp = str(cfg.get("interpolation") or "bicubic")
    return Preprocess(name, (h, w), tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                      interp if interp in INTERPOLATIONS else "bicubic", resize_to)


def _cached_tag_file(open_clip: Any, arch: str, tag: str) -> str | None:
    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        parts = cfg["hf_hub"].strip("/").split("/")
        repo, fname = "/".join(parts[:2]), "/".join(parts[2:]) or None
        for f in (fname, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, f) if f else None
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    if cfg.get("url"):
        hit = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if hit.is_file():
            return str(hit)
    return None


def zero_shot_text(model: nn.Module, tokenizer: Callable, classes: Sequence[str],
                   templates: Sequence[str | Callable]) -> torch.Tensor:
    """``[dim, classes]`` class embeddings with open_clip's own ``build_zero_shot_classifier``."""
    from open_clip import build_zero_shot_classifier

    with torch.no_grad():
        return build_zero_shot_classifier(model, tokenizer, class_prompt_names(classes), templates,
                                          num_classes_per_batch=10, device="cpu", use_tqdm=False)


@MODEL_KINDS.register("clip", path_arg=True, help="<arch>[:<tag>]")
def clip_kind(rest: str, opts: LoadOptions) -> LoadedModel:
    """Zero-shot classification of the data's classes with an open_clip model."""
    open_clip = require("open_clip", "clip", "clip")
    arch, _, tag = rest.partition(":") if not rest.endswith(".json") else (rest, "", "")
    if arch.endswith(".json"):
        if not Path(arch).is_file():
            raise ValueError(f"open_clip model config {arch} does not exist.")
        open_clip.add_model_config(arch)
        arch = Path(arch).stem
    if arch not in open_clip.list_models():
        raise ValueError(f"Unknown open_clip architecture {arch!r}; list them with "
                         "python -c \"import open_clip; print(open_clip.list_models())\".")
    if not opts.class_names:
        raise ValueError("clip: models classify zero-shot and need the data's class names; none were given.")
    if opts.weights:
        if not Path(opts.weights).is_file():
            raise ValueError(f"Weights file {opts.weights} does not exist.")
        pretrained = opts.weights
    elif tag:
        pretrained = _cached_tag_file(open_clip, arch, tag) or (tag if opts.download else None)
        if pretrained is None:
            raise ValueError(f"clip:{arch}:{tag}'s weights are not in the local cache; pass --weights FILE, or "
                             "--download-weights to let open_clip fetch them.")
    else:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)[:4]) or "none known"
        raise ValueError(f"clip:{arch} needs --weights FILE or a pretrained tag, clip:{arch}:<tag> (tags: {tags}).")
    try:
        model = open_clip.create_model(arch, pretrained=pretrained, weights_only=not opts.trust)
    except (RuntimeError, pickle.UnpicklingError) as e:
        raise ValueError(f"Could not load {pretrained} into open_clip {arch!r}: {str(e).splitlines()[0][:200]}") \
            from None
    model.eval()
    templates: Sequence[str | Callable] = read_prompts(opts.prompts) if opts.prompts else \
        open_clip.OPENAI_IMAGENET_TEMPLATES
    text = zero_shot_text(model, open_clip.get_tokenizer(arch), opts.class_names, templates)
    bias = getattr(model, "logit_bias", None)
    clf = ZeroShotClassifier(model.visual, text, float(model.logit_scale.detach().exp()),
                             None if bias is None else float(bias.detach()))
    files = [p for p in (pretrained if os.path.isfile(str(pretrained)) else _cached_tag_file(open_clip, arch, tag),
                         opts.prompts) if p]
    pp = preprocess_from_clip_cfg(open_clip.get_model_preprocess_cfg(model), f"clip:{arch}")
    return LoadedModel(clf.eval(), f"clip:{rest}", classes=list(opts.class_names), preprocess=pp, files=files,
                       num_outputs=len(opts.class_names),
                       meta={"prompts": len(templates), "zero_shot": True})

