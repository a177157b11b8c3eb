"""The on-disk layout shared with the official IN-9 release: the one reader and writer of its paths.

``OUT/<variant>/<split>/<NN_class>/<id>.png``, ``OUT/fg_mask/<split>/<NN_class>/<id>.npy``,
``OUT/manifest.json``, with ``split`` ``train`` and/or ``val``. Build writes it;
evaluation, the challenge, saliency, training, the ``in9:DIR`` source and the report
read it through :func:`list_items` (and read the official release, whose images are ``.JPEG``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bgbias.core.io import IMAGE_EXTENSIONS, read_json

SPLITS = ("train", "val")      # the splits a build writes, in this order
SPLIT = "val"                  # the default split: what audits read, and what a build without --holdout writes
MASK_DIR = "fg_mask"
MANIFEST = "manifest.json"
SIGNAL_GROUPS = ("fg+bg+", "fg+bg-", "fg-bg+", "fg-bg-")   # paper 001: right on Only-FG? on Only-BG-T?
# The release's 8 variant folders, in the paper's order. Defined here (not in variants.py) so that
# readers of the layout such as the report and its plots need not import torch.
IN9_VARIANTS = ("original", "only_bg_b", "only_bg_t", "no_fg", "only_fg", "mixed_same", "mixed_rand", "mixed_next")
_CLASS_DIR = re.compile(r"^(\d+)_(.+)$")


def sanitize_name(name: str) -> str:
    """A class or id name safe as one path component: no separators, no dots-only, no control chars."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("._")
    return s[:80] or "unnamed"


def class_dirname(index: int, name: str, num_classes: int = 10) -> str:
    """``00_dog``: zero-padded index (at least 2 digits) + sanitised name."""
    width = max(2, len(str(max(num_classes - 1, 0))))
    return f"{index:0{width}d}_{sanitize_name(name)}"


def parse_class_dirname(dirname: str) -> tuple[int, str]:
    m = _CLASS_DIR.match(dirname)
    if not m:
        raise ValueError(f"Class folder {dirname!r} is not of the form NN_name (e.g. 00_dog).")
    return int(m.group(1)), m.group(2)


def safe_join(root: Path, *parts: str) -> Path:
    """Join and refuse any result outside ``root`` (labels and ids never escape OUT)."""
    root = Path(root).resolve()
    p = root.joinpath(*parts).resolve()
    if p != root and root not in p.parents:
        raise ValueError(f"Path {p} would fall outside the output folder {root}.")
    return p


def check_split(split: str) -> str:
    """A split name safe as one folder name (``train``, ``val`` or the release's own), else one clear sentence."""
    if not isinstance(split, str) or sanitize_name(split) != split:
        raise ValueError(f"Split {split!r} is not a plain folder name such as 'train' or 'val'.")
    return split


def image_path(out: Path, variant_dir: str, class_dir: str, sample_id: str, ext: str = ".png",
               split: str = SPLIT) -> Path:
    return safe_join(out, variant_dir, check_split(split), class_dir, sample_id + ext)


def mask_path(out: Path, class_dir: str, sample_id: str, split: str = SPLIT) -> Path:
    return safe_join(out, MASK_DIR, check_split(split), class_dir, sample_id + ".npy")


@dataclass(frozen=True)
class Item:
    """One image of one variant in a layout folder."""

    path: Path
    label: int
    class_name: str
    id: str          # file stem, shared across variants and with the fg_mask file
    split: str = SPLIT


def read_manifest(root: str | Path) -> dict | None:
    """The build's ``manifest.json`` (None for a folder without one, such as the official IN-9 release)."""
    p = Path(root) / MANIFEST
    return read_json(p) if p.is_file() else None


