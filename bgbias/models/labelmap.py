"""Label maps: turn a model's output classes into dataset classes (ImageNet-1000 -> IN-9, JSON file, identity).

A model predicts the arg-max over *its own* classes; the label map sends that
index to a dataset class index, or to -1 when the model class belongs to no
dataset class. -1 is always counted wrong (as in the IN-9 release's
``in_to_in9.json``), so an ImageNet model that says "pizza" on a dog is wrong.

Label maps are a registry (``LABEL_MAPS``; add one with ``@LABEL_MAPS.register``):
``imagenet-to-in9`` (built in, table from the IN-9 release), ``identity``
(model class i is dataset class i), ``by-name`` (model classes matched to the
data's class names), ``json:FILE`` or a bare path to a JSON file holding either
a list (``table[model_class] = dataset_class or -1``) or a dict
``{"<model class>": dataset_class_or_-1}`` (the release's ``in_to_in9.json``
format; missing keys map to -1). :func:`resolve_label_map` picks one when none
is given: identity, unless the model's class names (or its 1000 ImageNet
outputs on the 9 IN-9 classes) say otherwise.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bgbias.core.registry import Registry

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
BUILTIN = ("imagenet-to-in9", "identity", "by-name")


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


LABEL_MAPS: Registry[LabelMap] = Registry("label map")


@LABEL_MAPS.register("identity")
def identity(*, model_classes=None, data_classes=None) -> LabelMap:
    """Model class i is dataset class i."""
    return LabelMap("identity", None)


@LABEL_MAPS.register("imagenet-to-in9")
def imagenet_to_in9(*, model_classes=None, data_classes=None) -> LabelMap:
    """ImageNet-1000 classes to the 9 IN-9 classes (the release's table; 630 classes map to none)."""
    return LabelMap("imagenet-to-in9", tuple(int(v) for v in imagenet_to_in9_table()))


def normalise_class_name(name: str) -> str:
    """``Golden_Retriever`` / ``golden-retriever`` / ``golden retriever`` -> ``golden retriever``."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


@LABEL_MAPS.register("by-name")
def by_name(*, model_classes=None, data_classes=None) -> LabelMap:
    """Each model class to the dataset class of the same (normalised) name, others to none."""
    if not model_classes or not data_classes:
        raise ValueError("Label map 'by-name' needs the model's class names (a checkpoint, timm or Hugging Face "
                         "model that records them) and the data's.")
    index = {normalise_class_name(c): i for i, c in enumerate(data_classes)}
    table = tuple(index.get(normalise_class_name(c), OUTSIDE) for c in model_classes)
    missing = sorted(set(range(len(data_classes))) - set(table))
    if missing:
        raise ValueError(f"Label map 'by-name': the model has no class named {data_classes[missing[0]]!r} "
                         f"(model classes: {', '.join(list(model_classes)[:8])}...).")
    return LabelMap("by-name", table)


@LABEL_MAPS.register("json", path_arg=True)
def json_file(path: str, *, model_classes=None, data_classes=None) -> LabelMap:
    """A JSON list or ``{"model class": dataset class}`` object (the release's ``in_to_in9.json``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Label map file {path} does not exist.")
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


def load_label_map(spec: str | None, model_classes: list[str] | None = None,
                   data_classes: list[str] | None = None) -> LabelMap:
    """``imagenet-to-in9`` | ``identity`` | ``by-name`` | ``json:FILE`` | ``FILE.json``; None = identity."""
    if spec is None:
        return identity()
    head = spec.partition(":")[0]
    if head not in LABEL_MAPS:
        if not Path(spec).is_file():
            raise ValueError(f"Unknown label map {spec!r}; valid: {', '.join(BUILTIN)}, json:FILE, "
                             "or a path to a JSON file.")
        spec = f"json:{spec}"
    return LABEL_MAPS.create(spec, model_classes=model_classes, data_classes=data_classes)


def resolve_label_map(spec: str | None, data_classes: list[str], model_classes: list[str] | None = None,
                      num_outputs: int | None = None) -> tuple[LabelMap, str | None]:
    """The label map to use, and a note to print when it was chosen automatically.

    Explicit ``spec`` wins. Without one: ``by-name`` when the model's class names are not the data's in
    order but contain every data class by name; ``imagenet-to-in9`` when a 1000-output model meets the
    9 IN-9 classes; else identity.
    """
    if spec is not None:
        return load_label_map(spec, model_classes, data_classes), None
    norm = [normalise_class_name(c) for c in data_classes]
    if model_classes:
        mine = [normalise_class_name(c) for c in model_classes]
        if mine != norm and set(norm) <= set(mine):
            lm = by_name(model_classes=model_classes, data_classes=data_classes)
            pairs = ", ".join(f"{model_classes[i]}({i})->{data_classes[j]}"
                              for i, j in enumerate(lm.table) if j != OUTSIDE)
            rest = sum(1 for j in lm.table if j == OUTSIDE)
            return lm, (f"label map by-name (model class -> data class): {pairs}"
                        + (f"; {rest} other model classes map to none" if rest else ""))
    n = num_outputs or (len(model_classes) if model_classes else None)
    if n == 1000 and norm == list(IN9_CLASSES) and not (model_classes and set(norm) <= set(
            normalise_class_name(c) for c in model_classes)):
        return imagenet_to_in9(), "label map imagenet-to-in9 (a 1000-class ImageNet model on the 9 IN-9 classes)"
    return identity(), None
