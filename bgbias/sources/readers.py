"""The built-in source readers: ``digits``, ``mnist:DIR``, ``folder:DIR``, ``in9:DIR``.

Loaded by the ``SOURCES`` registry on first use (a plugin, like the annotation families),
so this module may import :mod:`bgbias.sources.base` without a cycle, and a worker that unpickles
one of these sources imports it on its own.

Digit sources (``digits``, ``mnist``) are white-on-black intensity images.
bgbias turns each into a foreground/background pair: the mask is the stroke
intensity (soft, in [0, 1]) and the image is white strokes composited with
that mask (stroke core exactly 1) over a plain, muted per-sample colour (drawn from the sample id, so
it is fixed data, not tied to any class). So background variants change
something visible while the digit pixels (mask == 1) stay pure white.
Pass ``background="black"`` for the raw black backgrounds.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from bgbias.core.io import IMAGE_EXTENSIONS, read_image, read_mask
from bgbias.core.layout import find_mask, list_classes, list_items, list_splits
from bgbias.core.sample import BadSample, Sample, mask_box
from bgbias.core.seeding import numpy_rng
from bgbias.sources.base import SOURCES, Source, unique_ids

# ---------------------------------------------------------------- digit-like sources

def strokes_sample(intensity: np.ndarray, label: int, sample_id: str, background: str = "plain") -> Sample:
    """White strokes over a plain background; mask = stroke intensity (float32 HxW in [0, 1]).

    Intensity is stretched so the stroke core (>= 0.65) is exactly 1 and faint
    ink (<= 0.15) is exactly 0; the ramp between is a soft edge. The object box
    is the tight box of all ink (mask > 0).
    """
    from bgbias.core.compose import compose_np

    mask = np.clip((intensity.astype(np.float32) - 0.15) / 0.5, 0.0, 1.0)
    h, w = mask.shape
    if background == "black":
        bg = np.zeros((h, w, 3), np.uint8)
    elif background == "plain":
        rng = numpy_rng(0, sample_id, "plain-background")
        gray = rng.integers(40, 121)
        rgb = np.clip(gray + rng.integers(-25, 26, size=3), 0, 255).astype(np.uint8)
        bg = np.broadcast_to(rgb, (h, w, 3)).copy()
    else:
        raise ValueError(f"Unknown digit background {background!r}; valid: plain, black.")
    white = np.full((h, w, 3), 255, np.uint8)
    box = mask_box(mask, 0.0)        # all ink, so Only-BG-T never tiles faint stroke edges into the box
    return Sample(compose_np(white, bg, mask), mask, int(label), sample_id, (box,) if box else ())


def _upscale(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return img.astype(np.float32)
    return cv2.resize(img.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


class DigitsSource(Source):
    """scikit-learn's 1,797 handwritten digits (8x8, 0..16), upscaled bilinearly to ``size``."""

    def __init__(self, size: int = 32, background: str = "plain"):
        super().__init__()
        from sklearn.datasets import load_digits

        if not 8 <= int(size) <= 1024:
            raise ValueError(f"digits size must be between 8 and 1024 pixels, got {size}.")
        d = load_digits()
        self.size, self.background = int(size), background
        self.spec = "digits" if self.size == 32 else f"digits:{self.size}"
        self._images = (d.images / 16.0).astype(np.float32)
        self._labels = [int(v) for v in d.target]
        self._ids = [f"digits_{i:05d}" for i in range(len(self._labels))]
        self.classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

    def load(self, i):
        return strokes_sample(_upscale(self._images[i], self.size), self._labels[i], self._ids[i], self.background)

    def describe(self):
        return {**super().describe(), "size": self.size, "background": self.background}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) -> uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not a uint8 IDX file")
        dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise ValueError(f"Cannot read MNIST IDX file {path} ({e}).") from None


