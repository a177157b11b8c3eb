"""Small generated datasets of every source kind (folder, COCO, VOC, MNIST, IN-9 layout), for split and pool tests.

Each writer returns the source spec (and options) to build from; nothing reads /work/shared.
"""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import make_image_and_mask


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size=(32, 40)) -> tuple[str, dict]:
    """``images/<class>/<k>.png`` + ``masks/<class>/<k>.png`` (0/255)."""
    for c, name in enumerate(classes):
        for k in range(per_class):
            img, m = make_image_and_mask(*size, 10 * c + k)
            _png(root / "images" / name / f"{k}.png", img)
            _png(root / "masks" / name / f"{k}.png", (m * 255).astype(np.uint8))
    return f"folder:{root / 'images'}", {"masks": str(root / "masks")}


def write_coco(root: Path, n: int = 8, name: str = "annotations.json") -> tuple[str, dict]:
    """COCO json with one square polygon per image, alternating cat/dog."""
    h, w = 40, 48
    images, anns = [], []
    for k in range(n):
        img, _ = make_image_and_mask(h, w, k)
        _png(root / "img" / f"{k}.png", img)
        x0, y0 = 8 + k % 3, 6 + k % 4
        images.append({"id": k + 1, "file_name": f"{k}.png", "height": h, "width": w})
        anns.append({"id": 100 + k, "image_id": k + 1, "category_id": 1 + k % 2, "bbox": [x0, y0, 20, 18],
                     "area": 360, "iscrowd": 0,
                     "segmentation": [[x0, y0, x0 + 20, y0, x0 + 20, y0 + 18, x0, y0 + 18]]})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (root / name).write_text(json.dumps(data))
    return f"coco:{root / name}:{root / 'img'}", {}


def _voc_xml(filename: str, w: int, h: int, name: str, box) -> str:
    x0, y0, x1, y1 = box
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size><object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin>"
            f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>")


def write_voc(root: Path, n: int = 8) -> tuple[str, dict]:
    """VOC folder: JPEGImages (png), Annotations, SegmentationClass, ImageSets/Main/{train,val}.txt (odd = val)."""
    h, w = 40, 48
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    names = ("cat", "dog")
    for k in range(n):
        img, _ = make_image_and_mask(h, w, k)
        name = names[k % 2]
        box = (8, 6, 30, 28)
        _png(root / "JPEGImages" / f"im{k}.png", img)
        (root / "Annotations" / f"im{k}.xml").write_text(_voc_xml(f"im{k}.png", w, h, name, box))
        seg = np.zeros((h, w), np.uint8)
        seg[box[1]:box[3], box[0]:box[2]] = 8 if name == "cat" else 12      # VOC class indices
        Image.fromarray(seg, mode="L").save(root / "SegmentationClass" / f"im{k}.png")
    (root / "ImageSets/Main/train.txt").write_text("".join(f"im{k}\n" for k in range(0, n, 2)) + "im1\n")
    (root / "ImageSets/Main/val.txt").write_text("".join(f"im{k}\n" for k in range(3, n, 2)))
    return f"voc:{root}", {}


def _idx(path: Path, arr: np.ndarray) -> None:
    data = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data)


def write_mnist(root: Path, n_train: int = 10, n_test: int = 6) -> tuple[str, dict]:
    """MNIST IDX files (gzipped) with a filled square 'digit' per image; labels cycle 0..2."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = np.zeros((n, 28, 28), np.uint8)
        for k in range(n):
            imgs[k, 6 + k % 4:18 + k % 4, 8:20] = 255
        _idx(root / f"{split}-images-idx3-ubyte.gz", imgs)
        _idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 3)
    return f"mnist:{root}", {}


def write_in9(root: Path, per_split: dict | None = None) -> tuple[str, dict]:
    """The IN-9 release layout with ``train`` and ``val``: original/<split>/NN_class/*.png + fg_mask .npy."""
    per_split = per_split or {"train": 4, "val": 2}
    for split, n in per_split.items():
        for c, name in enumerate(("bird", "fish")):
            for k in range(n):
                img, m = make_image_and_mask(32, 32, 20 * c + k + (0 if split == "train" else 50))
                stem = f"{split[0]}{c}_{k}"
                _png(root / "original" / split / f"0{c}_{name}" / f"{stem}.png", img)
                (root / "fg_mask" / split / f"0{c}_{name}").mkdir(parents=True, exist_ok=True)
                np.save(root / "fg_mask" / split / f"0{c}_{name}" / f"{stem}.npy", m)
    return f"in9:{root}", {}


WRITERS = {"folder": write_folder, "coco": write_coco, "voc": write_voc, "mnist": write_mnist, "in9": write_in9}
