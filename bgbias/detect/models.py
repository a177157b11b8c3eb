"""Detectors: build torchvision detection architectures (and a tiny CPU one), load any detector for ``eval-detect``.

Every detector here obeys torchvision's interface: ``model(list of [3, H, W] float in [0, 1])``
returns, in eval mode, one dict per image with ``boxes`` (x0, y0, x1, y1 pixels), ``labels``
and ``scores``; in train mode ``model(images, targets)`` returns a dict of losses.

Model specs: ``torchvision:<arch>`` (any ``torchvision.models.detection`` builder, weights from a
local file only, never downloaded), ``bgbias:<arch>`` (the registry ``DETECTORS``, e.g.
``tiny_frcnn``), a checkpoint written by ``bgbias train --task detection`` (a ``.pt`` path), or
``module:pkg.mod:factory`` (a function returning an ``nn.Module``; it is called with no arguments).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bgbias.core.registry import Registry
from bgbias.models.checkpoint import FORMAT, safe_torch_load
from bgbias.models.load import import_factory

DETECTORS: Registry[nn.Module] = Registry("detector", plugins=("bgbias.detect.centernet",))


class _TinyBackbone(nn.Sequential):
    """Four 3x3 conv blocks, stride 8 overall; ``out_channels`` is what torchvision's heads read."""

    def __init__(self, width: int = 32):
        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        super().__init__(*block(3, width, 2), *block(width, width, 1), *block(width, 2 * width, 2),
                         *block(2 * width, 2 * width, 2), *block(2 * width, 2 * width, 1))
        self.out_channels = 2 * width


@DETECTORS.register("tiny_frcnn", help="torchvision Faster R-CNN on a 5-conv backbone (stride 8): trains in minutes on CPU")
def tiny_frcnn(num_classes: int = 11, width: int = 32, min_size: int = 96, max_size: int = 160,
               anchor_sizes: tuple[int, ...] = (12, 20, 32)) -> nn.Module:
    """A real :class:`torchvision.models.detection.FasterRCNN` sized for small canvases (``num_classes`` incl. background)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    anchors = AnchorGenerator(sizes=(tuple(int(a) for a in anchor_sizes),), aspect_ratios=((1.0, 1.6),))
    roi = MultiScaleRoIAlign(featmap_names=["0"], output_size=5, sampling_ratio=2)
    return FasterRCNN(_TinyBackbone(int(width)), num_classes=int(num_classes), rpn_anchor_generator=anchors,
                      box_roi_pool=roi, min_size=int(min_size), max_size=int(max_size),
                      rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=150,
                      rpn_post_nms_top_n_test=60, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
                      box_detections_per_img=50, representation_size=128)


def torchvision_detection_archs() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.detection))


def build_detector(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``tiny_frcnn`` (or another ``DETECTORS`` name) or a torchvision detection arch, randomly initialised."""
    name = arch.split(":", 1)[1] if arch.startswith(("bgbias:", "torchvision:")) else arch
    if name in DETECTORS:
        return DETECTORS.create(name, num_classes=num_classes, **kwargs)
    archs = torchvision_detection_archs()
    if name not in archs:
        raise ValueError(f"Unknown detection architecture {arch!r}; valid: {', '.join(DETECTORS.names() + archs)}.")
    import torchvision

    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=int(num_classes),
                                        **kwargs)


def _num_classes_in(sd: dict[str, torch.Tensor]) -> int | None:
    """Faster/Mask R-CNN keep the class count in the box predictor; other heads need ``--num-classes``."""
    w = sd.get("roi_heads.box_predictor.cls_score.weight")
    return int(w.shape[0]) if w is not None else None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedDetector:
    """A detector in eval mode plus what the results record about it; ``label_map`` maps model labels to category ids."""

    module: nn.Module
    spec: str
    info: dict[str, Any] = field(default_factory=dict)
    label_map: dict[int, int] | None = None


def load_detector(spec: str, weights: str | None = None, num_classes: int | None = None,
                  trust: bool = False) -> LoadedDetector:
    """Any detector spec (see the module docstring) -> :class:`LoadedDetector` in eval mode, on the CPU."""
    info: dict[str, Any] = {"spec": spec}
    if spec.startswith("module:"):
        module = import_factory(spec[len("module:"):])()
        if not isinstance(module, nn.Module):
            raise TypeError(f"{spec} returned {type(module).__name__}, not a torch nn.Module.")
        return LoadedDetector(module.eval(), spec, info)
    if spec.endswith(".pt") or Path(spec).is_file():
        ckpt = safe_torch_load(spec, trust=trust)
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or ckpt["meta"].get("task") != "detection":
            raise ValueError(f"{spec} is not a detection checkpoint of bgbias train --task detection; "
                             "use torchvision:<arch> --weights FILE for plain state dicts.")
        meta = ckpt["meta"]
        module = build_detector(meta["arch"], meta["num_classes"], **meta.get("arch_kwargs", {}))
        module.load_state_dict(ckpt["state_dict"])
        info.update({"sha256": sha256(spec), "arch": meta["arch"], "recipe": meta.get("recipe"),
                     "families_seen": meta.get("families_seen", [])})
        return LoadedDetector(module.eval(), spec, info)
    family, sep, arch = spec.partition(":")
    if not sep or family not in ("torchvision", "bgbias"):
        raise ValueError(f"Unknown detector spec {spec!r}; use torchvision:<arch>, bgbias:<arch>, a checkpoint "
                         "path or module:pkg.mod:factory.")
    sd = None
    if weights:
        obj = safe_torch_load(weights, trust=trust)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
            raise ValueError(f"Weights file {weights} holds no state dict of tensors.")
        info["sha256"] = sha256(weights)
    k = num_classes or (_num_classes_in(sd) if sd else None) or 91
    module = build_detector(arch, k)
    if sd is not None:
        try:
            module.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"Weights {weights} do not fit {arch} with {k} classes "
                             f"({str(e).splitlines()[0][:160]}); give --num-classes.") from None
    info.update({"arch": arch, "num_classes": k, "weights": weights})
    return LoadedDetector(module.eval(), spec, info)


def read_label_map(path: str | Path, categories: list[dict]) -> dict[int, int]:
    """JSON ``{"model label": category id | category name | -1}`` -> {model label: category id}; -1 drops the label."""
    from bgbias.core.io import read_json

    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"Label map {path} does not exist.") from None
    except ValueError as e:
        raise ValueError(f"Label map {path} is not valid JSON ({str(e)[:80]}).") from None
    if not isinstance(raw, dict):
        raise ValueError(f"Label map {path} must be a JSON object {{model label: category id or name}}.")
    by_name = {c["name"]: c["id"] for c in categories}
    ids = {c["id"] for c in categories}
    out: dict[int, int] = {}
    for k, v in raw.items():
        try:
            label = int(k)
        except ValueError:
            raise ValueError(f"Label map {path}: key {k!r} is not an integer model label.") from None
        if v == -1 or v is None:
            continue
        cat = by_name.get(v) if isinstance(v, str) else v
        if cat not in ids:
            raise ValueError(f"Label map {path}: {k!r} -> {v!r} is not a category of the build; valid: "
                             f"{', '.join(str(c['id']) + '=' + c['name'] for c in categories)}.")
        out[label] = int(cat)
    return out
