"""cache: split from the former bgbias.masks.methods."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np

from bgbias.core.io import atomic_write_bytes, encode_png
from bgbias.core.sample import BadSample, Sample
from bgbias.masks.methods import MaskMethod

CACHE_VERSION = "bgbias-mask-cache/1"


def default_cache_dir() -> Path:
    """``$BGBIAS_CACHE/masks`` or ``~/.cache/bgbias/masks``."""
    root = os.environ.get("BGBIAS_CACHE")
    return Path(root) / "masks" if root else Path.home() / ".cache" / "bgbias" / "masks"


class MaskCache:
    """Masks on disk, one file per key; failures are cached too (as the drop reason) so they are not retried."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.hits = self.misses = 0

    @staticmethod
    def key(spec: str, sample: Sample, method: MaskMethod) -> str:
        h = hashlib.blake2b(digest_size=20)
        head = {"v": CACHE_VERSION, "spec": spec, "id": sample.id, "method": method.name, "params": method.params(),
                "shape": list(sample.image.shape), "boxes": [list(b) for b in sample.boxes]}
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        h.update(np.ascontiguousarray(sample.image).data)
        return h.hexdigest()

    def _path(self, key: str, ext: str) -> Path:
        return self.root / key[:2] / f"{key}{ext}"

    def get(self, key: str) -> np.ndarray | BadSample | None:
        png, fail = self._path(key, ".png"), self._path(key, ".json")
        if png.is_file():
            arr = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
            if arr is not None:
                self.hits += 1
                return arr.astype(np.float32) / 255.0
        if fail.is_file():
            try:
                reason = json.loads(fail.read_text())["reason"]
                self.hits += 1
                return BadSample(reason)
            except (ValueError, KeyError, OSError):
                pass
        self.misses += 1
        return None

    def put(self, key: str, result: np.ndarray | BadSample) -> None:
        if isinstance(result, BadSample):
            atomic_write_bytes(self._path(key, ".json"), json.dumps({"reason": result.reason}).encode())
        else:
            atomic_write_bytes(self._path(key, ".png"), encode_png(np.rint(result * 255).astype(np.uint8)))