def _split_dirs(variant_dir: Path) -> list[str]:
    """Split folders of one variant folder: ``train``/``val`` first, then any other (sorted)."""
    if not variant_dir.is_dir():
        return []
    names = [p.name for p in variant_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [s for s in SPLITS if s in names] + sorted(n for n in names if n not in SPLITS)


def list_splits(root: str | Path, variant: str = "original") -> list[str]:
    """The splits present for ``variant`` (``train`` before ``val``); with a missing variant, those of ``fg_mask``."""
    root = Path(root)
    return _split_dirs(root / variant) or _split_dirs(root / MASK_DIR)


def list_variant_dirs(root: str | Path, split: str | None = None) -> list[str]:
    """Variant folders under ``root`` (those with a split subfolder, or with ``split``), except ``fg_mask``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != MASK_DIR and not p.name.startswith(".")
                  and ((p / split).is_dir() if split else any(s in SPLITS for s in _split_dirs(p))))


def require_split(root: str | Path, split: str, variant: str = "original") -> None:
    """One clear sentence when ``split`` is not in the layout (the training split says how to make one)."""
    present = list_splits(root, variant)
    if split in present:
        return
    hint = (" Rebuild it with --holdout F (e.g. --holdout 0.25) to hold out a fraction of each class for 'val' "
            "and train on the rest." if split == "train" else "")
    raise ValueError(f"{root} has no {split!r} split (present: {', '.join(present) or 'none'}).{hint}")


def _class_dirs(root: Path, variant: str, split: str | None) -> list[Path]:
    splits = [split] if split else _split_dirs(root / variant)
    return [d for s in splits if (root / variant / s).is_dir() for d in sorted((root / variant / s).iterdir())
            if d.is_dir() and not d.name.startswith(".")]


def list_classes(root: str | Path, variant: str = "original", split: str | None = None) -> list[str]:
    """Class names by index: the manifest's list when there is one, else the ``NN_name`` folders of all splits.

    A class with no image in one split (or none kept at all) keeps its index this way.
    """
    root = Path(root)
    manifest = root / MANIFEST
    if manifest.is_file():
        import json

        try:
            classes = json.loads(manifest.read_text()).get("classes")
        except (ValueError, OSError):
            classes = None
        if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
            return list(classes)
    base = root / variant / (split or "<split>")
    classes: dict[int, str] = {}
    for d in _class_dirs(root, variant, split):
        idx, name = parse_class_dirname(d.name)
        if classes.setdefault(idx, name) != name:
            raise ValueError(f"Class {idx} is called {classes[idx]!r} in one split and {name!r} in another of {root}.")
    if not (root / variant).is_dir() or (split and not (root / variant / split).is_dir()):
        raise ValueError(f"{base} does not exist; expected the IN-9 layout <variant>/<split>/<NN_class>/.")
    if not classes:
        raise ValueError(f"{base} has no class folders.")
    if sorted(classes) != list(range(len(classes))):
        raise ValueError(f"Class folders in {base} are not numbered 0..{len(classes) - 1}: {sorted(classes)}.")
    return [classes[i] for i in range(len(classes))]


def list_items(root: str | Path, variant: str, split: str | None = SPLIT) -> list[Item]:
    """Every image of ``variant`` in ``split`` (``None``: every split, ``train`` first), in id order within
    class order (deterministic). Hidden and non-image files are ignored."""
    root = Path(root)
    base = root / variant / (split or "")
    if not base.is_dir():
        if (root / variant).is_dir() and split:
            raise ValueError(f"Variant {variant!r} in {root} has no {split!r} split "
                             f"(present: {', '.join(_split_dirs(root / variant)) or 'none'}); pick one with --split.")
        raise ValueError(f"Variant {variant!r} is missing: {base} does not exist.")
    items: list[Item] = []
    for d in _class_dirs(root, variant, split):
        idx, name = parse_class_dirname(d.name)
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                items.append(Item(f, idx, name, f.stem, d.parent.name))
    return items


def find_mask(root: str | Path, item: Item) -> Path:
    """The ``fg_mask`` file of ``item`` (same split, class folder and stem)."""
    return Path(root) / MASK_DIR / item.split / item.path.parent.name / (item.id + ".npy")