class MnistSource(Source):
    """MNIST-format IDX files in a folder: ``train-*`` and/or ``t10k-*``, gzipped or not.

    Images are read lazily (on first ``load``), so workers and manifests stay light.
    """

    SPLITS = ("train", "t10k")
    OWN_SPLIT = {"train": "train", "t10k": "val"}     # MNIST's test set is the build's validation split

    def __init__(self, folder: str, background: str = "plain", splits: Sequence[str] = SPLITS):
        super().__init__()
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ValueError(f"MNIST folder {folder!r} does not exist or is not a folder.")
        self.spec, self.background = f"mnist:{folder}", background
        self._parts: list[tuple[str, Path, int]] = []
        self._ids, self._labels = [], []
        for split in splits:
            imgs, labs = self._find(root, split, "images-idx3-ubyte"), self._find(root, split, "labels-idx1-ubyte")
            if imgs is None or labs is None:
                continue
            labels = _read_idx(labs)
            self._parts.append((split, imgs, len(self._ids)))
            self._ids += [f"mnist_{split}_{i:05d}" for i in range(len(labels))]
            self._labels += [int(v) for v in labels]
        if not self._parts:
            raise ValueError(f"No MNIST files in {folder!r}; expected train-images-idx3-ubyte[.gz] + "
                             "train-labels-idx1-ubyte[.gz] and/or the t10k-* pair.")
        self.classes = [str(i) for i in range(10)]
        self._cache: dict[str, np.ndarray] = {}

    @staticmethod
    def _find(root: Path, split: str, stem: str) -> Path | None:
        for name in (f"{split}-{stem}", f"{split}-{stem}.gz", f"{split}-{stem.replace('-idx', '.idx')}",
                     f"{split}-{stem.replace('-idx', '.idx')}.gz"):
            if (root / name).is_file():
                return root / name
        return None

    def splits(self) -> list[str | None]:
        out: list[str | None] = []
        for k, (split, _, start) in enumerate(self._parts):
            end = self._parts[k + 1][2] if k + 1 < len(self._parts) else len(self._ids)
            out += [self.OWN_SPLIT[split]] * (end - start)
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def load(self, i):
        split, path, start = max((p for p in self._parts if p[2] <= i), key=lambda p: p[2])
        if split not in self._cache:
            self._cache[split] = _read_idx(path)
        img = self._cache[split][i - start].astype(np.float32) / 255.0
        return strokes_sample(img, self._labels[i], self._ids[i], self.background)


# ---------------------------------------------------------------- folders

def _class_folders(root: Path) -> list[Path]:
    from bgbias.core.registry import natural_key

    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


class FolderSource(Source):
    """``DIR/<class>/**/<image>``; masks at the same relative path under ``masks`` (.png or .npy).

    Non-image files and files outside class folders are listed in
    ``scan_dropped``; a missing, unreadable or wrong-size mask is a
    :class:`BadSample` at load time. Without ``masks`` the mask is ``None``
    (a mask method must supply it).
    """

    def __init__(self, folder: str, masks: str | None = None):
        super().__init__()
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ValueError(f"Image folder {folder!r} does not exist or is not a folder.")
        self.root, self.spec = root, f"folder:{folder}"
        self.masks = Path(masks).expanduser() if masks else None
        if self.masks is not None and not self.masks.is_dir():
            raise ValueError(f"Mask folder {masks!r} does not exist or is not a folder.")
        self.classes, self._files, self._labels = [], [], []
        for f in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
            self.scan_dropped.append({"path": f.name, "reason": "file is not inside a class folder",
                                      "rule": "outside_class_folder", "values": {"file": f.name}})
        for label, d in enumerate(_class_folders(root)):
            self.classes.append(d.name)
            for f in sorted(p for p in d.rglob("*") if p.is_file()):
                rel = f.relative_to(root)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    self.scan_dropped.append({"path": rel.as_posix(), "reason": f"not an image file ({f.suffix or 'no extension'})",
                                              "rule": "not_an_image", "values": {"file": rel.as_posix()}})
                    continue
                self._files.append(rel)
                self._labels.append(label)
        if not self.classes:
            raise ValueError(f"Image folder {folder!r} has no class subfolders; expected DIR/<class>/<image>.")
        self._ids = unique_ids(rel.with_suffix("").as_posix() for rel in self._files)

    def _mask_file(self, rel: Path) -> Path | None:
        for cand in (rel.with_suffix(".png"), rel.with_suffix(".npy"), rel):
            if (self.masks / cand).is_file():
                return self.masks / cand
        return None

    def load(self, i):
        rel = self._files[i]
        file = rel.as_posix()
        try:
            image = read_image(self.root / rel)
        except BadSample as e:
            raise BadSample(e.drop.detail, self._ids[i], rule="image_unreadable", values={"file": file}) from None
        mask = None
        if self.masks is not None:
            mf = self._mask_file(rel)
            if mf is None:
                raise BadSample(f"no mask file for {file} in {self.masks} (looked for {rel.with_suffix('.png').as_posix()}"
                                f" and {rel.with_suffix('.npy').as_posix()})", self._ids[i], rule="mask_missing",
                                values={"file": file, "mask_folder": str(self.masks)})
            try:
                mask = read_mask(mf, image.shape[:2])
            except BadSample as e:
                rule = "mask_size" if "differs from image size" in e.drop.detail else "mask_unreadable"
                raise BadSample(f"{e.drop.detail} ({mf.relative_to(self.masks).as_posix()} for {file})", self._ids[i],
                                rule=rule, values={"file": file, "mask_file": str(mf)}) from None
        return Sample(image, mask, self._labels[i], self._ids[i])

    def describe(self):
        return {**super().describe(), "masks": str(self.masks) if self.masks else None}


