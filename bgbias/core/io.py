"""File I/O at the edges: read any image into uint8 RGB, write PNG/NPY/JSON atomically.

Atomic means temp file in the same folder + ``os.replace``: a killed run never
leaves a truncated file that looks complete, and a resumed run can trust any
file that exists.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bgbias.core.sample import BadSample, to_mask, to_rgb_uint8

_UMASK = os.umask(0)
os.umask(_UMASK)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a hidden temp file beside ``path``, then rename it into place.

    The temp name is fixed per process (``.<name>.<pid>.tmp``, created with
    O_EXCL and the umask's normal permissions), which costs one system call
    instead of mkstemp's several; builds write hundreds of thousands of files.
    """
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileNotFoundError:   # first file in a new folder
        os.makedirs(head or ".", exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:     # left by a killed process that had our pid: use a unique name
        fd, tmp = tempfile.mkstemp(dir=head or ".", prefix=f".{name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """uint8 HxWx3 RGB (or HxW) -> PNG bytes, deterministic.

    libpng through imagecodecs with the Sub filter and run-length zlib
    strategy: ~5x faster than adaptive filtering (PIL's default) at about the
    same size, and ~20% faster than OpenCV's encoder with the same settings
    (same bytes, no RGB->BGR copy). PNG encoding is most of a build's time.
    """
    import imagecodecs

    return imagecodecs.png_encode(np.ascontiguousarray(image), level=int(compression),
                                  strategy=imagecodecs.PNG.STRATEGY.RLE, filter=imagecodecs.PNG.FILTER.SUB)


def write_png(path: str | os.PathLike, image: np.ndarray, compression: int = 1) -> None:
    atomic_write_bytes(path, encode_png(image, compression))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Pretty, key-sorted JSON (stable bytes for the same content)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serialisable.")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def _plain_png(im: Image.Image) -> np.ndarray | None:
    """Pixels of an 8-bit RGB or grayscale PNG decoded by libpng (imagecodecs), ~25% faster than PIL's
    decoder; ``None`` for anything else, which PIL handles. PNG is lossless, so the pixels are the same."""
    if im.format != "PNG" or im.mode not in ("RGB", "L") or "transparency" in im.info or im.fp is None:
        return None
    import imagecodecs

    im.fp.seek(0)
    try:
        arr = imagecodecs.png_decode(im.fp.read())
    except Exception:     # let PIL decide (and word the error)
        return None
    want = (im.height, im.width, 3) if im.mode == "RGB" else (im.height, im.width)
    return arr if arr.dtype == np.uint8 and arr.shape == want else None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Any image file -> uint8 HxWx3 RGB. Palette, grayscale, RGBA, 16-bit are converted.

    Raises :class:`BadSample` with the reason for unreadable or non-image files.
    """
    try:
        with Image.open(path) as im:
            fast = _plain_png(im)
            if fast is not None:
                return to_rgb_uint8(fast)
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.int64)
                top = 65535 if arr.max(initial=0) > 255 else 255
                arr = np.clip(arr * 255 // top, 0, 255).astype(np.uint8)
            elif im.mode in ("F",):
                arr = np.asarray(im, dtype=np.float32)
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            elif im.mode in ("L", "RGB", "RGBA", "1"):
                arr = np.asarray(im.convert("L") if im.mode == "1" else im)
            else:
                arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadSample(f"unreadable image {Path(path).name} ({type(e).__name__})") from None
    return to_rgb_uint8(arr)


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A ``.npy`` (allow_pickle=False) or image mask -> float32 HxW in [0, 1]."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            with Image.open(p) as im:
                arr = _plain_png(im)
                if arr is not None:
                    return to_mask(arr, shape)
                im.load()
                arr = np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I", "1", "F") else im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadSample(f"unreadable mask {p.name} ({type(e).__name__})") from None
    return to_mask(arr, shape)
