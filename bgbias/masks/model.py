"""The ``model:<arch>`` mask method: a torchvision segmentation network with a local weights file.

Apart from :mod:`bgbias.masks.methods` because it is the only method that needs torch/torchvision and
a weights file; it registers itself in ``MASK_METHODS`` when the registry is first used
(the registry's ``plugins``), so ``create_mask_method("model:ARCH")`` works as before.
"""
from __future__ import annotations

import hashlib
import os
import textwrap
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
    fetches torchvision's default weights when no file is given. Loaded lazily, once per process,
    on ``device`` (``auto``: the GPU when there is one). :meth:`masks` runs ``batch_size`` photos per
    forward (photos of the same network input size go together, so a batch gives the one-by-one masks).
    """

    name = "model"

    def __init__(self, arch: str = "deeplabv3_resnet50", weights: str | os.PathLike | None = None,
                 fg_classes: str | list | None = None, num_classes: int = 21, size: int = 520,
                 device: str = "auto", download: bool = False, trust: bool = False, batch_size: int = 8):
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
        if int(batch_size) < 1:
            raise ValueError(f"model mask batch_size must be >= 1, got {batch_size}.")
        import torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "", "auto") else str(device)
        self.size, self.download, self.trust = int(size), bool(download), bool(trust)
        self.batch_size = int(batch_size)
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
                    detail = textwrap.shorten(str(e).splitlines()[1].strip(), 160, placeholder=" ...")
                    raise ValueError(f"Weights file {self.weights} does not fit {self.arch} with "
                                     f"{self.num_classes} classes: {detail}") from None
            self._net = net.eval().to(self.device)
        return self._net

    def __call__(self, sample: Sample) -> np.ndarray:
        return self.masks([sample])[0]

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        if not self.size:
            return h, w
        scale = self.size / min(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))

    def masks(self, samples: list[Sample]) -> list[np.ndarray]:
        """Every sample's mask, ``batch_size`` photos of the same network input size per forward on ``device``."""
        import torch
        import torch.nn.functional as F
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        groups: dict[tuple, list[int]] = {}
        for k, s in enumerate(samples):
            groups.setdefault((*s.size, *self._input_size(*s.size)), []).append(k)
        out: list[np.ndarray | None] = [None] * len(samples)
        for (h, w, ih, iw), members in groups.items():
            for at in range(0, len(members), self.batch_size):
                chunk = members[at:at + self.batch_size]
                x = torch.from_numpy(np.stack([samples[k].image for k in chunk])).to(self.device)
                x = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
                if (ih, iw) != (h, w):
                    x = F.interpolate(x, size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)
                with torch.no_grad():
                    logits = F.interpolate(self.network()(x)["out"], size=(h, w), mode="bilinear", align_corners=False)
                fg = torch.isin(logits.argmax(1), torch.tensor(self.fg_classes, device=self.device))
                for k, m in zip(chunk, fg.cpu().numpy()):
                    out[k] = m.astype(np.float32)
        return out  # type: ignore[return-value]


def _file_digest(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
