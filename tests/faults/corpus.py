"""The fault corpus: small generated bad inputs (no shared data), each written by one function.

Every function writes into a folder it is given and returns what the case needs. The
cases themselves (and what each must produce: a named drop, a one-sentence error, or an
identical result after resume) are the ``test_*`` functions of this package; see
``docs/RELIABILITY.md``.
"""
from __future__ import annotations

import io
import os
import signal
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image(h: int = 24, w: int = 24, seed: int = 0) -> np.ndarray:
    """A textured RGB image (no flat areas, so every variant differs from the original)."""
    rng = np.random.default_rng(seed)
    return rng.integers(30, 220, size=(h, w, 3), dtype=np.uint8)


def square_mask(h: int = 24, w: int = 24) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return m


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A ~100-byte PNG whose header claims billions of pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def lying_npy(path: Path, shape: tuple[int, ...] = (40000, 40000), sparse_bytes: int = 0) -> Path:
    """A .npy whose header claims ``shape`` (float32); the file holds only the header (sparse when asked)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue())
    if sparse_bytes:
        with open(path, "r+b") as f:
            f.truncate(sparse_bytes)
    return path


def folder_dataset(root: Path, classes: dict[str, int], bad: dict[str, bytes] | None = None,
                   bad_masks: dict[str, bytes] | None = None, size: int = 24) -> tuple[Path, Path]:
    """``root/images/<class>/<k>.png`` with masks at ``root/masks/<class>/<k>.png``, plus ``bad`` files
    (relative path -> bytes) among the images and ``bad_masks`` among the masks. Returns (images, masks)."""
    images, masks = root / "images", root / "masks"
    for c, (name, n) in enumerate(classes.items()):
        for k in range(n):
            for folder, data in ((images, png_bytes(image(size, size, 7 * c + k))), (masks, png_bytes(square_mask(size, size)))):
                (folder / name).mkdir(parents=True, exist_ok=True)
                (folder / name / f"{k}.png").write_bytes(data)
    for rel, data in (bad or {}).items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (masks / rel).with_suffix(".png").exists():
            (masks / rel).with_suffix(".png").write_bytes(png_bytes(square_mask(size, size)))
    for rel, data in (bad_masks or {}).items():
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        (masks / rel).write_bytes(data)
    return images, masks


def voc_xml(boxes: list[tuple], size: tuple = (24, 24), name: str = "cat", filename: str = "a.jpg") -> str:
    objs = "".join(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                   f"<ymax>{y1}</ymax></bndbox></object>" for x0, y0, x1, y1 in boxes)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[1]}</width><height>{size[0]}</height>"
            f"</size>{objs}</annotation>")


def voc_dataset(root: Path, xmls: dict[str, str]) -> Path:
    """``root/JPEGImages/<stem>.jpg`` (PNG bytes; readers go by content) + ``root/Annotations/<stem>.xml``."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for k, (stem, xml) in enumerate(xmls.items()):
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(png_bytes(image(24, 24, k)))
        (root / "Annotations" / f"{stem}.xml").write_text(xml.replace("a.jpg", f"{stem}.jpg"))
    return root


def coco_dataset(root: Path, segmentations: dict[str, object], categories: list | None = None,
                 size: int = 24) -> Path:
    """``root/<stem>.png`` images and ``root/ann.json`` with one 'cat' instance per image (NaN allowed)."""
    root.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for k, (stem, seg) in enumerate(segmentations.items()):
        (root / f"{stem}.png").write_bytes(png_bytes(image(size, size, k)))
        images.append({"id": k + 1, "file_name": f"{stem}.png", "height": size, "width": size})
        anns.append({"id": 100 + k, "image_id": k + 1, "category_id": 1, "bbox": [4, 4, 12, 12],
                     "area": 144, "iscrowd": 0, "segmentation": seg})
    data = {"images": images, "annotations": anns, "categories": categories or [{"id": 1, "name": "cat"}]}
    (root / "ann.json").write_text(json.dumps(data))     # json.dumps writes NaN / Infinity literals
    return root / "ann.json"


GOOD_POLYGON = [[4.0, 4.0, 16.0, 4.0, 16.0, 16.0, 4.0, 16.0]]


class CrashingFolderSource:
    """A ``folder:`` source whose ``load`` kills its own process (SIGSEGV, like a crashing C decoder) for
    the ids in ``crash``, but only inside a worker process (the main process must survive to see it)."""

    def __init__(self, images: str, masks: str, crash: set[str]):
        from bgbias.sources.readers import FolderSource

        self.inner, self.crash, self.main_pid = FolderSource(images, masks), set(crash), os.getpid()

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def load(self, i: int):
        if self.inner.ids()[i] in self.crash and os.getpid() != self.main_pid:
            os.kill(os.getpid(), signal.SIGSEGV)
        return self.inner.load(i)
