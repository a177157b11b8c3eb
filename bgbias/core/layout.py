"""The on-disk layout shared with the official IN-9 release.

``OUT/<variant>/val/<NN_class>/<id>.png``, ``OUT/fg_mask/val/<NN_class>/<id>.npy``,
``OUT/manifest.json``. Build writes it; evaluation, the challenge and training
read it (and read the official release, whose images are ``.JPEG``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bgbias.core.io import IMAGE_EXTENSIONS

SPLIT = "val"
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


def image_path(out: Path, variant_dir: str, class_dir: str, sample_id: str, ext: str = ".png") -> Path:
    return safe_join(out, variant_dir, SPLIT, class_dir, sample_id + ext)


def mask_path(out: Path, class_dir: str, sample_id: str) -> Path:
    return safe_join(out, MASK_DIR, SPLIT, class_dir, sample_id + ".npy")


@dataclass(frozen=True)
class Item:
    """One image of one variant in a layout folder."""

    path: Path
    label: int
    class_name: str
    id: str          # file stem, shared across variants and with the fg_mask file


def list_variant_dirs(root: str | Path) -> list[str]:
    """Variant folder names present under ``root`` (those with a ``val`` subfolder), except ``fg_mask``."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / SPLIT).is_dir() and p.name != MASK_DIR)


def list_classes(root: str | Path, variant: str = "original") -> list[str]:
    """Class names by index from the ``NN_name`` folders of one variant."""
    base = Path(root) / variant / SPLIT
    if not base.is_dir():
        raise ValueError(f"{base} does not exist; expected the IN-9 layout <variant>/val/<NN_class>/.")
    classes: dict[int, str] = {}
    for d in sorted(base.iterdir()):
        if d.is_dir():
            idx, name = parse_class_dirname(d.name)
            classes[idx] = name
    if not classes:
        raise ValueError(f"{base} has no class folders.")
    if sorted(classes) != list(range(len(classes))):
        raise ValueError(f"Class folders in {base} are not numbered 0..{len(classes) - 1}: {sorted(classes)}.")
    return [classes[i] for i in range(len(classes))]


def list_items(root: str | Path, variant: str) -> list[Item]:
    """Every image of ``variant`` in id order within class order (deterministic)."""
    base = Path(root) / variant / SPLIT
    if not base.is_dir():
        raise ValueError(f"Variant {variant!r} is missing: {base} does not exist.")
    items: list[Item] = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        idx, name = parse_class_dirname(d.name)
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                items.append(Item(f, idx, name, f.stem))
    return items


def find_mask(root: str | Path, item: Item) -> Path:
    return Path(root) / MASK_DIR / SPLIT / item.path.parent.name / (item.id + ".npy")
