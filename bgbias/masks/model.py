"""The ``model:<arch>`` mask method: a torchvision segmentation network with a local weights file.

Apart from :mod:`bgbias.masks.methods` because it is the only method that needs torch/torchvision and
a weights file; it registers itself in ``MASK_METHODS`` when the registry is first used
(the registry's ``plugins``), so ``create_mask_method("model:ARCH")`` works as before.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from bgbias.core.sample import Sample
from bgbias.masks.methods import MASK_METHODS, MaskMethod


@MASK_METHODS.register("model")
class ModelMask(MaskMethod):
    """A torchvision segmentation network (deeplabv3_*, fcn_*, lraspp_*) with a local weights file.

    Foreground = pixels whose arg-max class is in ``fg_classes`` (indices, or names of the
    21 VOC categories of torchvision's weights); default every class except 0 (background).
    The network is built without any download (``weights_backbone=None``); ``download=True``
    fetches torchvision's default weights when no file is given. Loaded lazily, once per process.
    """

    name = "model"

    def __init__(self, arch: str = "deeplabv3_resnet50", weights: str | os.PathLike | None = None,
                 fg_classes: str | list | None = None, num_classes: int = 21, size: int = 520,
                 device: str = "cpu", download: bool = False, trust: bool = False):
        import torchvision
        valid = torchvision.models.list_models(module=torchvision.models.segmentation)
        if arch not in valid:
            raise ValueError(f"Unknown segmentation architecture {arch!r}; valid: {', '.join(valid)}.")
        if weights is None and not download:
            raise ValueError(f"model:{arch} needs a local weights file (--weights FILE); "
                             f"pass --download-weights to fetch torchvision's default weights instead.")
        if weights is not None and not Path(weights).is_file():
            raise ValueError(f"Weights file {weights} does not exist.")
        self.arch, self.weights, self.num_classes = arch, weights, int(num_classes)
        self.size, self.device, self.download, self.trust = int(size), device, bool(download), bool(trust)
        self.fg_classes = self._parse_classes(fg_classes)
        self._digest = _file_digest(weights) if weights is not None else "torchvision-default"
        self._net = None

    def _parse_classes(self, spec: str | list | None) -> tuple[int, ...]:
        from torchvision.models._meta import _VOC_CATEGORIES
        if spec is None or spec == "" or spec == "all":
            return tuple(range(1, self.num_classes))
        names = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec)
        out = []
        for c in names:
            if str(c).isdigit() and int(c) < self.num_classes:
                out.append(int(c))
            elif self.num_classes == len(_VOC_CATEGORIES) and c in _VOC_CATEGORIES:
                out.append(_VOC_CATEGORIES.index(c))
            else:
                valid = ", ".join(_VOC_CATEGORIES[1:]) if self.num_classes == len(_VOC_CATEGORIES) else ""
                raise ValueError(f"Unknown model class {c!r}; valid: indices 0..{self.num_classes - 1}"
                                 + (f" or {valid}." if valid else "."))
        return tuple(sorted(set(out)))

    def params(self) -> dict:
        return {"arch": self.arch, "weights": self._digest, "fg_classes": list(self.fg_classes),
                "num_classes": self.num_classes, "size": self.size}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_net": None}   # workers rebuild the network; never pickle it

    def network(self):
        """The eval-mode network, built on first use."""
        if self._net is None:
            import torchvision

            from bgbias.models.checkpoint import safe_torch_load
            kw: dict[str, Any] = {"weights_backbone": None, "num_classes": self.num_classes}
            if self.weights is None:
                kw = {"weights": "DEFAULT"}
                net = torchvision.models.get_model(self.arch, **kw)
            else:
                state = safe_torch_load(self.weights, trust=self.trust)
                state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
                if not isinstance(state, dict):
                    raise ValueError(f"Weights file {self.weights} holds no state dict.")
                if not self.arch.startswith("lraspp"):
                    kw["aux_loss"] = any(k.startswith("aux_classifier.") for k in state)
                net = torchvision.models.get_model(self.arch, **kw)
                try:
                    net.load_state_dict(state)
                except RuntimeError as e:
                    raise ValueError(f"Weights file {self.weights} does not fit {self.arch} with "
                                     f"{self.num_classes} classes: {str(e).splitlines()[1][:160]}") from None
            self._net = net.eval().to(self.device)
        return self._net

    def __call__(self, sample: Sample) -> np.ndarray:
        import torch
        import torch.nn.functional as F
        h, w = sample.size
        x = torch.from_numpy(sample.image).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.size:
            scale = self.size / min(h, w)
            x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                              align_corners=False, antialias=True)
        with torch.no_grad():
            logits = self.network()(x)["out"]
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        pred = logits.argmax(1)[0].cpu().numpy()
        return np.isin(pred, self.fg_classes).astype(np.float32)


def _file_digest(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
