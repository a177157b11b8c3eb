"""``bgbias challenge`` spread over workers: foregrounds sharded, the pool sent once per worker, state per shard.

Shard k of n searches foregrounds k, k+n, k+2n, ... (every class in every
shard) with the whole pool, on ``devices[k % len(devices)]``; workers are local
processes or Ray actors (``executor``, via :func:`bgbias.core.executors.map_ordered`).
Each worker receives the decoded uint8 pool and the model once, through its
initializer. A shard saves its state to ``STATE.shard<k>of<n>`` as it goes and
marks it done at the end, so rerunning the same command after a worker died
skips finished shards and resumes the others. Verdicts are exact in every
shard, so the merged verdicts equal a single process's; forward counts differ
(each shard learns its own order). Shard files are removed once the merged
result is written.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bgbias.audit.challenge_search import class_interleaved
from bgbias.audit.challenge_state import NOT_SCORED, load_state, save_state, start_state
from bgbias.core.executors import map_ordered

_WORKER: dict[str, Any] = {}


def shard_paths(state_path: Path | None, n: int) -> list[Path | None]:
    return [None if state_path is None else state_path.with_name(f"{state_path.name}.shard{k}of{n}")
            for k in range(n)]


def _init(loaded, pool_raw, prepare, search) -> None:
    """Once per worker: keep the model, the decoded pool (the 'broadcast') and the challenge's own ``prepare`` and
    ``search`` (handed in by :mod:`bgbias.audit.challenge`, so this module never imports it back)."""
    _WORKER.update(loaded=loaded, pool_raw=pool_raw, setups={}, prepare=prepare, search=search)


def _shard(task: tuple) -> dict[str, Any]:
    """One shard in a worker: prepare once per device, search the shard's queue, save it as done."""
    prepare, search = _WORKER["prepare"], _WORKER["search"]
    cfg, k, n, path, fp = task
    key = cfg.device
    if key not in _WORKER["setups"]:
        _WORKER["setups"][key] = prepare(replace(cfg, progress=False), _WORKER["loaded"], _WORKER["pool_raw"])
    st = _WORKER["setups"][key]
    _, s = search(cfg, st, class_interleaved(st.fg_labels, np.arange(k, len(st.fg_items), n)), path, fp)
    s["done"] = True
    if path is not None:
        save_state(path, s)
    return s


def run_shards(cfg, st, state_path: Path | None, loaded, prepare, search) -> dict[str, Any]:
    """Search every shard (skipping those a previous run finished) and merge their states into one.

    ``prepare`` and ``search`` are :mod:`bgbias.audit.challenge`'s (module-level, so they pickle by name)."""
    devices = list(cfg.devices or [cfg.device])
    n = max(cfg.shards, len(devices))
    paths = shard_paths(state_path, n)
    fps = [f"{st.fp}/shard{k}of{n}" for k in range(n)]
    states: dict[int, dict[str, Any]] = {}
    todo = []
    for k in range(n):
        saved = load_state(paths[k], fps[k]) if paths[k] is not None else None
        if saved is not None and saved.get("done"):
            states[k] = saved
        else:
            todo.append((replace(cfg, device=devices[k % len(devices)], shards=1), k, n, paths[k], fps[k]))
    if todo:
        remote = {"num_gpus": 1} if cfg.executor == "ray" and any(str(d).startswith("cuda") for d in devices) \
            else None
        for task, s in zip(todo, map_ordered(_shard, todo, initializer=_init, initargs=(loaded, st.pool.decoded, prepare, search),
                                             workers=len(devices),
                                             executor=cfg.executor, preload="bgbias.audit.challenge",
                                             ray_remote_args=remote)):
            states[task[1]] = s
    merged = merge([states[k] for k in range(n)], st, cfg)
    for p in paths:
        if p is not None and p.is_file():
            p.unlink()
    return merged


def merge(states: list[dict[str, Any]], st, cfg) -> dict[str, Any]:
    """One state as if one process had searched: per-foreground fields from the shard owning it, sums of the rest."""
    n_fg, n_bg = len(st.fg_items), len(st.pool)
    out = start_state(None, st.fp, n_fg, len(st.audit.classes), n_bg, cfg.seed, st.sub)
    for s in states:
        q = s["queue"]
        for key in ("verdict", "fool_bg", "fool_pred", "fool_conf", "clean_pred", "clean_margin"):
            out[key][q] = s[key][q]
        for key in ("count", "dsum", "dcnt", "fresh"):
            out[key] += s.get(key, 0)
        for key in ("forwards", "clean_forwards", "err2", "err_n", "rounds"):
            out[key] += s[key]
        known = s["sub_pred"] != NOT_SCORED
        out["sub_pred"][known] = s["sub_pred"][known]
        out["skipped"].extend(s["skipped"])
    out["skipped"].sort(key=lambda r: r["path"])
    out["next_fg"] = len(out["queue"])
    return out
