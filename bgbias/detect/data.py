"""Detection sources: images with every annotated instance (COCO json, Pascal VOC, a folder + COCO json).

A :class:`DetSample` is one image with all its ground truth: COCO annotation dicts
(boxes and categories exactly as annotated, ids kept), the foreground mask (the union of
every non-crowd instance of the kept categories) and the crowd regions (``iscrowd``:
evaluated as "ignore" by COCO tools, so never foreground, never pasted elsewhere).
Images with no annotations are kept: a detection benchmark needs negatives too.

Families (registry ``DET_SOURCES``): ``coco:ANNOTATIONS_JSON[:IMAGES_DIR]``, ``voc:DIR``
(``SegmentationObject`` instance masks where present, else GrabCut per box),
``folder:DIR`` (``DIR/annotations.json`` + images in ``DIR/images`` or ``DIR``, e.g. one
variant of a detection build), and the synthetic ``digits-det`` set
(:mod:`bgbias.detect.synthetic`). Broken entries are named skips (``scan_dropped``), never crashes.
"""
from __future__ import annotations

import json
import math
import os
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bgbias.core.boxes import parse_voc_xml
from bgbias.core.io import read_image
from bgbias.core.registry import Registry, natural_key
from bgbias.core.sample import BadSample, Box, Sample
from bgbias.masks.methods import grabcut_from_boxes
from bgbias.sources.base import IndexedSource, unique_ids

DET_SOURCES: Registry = Registry("detection source", plugins=("bgbias.detect.synthetic",))


@dataclass(frozen=True)
class DetSample:
    """One image with all its ground truth.

    image: uint8 HxWx3 RGB. mask: float32 HxW in [0, 1], union of the non-crowd instances.
    crowd: bool HxW, the ``iscrowd`` regions. annotations: COCO dicts (``id``, ``image_id``,
    ``category_id``, ``bbox`` [x, y, w, h], ``area``, ``iscrowd``, optional ``segmentation``).
    notes: per-image remarks for the manifest (e.g. a GrabCut that fell back to the box).
    """

    image: np.ndarray
    mask: np.ndarray
    crowd: np.ndarray
    id: str
    image_id: int
    annotations: tuple[dict, ...]
    split: str = "val"
    notes: tuple[str, ...] = field(default=())

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def boxes(self, include_crowd: bool = True) -> tuple[Box, ...]:
        """Integer pixel boxes (x0, y0, x1, y1), x1/y1 exclusive, covering every annotated box."""
        out = []
        for a in self.annotations:
            if a.get("iscrowd") and not include_crowd:
                continue
            x, y, w, h = a["bbox"]
            out.append((int(math.floor(x)), int(math.floor(y)), int(math.ceil(x + w)), int(math.ceil(y + h))))
        return tuple(out)

    def as_sample(self) -> Sample:
        """The classification view (label 0): what the variant recipes and mean fits take."""
        return Sample(self.image, self.mask, 0, self.id, self.boxes(include_crowd=False))


class DetSource(IndexedSource):
    """Indexed detection images: cheap ``ids()``/``splits()``, one :class:`DetSample` per ``load(i)``."""

    categories: list[dict] = []
    _splits: list[str]

    def splits(self) -> list[str]:
        return list(self._splits)

    @abstractmethod
    def load(self, i: int) -> DetSample:
        """Decode image ``i``; raises BadSample with a reason when it cannot be used."""

    def vocabulary(self) -> dict:
        return {"categories": self.categories}


def _coco_bbox(b: Any) -> list[float]:
    vals = [float(v) for v in b]
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals) or vals[2] < 0 or vals[3] < 0:
        raise ValueError(f"bbox {b!r} is not 4 finite numbers [x, y, w, h] with w, h >= 0")
    return vals


def _box_region(bbox: list[float], h: int, w: int) -> np.ndarray:
    x, y, bw, bh = bbox
    m = np.zeros((h, w), bool)
    m[max(0, int(math.floor(y))):max(0, min(h, int(math.ceil(y + bh)))),
      max(0, int(math.floor(x))):max(0, min(w, int(math.ceil(x + bw))))] = True
    return m


