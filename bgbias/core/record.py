"""The reproducibility record in every result JSON: which weights, code, libraries, device and command made a number.

The backgrounds challenge's published numbers could not be reproduced because
nothing said which weights produced them (its issue #5: timm's weights behind
one name had changed). ``build_record`` writes, into ``eval.json``,
``challenge.json``, ``saliency.json`` and ``metrics.json`` alike::

    "record": {"weights": [{"path", "sha256", "bytes"}], "parameters": int,
               "libraries": {"torch", "torchvision", "timm", "transformers", "open_clip_torch", "captum",
                             "numpy", "bgbias"},          # null when not installed
               "bgbias_git": {"commit", "dirty"} | null,  # when run from a git checkout
               "python": "3.11.7", "device": "cpu" | "cuda:0 (NVIDIA ...)", "dtype": "float32",
               "seed": int, "command": "bgbias eval --model ...",
               "data": {"path", "manifest_sha256"}, "preprocess": {...}}

No timestamps, so equal runs give equal records. :func:`compare_records` turns a
set of results into warnings when their data or preprocessing differ (the
report prints them). Imports only the standard library and torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

LIBRARIES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "captum", "numpy")
MANIFEST = "manifest.json"


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (cached per path, size and mtime within a process: big weights are hashed once)."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def library_versions() -> dict[str, str | None]:
    """Installed versions (from package metadata: nothing is imported), None for a missing optional library."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    from bgbias.core.version import __version__

    out["bgbias"] = __version__
    return out


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout bgbias runs from, or None (an installed wheel, no git)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                 "bgbias"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The process's command line, with ``python -m bgbias`` / the ``bgbias`` script shown as ``bgbias``."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        head = argv[0].replace("\\", "/")
        if head.endswith("bgbias/__main__.py") or Path(head).name == "bgbias":
            argv[0] = "bgbias"
    return shlex.join(argv)


def data_identity(data: str | os.PathLike | None) -> dict[str, Any] | None:
    """The data folder and the sha256 of its ``manifest.json`` (a bgbias build; None for the IN-9 release)."""
    if data is None:
        return None
    path = Path(data)
    manifest = path / MANIFEST
    return {"path": str(path.resolve()), "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None}


def build_record(files: Iterable[str | os.PathLike] = (), module: Any = None, device: Any = None, seed: int | None = None,
                 data: str | os.PathLike | None = None, preprocess: Mapping[str, Any] | None = None,
                 argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``"record"`` object of a result (see the module docstring); ``module`` is the ``nn.Module`` scored."""
    weights = []
    for f in dict.fromkeys(str(f) for f in files if f):        # each file once, in the order read
        p = Path(f)
        weights.append({"path": str(p.resolve()), "sha256": sha256_file(p) if p.is_file() else None,
                        "bytes": p.stat().st_size if p.is_file() else None})
    params, dtype = None, None
    if module is not None:
        ps = list(module.parameters())
        params = int(sum(p.numel() for p in ps))
        dtype = str(ps[0].dtype).replace("torch.", "") if ps else None
    dev = None if device is None else str(device)
    if dev and dev.startswith("cuda"):
        import torch

        dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
    return {"weights": weights, "parameters": params, "libraries": library_versions(), "bgbias_git": git_state(),
            "python": platform.python_version(), "device": dev, "dtype": dtype, "seed": seed,
            "command": command_line(argv), "data": data_identity(data),
            "preprocess": dict(preprocess) if preprocess is not None else None}


def _name(i: int, key: str, doc: Mapping[str, Any]) -> str:
    return key if key else f"result {i + 1} ({doc.get('kind', '?')}, {doc.get('model', '?')})"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def compare_records(docs: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Warnings (one sentence each) when results that are compared side by side were measured on different data
    or with different preprocessing, or carry no record to tell. ``docs``: result dicts, or ``{name: dict}``."""
    items = list(docs.items()) if isinstance(docs, Mapping) else [("", d) for d in docs]
    named = [(_name(i, k, d), d) for i, (k, d) in enumerate(items)]
    warnings: list[str] = []
    missing = [n for n, d in named if not isinstance(d.get("record"), Mapping)]
    if missing:
        warnings.append(f"{', '.join(missing)} carry no reproducibility record; their weights, data and "
                        "preprocessing cannot be checked.")
    recs = [(n, d["record"], d) for n, d in named if isinstance(d.get("record"), Mapping)]
    for what, get in (("data", lambda r, d: _data_key(r, d)),
                      ("preprocessing", lambda r, d: _canonical(r.get("preprocess") or d.get("preprocess")))):
        groups: dict[str, list[str]] = {}
        for n, r, d in recs:
            groups.setdefault(get(r, d), []).append(n)
        if len(groups) > 1:
            parts = "; ".join(f"{', '.join(ns)}: {_describe(what, key)}" for key, ns in groups.items())
            warnings.append(f"The compared results differ in {what}, so their numbers are not like for like ({parts}).")
    return warnings


def _data_key(record: Mapping[str, Any], doc: Mapping[str, Any]) -> str:
    d = record.get("data") or {}
    return d.get("manifest_sha256") or d.get("path") or str(doc.get("data"))


def _describe(what: str, key: str) -> str:
    if what == "data":
        return f"manifest sha256 {key[:12]}" if len(key) == 64 and all(c in "0123456789abcdef" for c in key) else key
    try:
        pp = json.loads(key) or {}
    except ValueError:
        return key
    if not isinstance(pp, dict):
        return "unknown"
    size = "x".join(str(s) for s in pp["size"]) if pp.get("size") else "native size"
    crop = f", resize {pp['resize_to']} + centre crop" if pp.get("resize_to") else ""
    return f"{pp.get('name', '?')}: {size}{crop}, {pp.get('interpolation', 'bilinear')}, mean {pp.get('mean')}, " \
           f"std {pp.get('std')}"
