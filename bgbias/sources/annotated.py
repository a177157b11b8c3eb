"""Sources from real annotations: Pascal VOC (``voc:DIR``), ImageNet-style boxes (``imagenet:DIR``), COCO (``coco:JSON:DIR``).

Each reads images plus boxes (and instance/class masks where the format has them), picks one
label per image and hands out :class:`~bgbias.core.sample.Sample` s whose ``boxes`` are the
label's annotation boxes (used by Only-BG-B/T). Images without masks get them from a mask
method (:func:`bgbias.masks.methods.with_masks`): VOC falls back to GrabCut, ImageNet-style is the
IN-9 recipe (one box, centre-crop rules, GrabCut). Problems found while indexing (malformed
XML/JSON entries, missing images or annotations) are listed in ``scan_dropped`` as
``"<rule>: <detail>"``; problems found while loading raise ``BadSample`` the same way.
The COCO reader is in :mod:`bgbias.sources.coco`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from bgbias.core.boxes import (
    IN9_RULES,
    BoxRules,
    VocAnnotation,
    _area,
    fit_boxes,
    parse_voc_xml,
)
from bgbias.core.io import IMAGE_EXTENSIONS, read_image
from bgbias.core.registry import natural_key
from bgbias.core.sample import BadSample, Box, Sample
from bgbias.sources.base import SOURCES, Source, unique_ids
from bgbias.sources.masked import with_masks


@dataclass(frozen=True)
class _Item:
    image: Path
    label: int
    boxes: tuple[Box, ...]
    size: tuple[int, int] | None = None     # (H, W) the annotation was written for
    extra: Any = None                       # per-format mask info


class AnnotatedSource(Source):
    """Indexed (image, label, boxes) items; ``_mask`` of a subclass gives the annotation mask or ``None``."""

    def __init__(self, spec: str, classes: list[str], items: list[_Item], ids: list[str], dropped: list[dict]):
        super().__init__()
        self.spec, self.classes, self._items = spec, classes, items
        self._ids, self._labels = ids, [it.label for it in items]
        self.scan_dropped = dropped

    def has_mask(self, i: int) -> bool:
        return False

    def _mask(self, i: int, item: _Item, h: int, w: int) -> np.ndarray | None:
        return None

    def load(self, i: int) -> Sample:
        item = self._items[i]
        try:
            image = read_image(item.image)
            h, w = image.shape[:2]
            boxes = fit_boxes(item.boxes, item.size, h, w)
            mask = self._mask(i, item, h, w)
        except BadSample as e:
            raise BadSample(e.reason, self._ids[i]) from None
        return Sample(image, mask, item.label, self._ids[i], boxes)


def _parse_classes(classes: str | list[str] | None, valid: list[str], what: str) -> list[str]:
    """``"dog,cat"`` -> ``["dog", "cat"]`` checked against ``valid``; ``None`` -> all valid names."""
    if classes is None or classes == "":
        return list(valid)
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]
    unknown = [c for c in names if c not in valid]
    if unknown:
        raise ValueError(f"Unknown {what} class {unknown[0]!r}; valid: {', '.join(sorted(valid, key=natural_key))}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Class list {names} names a class twice; give each class once.")
    return names


def _wrap(source: Source, masks_from: str | None, default: str, fill_only: bool, rules: BoxRules,
          box_mode: str | None, crop_rules: bool | None, cache: Any, weights: str | None = None,
          fg_classes: str | None = None, download: bool | None = None) -> Any:
    """Attach the mask method (``masks_from`` or the family's ``default``) and the box rules."""
    method = masks_from or default
    method_kw = {"weights": weights, "fg_classes": fg_classes, "download": download}
    if not method.startswith("model"):
        if any(v is not None for v in method_kw.values()):
            raise ValueError(f"weights, fg_classes and download apply only to model:ARCH masks, not {method!r}.")
        method_kw = {}
    if method == "given" and default == "given" and box_mode is None and crop_rules is None:
        return source   # the annotation masks need no wrapper
    return with_masks(source, method, rules=rules, box_mode=box_mode, crop_rules=crop_rules,
                      cache=cache if method != "given" else False,
                      fill_only=fill_only and masks_from is None, **method_kw)


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


class VOCSource(AnnotatedSource):
    """``DIR/JPEGImages`` + ``DIR/Annotations/*.xml``; label = class of the largest box among ``classes``.

    Foreground = every object of that class. Masks from ``SegmentationObject`` (instances, in
    XML order) or else ``SegmentationClass`` PNGs where present; the void band (255) that
    touches the object counts as foreground. Without a PNG the mask is ``None``.
    """

    def __init__(self, root: str | os.PathLike, classes: str | list[str] | None = None, split: str | None = None):
        root = Path(root).expanduser()
        ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
        if not ann_dir.is_dir() or not img_dir.is_dir():
            raise ValueError(f"VOC folder {root} needs Annotations/ and JPEGImages/ subfolders.")
        if split:
            listing = root / "ImageSets" / "Main" / f"{split}.txt"
            if not listing.is_file():
                raise ValueError(f"VOC split {split!r} has no list file {listing}.")
            stems = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
            xmls = [ann_dir / f"{s}.xml" for s in stems]
        else:
            xmls = sorted(ann_dir.glob("*.xml"))
        dropped: list[dict] = []
        parsed: list[tuple[str, Path, VocAnnotation]] = []
        for x in xmls:
            try:
                ann = parse_voc_xml(x)
            except BadSample as e:
                dropped.append({"path": x.name, "reason": e.reason})
                continue
            image = img_dir / (ann.filename or f"{x.stem}.jpg")
            if not image.is_file() and (img_dir / f"{x.stem}.jpg").is_file():
                image = img_dir / f"{x.stem}.jpg"
            if not image.is_file():
                dropped.append({"path": x.name, "reason": f"image_missing: {image.name} is not in JPEGImages"})
                continue
            parsed.append((x.stem, image, ann))
        seen = {o.name for _, _, a in parsed for o in a.objects}
        names = _parse_classes(classes, sorted(seen | (set(VOC_CLASSES) if classes else set()), key=natural_key),
                               "VOC")
        annotated = {x.stem for x in xmls} | {p[1].name for p in parsed}
        for f in [] if split else sorted(img_dir.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.stem not in annotated and f.name not in annotated:
                dropped.append({"path": f.name, "reason": "annotation_missing: no XML in Annotations"})
        items, stems, self.not_in_classes = [], [], 0
        for stem, image, ann in parsed:
            objs = [(k, o) for k, o in enumerate(ann.objects) if o.name in names]
            if not objs:
                self.not_in_classes += 1
                continue
            label_name = max(objs, key=lambda ko: _area(ko[1].box))[1].name
            chosen = [(k, o) for k, o in objs if o.name == label_name]
            items.append(_Item(image, names.index(label_name), tuple(o.box for _, o in chosen), ann.size,
                               (stem, tuple(k + 1 for k, _ in chosen), label_name)))
            stems.append(stem)
        self.root, self.split = root, split
        super().__init__(f"voc:{root}", names, items, unique_ids(stems), dropped)
        self._own_splits = voc_splits(root, split, [it.extra[0] for it in items])

    def _seg_file(self, item: _Item) -> tuple[Path | None, str]:
        stem = item.extra[0]
        for kind in ("SegmentationObject", "SegmentationClass"):
            f = self.root / kind / f"{stem}.png"
            if f.is_file():
                return f, kind
        return None, ""

    def has_mask(self, i: int) -> bool:
        return self._seg_file(self._items[i])[0] is not None

    def _mask(self, i: int, item: _Item, h: int, w: int) -> np.ndarray | None:
        f, kind = self._seg_file(item)
        if f is None:
            return None
        try:
            with Image.open(f) as im:
                seg = np.asarray(im if im.mode in ("P", "L") else im.convert("L"))
        except OSError as e:
            raise BadSample(f"mask_unreadable: {f.name} ({type(e).__name__})") from None
        if seg.shape != (h, w):
            raise BadSample(f"size_mismatch: {kind} {f.name} is {seg.shape[1]}x{seg.shape[0]}, image is {w}x{h}")
        _, instances, name = item.extra
        if kind == "SegmentationObject":
            fg = np.isin(seg, instances)
        elif name in VOC_CLASSES:
            fg = seg == VOC_CLASSES.index(name) + 1
        else:
            raise BadSample(f"mask_missing: class {name!r} has no index in SegmentationClass PNGs")
        near = cv2.dilate(fg.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        return (fg | ((seg == 255) & near)).astype(np.float32)

    def splits(self) -> list[str | None] | None:
        return self._own_splits

    def describe(self) -> dict:
        return {**super().describe(), "not_in_classes": self.not_in_classes}


def voc_splits(root: Path, split: str | None, stems: list[str]) -> list[str | None] | None:
    """VOC's own split per image: the ``split`` asked for (``train``/``val``), else membership of
    ``ImageSets/Main/train.txt`` / ``val.txt``; ``None`` where the release says nothing."""
    if split:
        return [split] * len(stems) if split in ("train", "val") else None
    lists = {}
    for name in ("train", "val"):
        f = root / "ImageSets" / "Main" / f"{name}.txt"
        if f.is_file():
            lists[name] = {line.split()[0] for line in f.read_text().splitlines() if line.strip()}
    if not lists:
        return None
    return [next((n for n, members in lists.items() if stem in members), None) for stem in stems]


@SOURCES.register("voc", path_arg=True, tags=["annotations"],
                  help="voc:DIR, Pascal VOC (JPEGImages + Annotations; segmentation PNGs where present, else GrabCut)")
def _voc(path: str = "", classes: str | list[str] | None = None, split: str | None = None,
         masks_from: str | None = None, box_mode: str | None = None, crop_rules: bool | None = None,
         cache: Any = True, weights: str | None = None, fg_classes: str | None = None,
         download: bool | None = None) -> Any:
    return _wrap(VOCSource(path, classes, split), masks_from, "grabcut", True, BoxRules(), box_mode, crop_rules,
                 cache, weights, fg_classes, download)


class ImageNetSource(AnnotatedSource):
    """``IMAGES/<class>/<image>`` with XML boxes at ``BOXES/<class>/<stem>.xml`` or ``BOXES/<stem>.xml``.

    Boxes are the XML objects named like the class folder (ImageNet wnids) or, if none is, all of them.
    """

    def __init__(self, images: str | os.PathLike, boxes: str | os.PathLike | None,
                 classes: str | list[str] | None = None):
        images = Path(images).expanduser()
        if not images.is_dir():
            raise ValueError(f"Image folder {images} does not exist or is not a folder.")
        if boxes is None or not Path(boxes).expanduser().is_dir():
            raise ValueError(f"imagenet:{images} needs boxes=ANNOTATIONS_DIR (--boxes), a folder of XML files; "
                             f"got {boxes!r}.")
        ann = Path(boxes).expanduser()
        folders = [d.name for d in sorted(images.iterdir(), key=lambda d: natural_key(d.name))
                   if d.is_dir() and not d.name.startswith(".")]
        names = _parse_classes(classes, folders, "image-folder")
        items, stems, dropped = [], [], []
        for label, cname in enumerate(names):
            for f in sorted((images / cname).iterdir()):
                if not f.is_file() or f.name.startswith(".") or f.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                rel = f"{cname}/{f.name}"
                xml = next((x for x in (ann / cname / f"{f.stem}.xml", ann / f"{f.stem}.xml") if x.is_file()), None)
                if xml is None:
                    dropped.append({"path": rel, "reason": "annotation_missing: no XML with boxes for this image"})
                    continue
                try:
                    a = parse_voc_xml(xml)
                except BadSample as e:
                    dropped.append({"path": rel, "reason": e.reason})
                    continue
                own = [o.box for o in a.objects if o.name == cname]
                bxs = tuple(own or [o.box for o in a.objects])
                if not bxs:
                    dropped.append({"path": rel, "reason": "no_box: the XML has no object boxes"})
                    continue
                items.append(_Item(f, label, bxs, a.size))
                stems.append(f.stem)
        super().__init__(f"imagenet:{images}", names, items, unique_ids(stems), dropped)
        self.boxes_dir = ann

    def describe(self) -> dict:
        return {**super().describe(), "boxes": str(self.boxes_dir)}


@SOURCES.register("imagenet", path_arg=True, tags=["annotations"],
                  help="imagenet:DIR boxes=ANNOTATIONS_DIR, class folders + XML boxes, the IN-9 GrabCut recipe")
def _imagenet(path: str = "", boxes: str | None = None, classes: str | list[str] | None = None,
              masks_from: str | None = None, box_mode: str | None = None, crop_rules: bool | None = None,
              cache: Any = True, weights: str | None = None, fg_classes: str | None = None,
              download: bool | None = None) -> Any:
    return _wrap(ImageNetSource(path, boxes, classes), masks_from, "grabcut", False, IN9_RULES, box_mode,
                 crop_rules, cache, weights, fg_classes, download)