def _grabcut_instance(image: np.ndarray, bbox: list[float], seed: int) -> tuple[np.ndarray, str]:
    """One instance's mask by GrabCut from its box; the box itself when GrabCut fails (with the reason)."""
    h, w = image.shape[:2]
    x, y, bw, bh = bbox
    box = (int(math.floor(x)), int(math.floor(y)), int(math.ceil(x + bw)), int(math.ceil(y + bh)))
    try:
        return grabcut_from_boxes(image, (box,), seed=seed) > 0.5, ""
    except BadSample as e:
        return _box_region(bbox, h, w), f"grabcut fell back to the box ({e.reason})"


class CocoDetSource(DetSource):
    """A COCO instances json + image folder, every instance of the kept ``classes`` as ground truth.

    Masks: the annotation's segmentation (polygons, RLE) via pycocotools; an annotation without
    one gets GrabCut from its box. ``classes``: comma list of category names (default: all).
    """

    def __init__(self, ann_file: str | os.PathLike, images: str | os.PathLike | None = None,
                 classes: str | list[str] | None = None, split: str = "val", seed: int = 0):
        ann_file = Path(ann_file).expanduser()
        try:
            data = json.loads(ann_file.read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"COCO annotation file {ann_file} does not exist.") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"COCO annotation file {ann_file} is not valid JSON ({str(e)[:80]}).") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise ValueError(f"COCO annotation file {ann_file} lacks the 'images', 'annotations' and 'categories' "
                             "lists of the instances format.")
        super().__init__()
        self.root = Path(images).expanduser() if images else ann_file.parent
        cats = [{"id": int(c["id"]), "name": str(c["name"])} for c in data["categories"]
                if isinstance(c, dict) and "id" in c and "name" in c]
        if classes:
            names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
            known = {c["name"] for c in cats}
            bad = [n for n in names if n not in known]
            if bad:
                raise ValueError(f"Unknown COCO category {bad[0]!r}; valid: "
                                 f"{', '.join(sorted(known, key=natural_key))}.")
            cats = [c for c in cats if c["name"] in names]
        self.categories = sorted(cats, key=lambda c: c["id"])
        keep = {c["id"] for c in self.categories}
        imgs: dict[int, dict] = {}
        for im in data["images"]:
            try:
                imgs[int(im["id"])] = {"file": str(im["file_name"]), "h": int(im["height"]), "w": int(im["width"])}
            except (KeyError, TypeError, ValueError):
                self.scan_dropped.append({"path": str(im)[:60], "reason": "json_malformed: image entry lacks id, "
                                                                           "file_name, height or width"})
        per_image: dict[int, list[dict]] = {k: [] for k in imgs}
        broken: dict[int, str] = {}
        for a in data["annotations"]:
            try:
                image_id, cat = int(a["image_id"]), int(a["category_id"])
                ann = {"id": int(a["id"]), "image_id": image_id, "category_id": cat, "bbox": _coco_bbox(a["bbox"]),
                       "iscrowd": int(bool(a.get("iscrowd", 0)))}
            except (KeyError, TypeError, ValueError) as e:
                image_id = a.get("image_id") if isinstance(a, dict) else None
                reason = f"json_malformed: annotation {a.get('id') if isinstance(a, dict) else a!r} ({str(e)[:60]})"
                if isinstance(image_id, int) and image_id in imgs:
                    broken.setdefault(image_id, reason)   # its image would lose ground truth: drop the image
                else:
                    self.scan_dropped.append({"id": str(a)[:40], "reason": reason})
                continue
            if image_id not in imgs:
                self.scan_dropped.append({"id": str(ann["id"]), "reason": f"image_missing: annotation {ann['id']} "
                                                                          f"refers to image id {image_id}"})
                continue
            if cat not in keep:
                continue
            if a.get("segmentation"):
                ann["segmentation"] = a["segmentation"]
            ann["area"] = float(a.get("area") or ann["bbox"][2] * ann["bbox"][3])
            per_image[image_id].append(ann)
        self._items: list[tuple[int, dict, list[dict]]] = []
        stems = []
        for image_id, im in imgs.items():
            path = self.root / im["file"]
            if image_id in broken:
                self.scan_dropped.append({"path": im["file"], "reason": broken[image_id]})
            elif not path.is_file():
                self.scan_dropped.append({"path": im["file"], "reason": f"image_missing: {im['file']} is not in "
                                                                        f"{self.root}"})
            else:
                self._items.append((image_id, im, sorted(per_image[image_id], key=lambda d: d["id"])))
                stems.append(Path(im["file"]).stem)
        self._ids = unique_ids(stems)
        self._splits = [split] * len(self._ids)
        self.seed = int(seed)
        self.spec = f"coco:{ann_file}:{self.root}"

    def load(self, i: int) -> DetSample:
        from bgbias.sources.coco import decode_segmentation

        image_id, im, anns = self._items[i]
        try:
            image = read_image(self.root / im["file"])
        except BadSample as e:
            raise BadSample(e.reason, self._ids[i]) from None
        h, w = image.shape[:2]
        if (h, w) != (im["h"], im["w"]):
            raise BadSample(f"size_mismatch: the json says {im['w']}x{im['h']}, the image is {w}x{h}", self._ids[i])
        fg, crowd, notes = np.zeros((h, w), bool), np.zeros((h, w), bool), []
        for a in anns:
            if a.get("segmentation"):
                try:
                    m = decode_segmentation(a["segmentation"], h, w)
                except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
                    raise BadSample(f"segmentation_malformed: annotation {a['id']} ({str(e)[:60]})",
                                    self._ids[i]) from None
            elif a["iscrowd"]:
                m = _box_region(a["bbox"], h, w)
            else:
                m, note = _grabcut_instance(image, a["bbox"], self.seed)
                if note:
                    notes.append(f"annotation {a['id']}: {note}")
            if a["iscrowd"]:
                crowd |= m
            else:
                fg |= m
        return DetSample(image, (fg & ~crowd).astype(np.float32), crowd, self._ids[i], image_id, tuple(anns),
                         self._splits[i], tuple(notes))


