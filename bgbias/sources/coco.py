"""The COCO source (``coco:ANNOTATIONS_JSON[:IMAGES_DIR]``): instance polygons and RLE decoded with pycocotools.

The label of an image is the category of its largest non-crowd instance among ``classes``;
the foreground is every instance of that category (crowds included), or every instance in
the image with ``foreground="all"``. ``min_area`` (pixels) drops images whose largest
instance is smaller, like report 000's threshold. Broken entries are named skips, never crashes.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from bgbias.core.boxes import BoxRules
from bgbias.core.sample import BadSample, Box
from bgbias.sources.annotated import AnnotatedSource, _Item, _parse_classes, _wrap
from bgbias.sources.base import SOURCES, unique_ids

FOREGROUND = ("label", "all")


def _bbox(b: Any) -> Box:
    x, y, w, h = (float(v) for v in b)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError("non-finite bbox")
    return int(math.floor(x)), int(math.floor(y)), int(math.ceil(x + w)), int(math.ceil(y + h))


def decode_segmentation(seg: Any, h: int, w: int) -> np.ndarray:
    """COCO polygons / uncompressed RLE / compressed RLE -> bool HxW (raises ValueError when malformed)."""
    if isinstance(seg, list):
        polys = [[float(v) for v in p] for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            raise ValueError("no polygon with at least 3 points")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
        if list(seg.get("size", [])) != [h, w]:
            raise ValueError(f"RLE size {seg.get('size')} differs from the image size {[h, w]}")
        rle = {"size": [h, w], "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]}
    else:
        raise ValueError("segmentation is neither polygons nor RLE")
    with warnings.catch_warnings():   # pycocotools' numpy-2 "copy keyword" DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


class CocoSource(AnnotatedSource):
    """COCO instances json + image folder; masks always come from the annotations."""

    def __init__(self, ann_file: str | os.PathLike, images: str | os.PathLike | None = None,
                 classes: str | list[str] | None = None, foreground: str = "label", min_area: int = 0):
        ann_file = Path(ann_file).expanduser()
        images = Path(images).expanduser() if images else ann_file.parent
        if foreground not in FOREGROUND:
            raise ValueError(f"Unknown foreground {foreground!r}; valid: {', '.join(FOREGROUND)}.")
        if int(min_area) < 0:
            raise ValueError(f"min_area {min_area} is negative; give a pixel count >= 0.")
        try:
            data = json.loads(ann_file.read_bytes())
        except FileNotFoundError:
            raise ValueError(f"COCO annotation file {ann_file} does not exist.") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"COCO annotation file {ann_file} is not valid JSON ({str(e)[:80]}).") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise ValueError(f"COCO annotation file {ann_file} lacks the 'images', 'annotations' and 'categories' "
                             f"lists of the instances format.")
        cats = {c["id"]: str(c["name"]) for c in data["categories"] if isinstance(c, dict) and "id" in c
                and "name" in c}
        names = _parse_classes(classes, [cats[k] for k in sorted(cats)], "COCO")
        want = {k for k, n in cats.items() if n in names}
        dropped: list[dict] = []
        imgs: dict[Any, dict] = {}
        for im in data["images"]:
            try:
                imgs[im["id"]] = {"file": str(im["file_name"]), "h": int(im["height"]), "w": int(im["width"])}
            except (KeyError, TypeError, ValueError):
                dropped.append({"path": str(im)[:60], "reason": "json_malformed: image entry lacks id, file_name, "
                                                                 "height or width"})
        per_image: dict[Any, list[dict]] = {}
        for a in data["annotations"]:
            try:
                ann = {"id": a["id"], "cat": a["category_id"], "box": _bbox(a["bbox"]), "seg": a.get("segmentation"),
                       "crowd": bool(a.get("iscrowd", 0)), "area": float(a.get("area") or 0.0)}
                image_id = a["image_id"]
            except (KeyError, TypeError, ValueError):
                dropped.append({"id": str(a.get("id") if isinstance(a, dict) else a)[:40],
                                "reason": "json_malformed: annotation lacks id, image_id, category_id or a 4-number bbox"})
                continue
            if image_id not in imgs:
                dropped.append({"id": str(ann["id"]), "reason": f"image_missing: annotation {ann['id']} refers to "
                                                                f"image id {image_id}, not in the images list"})
                continue
            per_image.setdefault(image_id, []).append(ann)
        items, stems, self.not_in_classes = [], [], 0
        for image_id, im in imgs.items():
            anns = per_image.get(image_id, [])
            cands = [a for a in anns if a["cat"] in want and not a["crowd"]]
            if not cands:
                self.not_in_classes += 1
                continue
            top = max(cands, key=lambda a: (a["area"] or (a["box"][2] - a["box"][0]) * (a["box"][3] - a["box"][1])))
            area = top["area"] or (top["box"][2] - top["box"][0]) * (top["box"][3] - top["box"][1])
            path = images / im["file"]
            if area < int(min_area):
                dropped.append({"path": im["file"], "reason": f"min_area: largest instance has {area:.0f} px "
                                                              f"(< {int(min_area)})"})
                continue
            if not path.is_file():
                dropped.append({"path": im["file"], "reason": f"image_missing: {im['file']} is not in {images}"})
                continue
            fg = [a for a in anns if foreground == "all" or a["cat"] == top["cat"]]
            items.append(_Item(path, names.index(cats[top["cat"]]), tuple(a["box"] for a in fg), (im["h"], im["w"]),
                               tuple((a["id"], a["seg"]) for a in fg)))
            stems.append(Path(im["file"]).stem)
        super().__init__(f"coco:{ann_file}:{images}", names, items, unique_ids(stems), dropped)
        self.foreground, self.min_area = foreground, int(min_area)
        self.own_split = coco_split(ann_file, images)

    def splits(self) -> list[str | None] | None:
        """COCO's own split, from the file names (``instances_train2017.json``, ``val2017/``), for every image."""
        return None if self.own_split is None else [self.own_split] * len(self)

    def has_mask(self, i: int) -> bool:
        return True

    def _mask(self, i: int, item: _Item, h: int, w: int) -> np.ndarray:
        if item.size != (h, w):
            raise BadSample(f"size_mismatch: the json says {item.size[1]}x{item.size[0]}, the image is {w}x{h}")
        fg = np.zeros((h, w), bool)
        for ann_id, seg in item.extra:
            try:
                fg |= decode_segmentation(seg, h, w)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
                raise BadSample(f"segmentation_malformed: annotation {ann_id} ({str(e)[:60]})") from None
        return fg.astype(np.float32)

    def describe(self) -> dict:
        return {**super().describe(), "foreground": self.foreground, "min_area": self.min_area,
                "not_in_classes": self.not_in_classes}


