"""``bgbias eval`` spread over workers: each variant's images sharded, the model loaded once per worker, resumable.

Shard k of n predicts images k, k+n, k+2n, ... of a variant (every class in
every shard) on ``devices[k % len(devices)]``; workers are local processes or
Ray actors (``executor``, via :func:`bgbias.core.executors.map_ordered`, the
engine ``bgbias build`` uses). A prediction depends only on its image, so the
merged predictions equal one process's. With a ``state`` folder each finished
shard is saved there (``<variant>.shard<k>of<n>.npz``, atomically) and a rerun
after a worker died predicts only the missing shards; the folder's files are
removed by :func:`clear_state` once the result is written.
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bgbias.audit.core import open_audit, predict_paths
from bgbias.core.executors import check_executor, map_ordered
from bgbias.core.io import atomic_write_bytes
from bgbias.core.layout import sanitize_name

_WORKER: dict[str, Any] = {}


def sharded(config) -> bool:
    """Whether an :class:`~bgbias.audit.evaluate.EvalConfig` asks for shards or workers (then
    :func:`predict_variant` shards); its ``shards``, ``executor``, ``devices`` and ``state`` say how."""
    return config.shards > 1 or config.executor != "local" or len(config.devices or ()) > 1


def shard_file(state: str | None, variant: str, k: int, n: int) -> Path | None:
    return None if state is None else Path(state) / f"{sanitize_name(variant)}.shard{k}of{n}.npz"


def _init(loaded) -> None:
    """Once per worker: keep the (already loaded) model, if the driver sent one."""
    _WORKER["loaded"], _WORKER["audits"] = loaded, {}


def _shard(task: tuple) -> tuple[np.ndarray, np.ndarray, list]:
    """One shard in a worker: open the audit once per device, predict, save the shard (when resumable)."""
    config, paths, path = task
    if config.device not in _WORKER["audits"]:
        _WORKER["audits"][config.device] = open_audit(config, _WORKER["loaded"], amp=config.amp,
                                                               channels_last=True)
    preds, conf, bad = predict_paths(_WORKER["audits"][config.device], paths, config.batch_size, config.workers)
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, preds=preds, conf=conf, bad_i=np.array([i for i, _ in bad], np.int64),
                 bad_r=np.array([r for _, r in bad], dtype=str))
        atomic_write_bytes(path, buf.getvalue())
    return preds, conf, bad


def _load(path: Path | None, n_paths: int):
    if path is None or not path.is_file():
        return None
    z = np.load(path)
    if len(z["preds"]) != n_paths:
        raise ValueError(f"Eval shard file {path} is from other data; delete it (or pass another state) to start over.")
    return z["preds"], z["conf"], [(int(i), str(r)) for i, r in zip(z["bad_i"], z["bad_r"])]


def predict_variant(config, audit, variant: str, paths: Sequence[Path], loaded=None):
    """(preds, confidences, bad) for one variant: in this process, or sharded when ``config`` asks for it."""
    if not sharded(config):
        return predict_paths(audit, paths, config.batch_size, config.workers, config.progress, desc=variant)
    check_executor(config.executor)
    if config.shards < 1:
        raise ValueError(f"shards must be >= 1, got {config.shards}.")
    devices = list(config.devices or [config.device])
    n = max(config.shards, len(devices))
    parts = [list(paths[k::n]) for k in range(n)]
    files = [shard_file(config.state, variant, k, n) for k in range(n)]
    done = {k: r for k in range(n) if (r := _load(files[k], len(parts[k]))) is not None}
    todo = [k for k in range(n) if k not in done]
    tasks = [(replace(config, device=devices[k % len(devices)], progress=False, shards=1), parts[k], files[k])
             for k in todo]
    remote = {"num_gpus": 1} if config.executor == "ray" and any(str(d).startswith("cuda") for d in devices) else None
    for k, r in zip(todo, map_ordered(_shard, tasks, initializer=_init, initargs=(loaded,), workers=len(devices),
                                      executor=config.executor, preload="bgbias.audit.evaluate",
                                      ray_remote_args=remote)):
        done[k] = r
    preds = np.full(len(paths), -2, dtype=np.int64)
    conf = np.zeros(len(paths), dtype=np.float32)
    bad: list[tuple[int, str]] = []
    for k in range(n):
        p, c, b = done[k]
        preds[k::n], conf[k::n] = p, c
        bad.extend((k + n * i, r) for i, r in b)
    return preds, conf, sorted(bad)


def clear_state(config) -> None:
    """Remove the finished shards once the whole result exists (a rerun then starts afresh)."""
    if config.state and Path(config.state).is_dir():
        for f in Path(config.state).glob("*.shard*of*.npz"):
            f.unlink()
