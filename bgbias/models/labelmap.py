"""Label maps: turn a model's output classes into dataset classes (ImageNet-1000 -> IN-9, JSON file, identity).

A model predicts the arg-max over *its own* classes; the label map sends that
index to a dataset class index, or to -1 when the model class belongs to no
dataset class. -1 is always counted wrong (as in the IN-9 release's
``in_to_in9.json``), so an ImageNet model that says "pizza" on a dog is wrong.

Specs: ``imagenet-to-in9`` (built in, table from the IN-9 release),
``identity`` (model class i is dataset class i), or a path to a JSON file
holding either a list (``table[model_class] = dataset_class or -1``) or a dict
``{"<model class>": dataset_class_or_-1}`` (the release's ``in_to_in9.json``
format; missing keys map to -1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

OUTSIDE = -1
"""Dataset index of a model class that maps to no dataset class (always wrong)."""

IN9_CLASSES = ("dog", "bird", "vehicle", "reptile", "carnivore", "insect", "instrument", "primate", "fish")

# IN-9 index -> inclusive ImageNet-1000 index ranges (reference/in9.md; WordNet ancestors).
_IMAGENET_TO_IN9 = {
    0: "151-170, 173-268",
    1: "7-24, 87-100, 127-146",
    2: "407-408, 428, 436, 444, 468, 511, 547, 555, 561, 565, 569, 573, 586, 603, 609, 612, 627, 656, 661, "
       "665, 670-671, 675, 690, 705, 717, 734, 751, 757, 791, 802-803, 817, 820, 829, 847, 864, 866-867, 870, 880",
    3: "33-68",
    4: "269-280, 286-299, 356-362, 387-388",
    5: "300-326",
    6: "401-402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593-594, 641-642, 683-684, 687, 699, "
       "776, 822, 875, 881, 889",
    7: "365-384",
    8: "0-6, 389-397",
}
BUILTIN = ("imagenet-to-in9", "identity")


def _ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def imagenet_to_in9_table() -> np.ndarray:
    """int64 [1000]: IN-9 index for each ImageNet-1000 class, -1 for the 630 classes outside IN-9."""
    table = np.full(1000, OUTSIDE, dtype=np.int64)
    for in9, text in _IMAGENET_TO_IN9.items():
        table[_ranges(text)] = in9
    return table


@dataclass(frozen=True)
class LabelMap:
    """``table[model_class] -> dataset class or -1``; ``table is None`` means identity."""

    name: str
    table: tuple[int, ...] | None = None

    @property
    def num_model_classes(self) -> int | None:
        return None if self.table is None else len(self.table)

    def check(self, num_outputs: int, num_classes: int) -> None:
        """Fail with one sentence when the model's output size or the targets don't fit the data."""
        if self.table is None:
            if num_outputs != num_classes:
                hint = ("--label-map imagenet-to-in9 (an ImageNet model on IN-9 data) or a JSON map"
                        if num_outputs == 1000 and num_classes == len(IN9_CLASSES) else
                        "--label-map FILE.json mapping each model output to a data class (-1 = none), or a model "
                        "trained on these classes")
                raise ValueError(
                    f"The model has {num_outputs} outputs but the data has {num_classes} classes; the "
                    f"'identity' label map needs them equal (use {hint}).")
            return
        if num_outputs != len(self.table):
            raise ValueError(
                f"The model has {num_outputs} outputs but label map '{self.name}' covers {len(self.table)} model "
                f"classes; pick a map made for this model (valid built-ins: {', '.join(BUILTIN)}, or a JSON file).")
        if self.name == "imagenet-to-in9" and num_classes != len(IN9_CLASSES):
            raise ValueError(f"Label map 'imagenet-to-in9' is for the 9 IN-9 classes ({', '.join(IN9_CLASSES)}) but "
                             f"the data has {num_classes} classes; use a JSON map for other data.")
        top = max(self.table)
        if top >= num_classes:
            raise ValueError(f"Label map '{self.name}' sends model classes to dataset class {top}, but the data has "
                             f"only {num_classes} classes (0..{num_classes - 1}).")

    def map(self, model_classes: torch.Tensor) -> torch.Tensor:
        """int64 model class indices (any shape) -> dataset class indices (-1 = outside the map)."""
        if self.table is None:
            return model_classes
        t = torch.tensor(self.table, dtype=torch.int64, device=model_classes.device)
        return t[model_classes]

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, K]`` logits -> ``[N]`` dataset predictions: arg-max over model classes, then mapped."""
        return self.map(logits.argmax(dim=-1))

    def members(self, dataset_class: int, num_outputs: int) -> list[int]:
        """Model classes that mean ``dataset_class`` (for attributing to the true label)."""
        if self.table is None:
            return [dataset_class] if dataset_class < num_outputs else []
        return [i for i, c in enumerate(self.table) if c == dataset_class]


def identity() -> LabelMap:
    return LabelMap("identity", None)


def load_label_map(spec: str | None) -> LabelMap:
    """``imagenet-to-in9`` | ``identity`` | ``FILE.json`` (list or ``{"model_idx": dataset_idx}``); None = identity."""
    if spec is None or spec == "identity":
        return identity()
    if spec == "imagenet-to-in9":
        return LabelMap(spec, tuple(int(v) for v in imagenet_to_in9_table()))
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"Unknown label map {spec!r}; valid: {', '.join(BUILTIN)}, or a path to a JSON file.")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"Label map file {path} is not valid JSON ({type(e).__name__}).") from None
    if isinstance(obj, list):
        values = obj
    elif isinstance(obj, dict):
        try:
            keys = {int(k): v for k, v in obj.items()}
        except ValueError:
            raise ValueError(f"Label map file {path} must have integer model-class keys like \"0\".") from None
        if not keys or min(keys) < 0:
            raise ValueError(f"Label map file {path} has no keys or a negative model class.")
        values = [keys.get(i, OUTSIDE) for i in range(max(keys) + 1)]
    else:
        raise ValueError(f"Label map file {path} must hold a list or an object, got {type(obj).__name__}.")
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= OUTSIDE for v in values):
        raise ValueError(f"Label map file {path} must map model classes to integer dataset classes or -1.")
    return LabelMap(str(path), tuple(int(v) for v in values))