def coco_split(ann_file: Path, images: Path) -> str | None:
    """``train`` / ``val`` when the annotation file (or else the image folder) is named for one, else None."""
    import re

    for name in (ann_file.stem, images.name):
        found = set(re.findall(r"(?<![a-z])(train|val)(?![a-z])", name.lower().replace("_", " ").replace("-", " ")
                               .replace("2014", " ").replace("2017", " ")))
        if len(found) == 1:
            return found.pop()
    return None


@SOURCES.register("coco", path_arg=True, tags=["annotations"],
                  help="coco:ANNOTATIONS_JSON[:IMAGES_DIR], instance masks (polygons, RLE) via pycocotools")
def _coco(path: str = "", images: str | None = None, classes: str | list[str] | None = None,
          foreground: str | None = None, min_area: int | None = None, masks_from: str | None = None,
          box_mode: str | None = None, crop_rules: bool | None = None, cache: Any = True,
          weights: str | None = None, fg_classes: str | None = None, download: bool | None = None) -> Any:
    ann, sep, rest = path.partition(".json:")
    ann, images = (ann + ".json", images or rest) if sep else (path, images)
    src = CocoSource(ann, images, classes, foreground or "label", min_area or 0)
    return _wrap(src, masks_from, "given", False, BoxRules(), box_mode, crop_rules, cache, weights, fg_classes,
                 download)