class VOCDetSource(DetSource):
    """``DIR/JPEGImages`` + ``DIR/Annotations/*.xml``; every object is ground truth.

    Category ids 1..K in name order, image ids 1..N in file order, annotation ids in XML order.
    Masks from ``SegmentationObject/<stem>.png`` (instance k+1 = k-th XML object) where present,
    else GrabCut per box (the box itself where GrabCut fails, noted in the manifest).
    """

    def __init__(self, root: str | os.PathLike, classes: str | list[str] | None = None, split: str = "val",
                 seed: int = 0):
        super().__init__()
        root = Path(root).expanduser()
        if not (root / "Annotations").is_dir() or not (root / "JPEGImages").is_dir():
            raise ValueError(f"VOC folder {root} needs Annotations/ and JPEGImages/ subfolders.")
        parsed = []
        for x in sorted((root / "Annotations").glob("*.xml")):
            try:
                ann = parse_voc_xml(x)
            except BadSample as e:
                self.scan_dropped.append({"path": x.name, "reason": e.reason})
                continue
            image = root / "JPEGImages" / (ann.filename or f"{x.stem}.jpg")
            image = image if image.is_file() else root / "JPEGImages" / f"{x.stem}.jpg"
            if not image.is_file():
                self.scan_dropped.append({"path": x.name, "reason": f"image_missing: {image.name} is not in JPEGImages"})
                continue
            parsed.append((x.stem, image, ann))
        seen = sorted({o.name for _, _, a in parsed for o in a.objects}, key=natural_key)
        names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes or seen)
        self.categories = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
        cat_id = {c["name"]: c["id"] for c in self.categories}
        self._items, next_ann = [], 1
        for image_id, (stem, image, ann) in enumerate(parsed, start=1):
            objs = []
            for k, o in enumerate(ann.objects):
                if o.name in cat_id:
                    x0, y0, x1, y1 = o.box
                    objs.append((k + 1, {"id": next_ann, "image_id": image_id, "category_id": cat_id[o.name],
                                         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                         "iscrowd": 0, "area": float((x1 - x0) * (y1 - y0))}))
                    next_ann += 1
            self._items.append((stem, image, image_id, objs))
        self.root, self.seed = root, int(seed)
        self._ids = unique_ids(stem for stem, *_ in self._items)
        self._splits = [split] * len(self._ids)
        self.spec = f"voc:{root}"

    def load(self, i: int) -> DetSample:
        from PIL import Image
        from pycocotools import mask as mask_utils

        stem, path, image_id, objs = self._items[i]
        try:
            image = read_image(path)
        except BadSample as e:
            raise BadSample(e.reason, self._ids[i]) from None
        h, w = image.shape[:2]
        seg_file = self.root / "SegmentationObject" / f"{stem}.png"
        seg = None
        if seg_file.is_file():
            with Image.open(seg_file) as im:
                seg = np.asarray(im if im.mode in ("P", "L") else im.convert("L"))
            if seg.shape != (h, w):
                raise BadSample(f"size_mismatch: SegmentationObject {seg_file.name} is {seg.shape[1]}x{seg.shape[0]}, "
                                f"image is {w}x{h}", self._ids[i])
        fg, anns, notes = np.zeros((h, w), bool), [], []
        for k, a in objs:
            if seg is not None:
                m = seg == k
            else:
                m, note = _grabcut_instance(image, a["bbox"], self.seed)
                if note:
                    notes.append(f"{stem} object {k}: {note}")
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            a = {**a, "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}, "area": float(m.sum())}
            fg |= m
            anns.append(a)
        return DetSample(image, fg.astype(np.float32), np.zeros((h, w), bool), self._ids[i], image_id, tuple(anns),
                         self._splits[i], tuple(notes))


@DET_SOURCES.register("coco", path_arg=True, help="coco:ANNOTATIONS_JSON[:IMAGES_DIR], every instance (polygons, RLE)")
def _coco(path: str = "", classes: str | None = None, split: str | None = None, seed: int | None = None) -> DetSource:
    ann, sep, rest = path.partition(".json:")
    ann, images = (ann + ".json", rest or None) if sep else (path, None)
    return CocoDetSource(ann, images, classes, split or "val", seed or 0)


@DET_SOURCES.register("voc", path_arg=True, help="voc:DIR, Pascal VOC (SegmentationObject masks, else GrabCut per box)")
def _voc(path: str = "", classes: str | None = None, split: str | None = None, seed: int | None = None) -> DetSource:
    return VOCDetSource(path, classes, split or "val", seed or 0)


@DET_SOURCES.register("folder", path_arg=True, help="folder:DIR, DIR/annotations.json + images in DIR/images or DIR")
def _folder(path: str = "", classes: str | None = None, split: str | None = None, seed: int | None = None) -> DetSource:
    root = Path(path).expanduser()
    ann = root / "annotations.json"
    if not ann.is_file():
        found = sorted(root.glob("*.json")) if root.is_dir() else []
        if len(found) != 1:
            raise ValueError(f"Folder {root} needs one COCO json (annotations.json); found "
                             f"{', '.join(f.name for f in found) or 'none'}.")
        ann = found[0]
    images = root / "images" if (root / "images").is_dir() else root
    return CocoDetSource(ann, images, classes, split or "val", seed or 0)


class SplitView(DetSource):
    """The images of one split of ``base`` (same ids, image ids and categories)."""

    def __init__(self, base: DetSource, split: str):
        super().__init__()
        self.base, self.split = base, split
        self._rows = [k for k, sp in enumerate(base.splits()) if sp == split]
        if not self._rows:
            raise ValueError(f"{base.spec} has no images in split {split!r}; its splits: "
                             f"{', '.join(sorted(set(base.splits())))}.")
        ids = base.ids()
        self._ids, self._splits = [ids[k] for k in self._rows], [split] * len(self._rows)
        self.spec, self.categories, self.scan_dropped = base.spec, base.categories, base.scan_dropped

    def load(self, i: int) -> DetSample:
        return self.base.load(self._rows[i])

    def describe(self) -> dict:
        return {**self.base.describe(), "n": len(self), "split": self.split}


def create_det_source(spec: str, **kwargs: Any) -> DetSource:
    """``coco:FILE.json[:DIR]``, ``voc:DIR``, ``folder:DIR``, ``digits-det[:N]`` -> a detection source."""
    src = DET_SOURCES.create(spec, **kwargs)
    src.spec = spec
    return src


def list_det_sources(pattern: str = "*") -> list[str]:
    return DET_SOURCES.names(pattern)