class IN9Source(Source):
    """The IN-9 release layout (or a build): ``DIR/<variant>/<split>/<NN_class>/*`` + ``DIR/fg_mask/<split>/...``.

    Every split present is read (``train`` first) and kept as the sample's own split; files are
    listed by :func:`bgbias.core.layout.list_items`, the one reader of the layout.
    """

    def __init__(self, folder: str, variant: str = "original"):
        super().__init__()
        root = Path(folder).expanduser()
        if not list_splits(root, variant) or not (root / variant).is_dir():
            raise ValueError(f"{folder!r} is not an IN-9 folder: {variant}/<split>/ (e.g. {variant}/val/) is missing.")
        self.root, self.variant, self.spec = root, variant, f"in9:{folder}"
        self.classes = list_classes(root, variant)
        self._items = list_items(root, variant, split=None)
        self._labels = [it.label for it in self._items]
        self._ids = unique_ids(it.id for it in self._items)
        for d in sorted(p for p in (root / variant).glob("*/*") if p.is_dir()):
            for f in sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")):
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    self.scan_dropped.append({"path": f.relative_to(root).as_posix(),
                                              "reason": f"not an image file ({f.suffix or 'no extension'})",
                                              "rule": "not_an_image", "values": {"file": f.relative_to(root).as_posix()}})

    def splits(self) -> list[str | None]:
        return [it.split for it in self._items]

    def load(self, i):
        it = self._items[i]
        try:
            image = read_image(it.path)
            mf = find_mask(self.root, it)
            if not mf.is_file():
                raise BadSample(f"no fg_mask file for {it.split}/{it.path.parent.name}/{it.path.name}",
                                rule="mask_missing", values={"file": f"{it.split}/{it.path.parent.name}/{it.path.name}"})
            mask = read_mask(mf, image.shape[:2])
        except BadSample as e:
            raise e.for_id(self._ids[i]) from None
        return Sample(image, mask, self._labels[i], self._ids[i])


# ---------------------------------------------------------------- registry

@SOURCES.register("digits", help="scikit-learn's 1,797 digits, no download; digits:SIZE (default 32)")
def _digits(size: str | int = 32, background: str = "plain") -> Source:
    try:
        size = int(size)
    except ValueError:
        raise ValueError(f"digits takes an integer size (digits:64), got {size!r}.") from None
    return DigitsSource(size, background)


@SOURCES.register("mnist", path_arg=True, help="mnist:DIR with MNIST IDX files (train-* and/or t10k-*, .gz or not)")
def _mnist(folder: str = "", background: str = "plain") -> Source:
    return MnistSource(folder, background)


@SOURCES.register("folder", path_arg=True, help="folder:DIR with DIR/<class>/<image>; masks=DIR with the same relative paths")
def _folder(folder: str = "", masks: str | None = None) -> Source:
    return FolderSource(folder, masks)


@SOURCES.register("in9", path_arg=True, help="in9:DIR, the IN-9 release layout (original/val/<NN_class> + fg_mask)")
def _in9(folder: str = "", variant: str = "original") -> Source:
    return IN9Source(folder, variant)

