"""Resume bookkeeping of ``bgbias challenge``: the search state, its file, and what a resumed run must match.

The whole search lives in one dict of numpy arrays and lists (verdicts, the
worst background found, fool counts per class x background, the active
foregrounds and what they tried, counters). It is saved atomically with
``torch.save`` and loaded with ``weights_only=True``; a state file is only
resumed when its fingerprint (result-deciding settings, model file size and
mtime, foreground and background ids) matches, so a resumed run gives the
same result as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgbias.core.io import atomic_write_bytes
from bgbias.core.seeding import numpy_rng

UNKNOWN, ROBUST, FOOLED, SKIPPED = -1, 0, 1, -2      # per-foreground verdicts
NOT_SCORED = -3                                       # sub_pred of a pair the search did not score



def state_file(state: str | None, out: str | os.PathLike | None) -> Path | None:
    """``--state``, else ``OUT.state`` next to the output; None when neither is known (no resume)."""
    return Path(state) if state else (Path(str(out) + ".state") if out else None)


def fingerprint(cfg: Any, fg_ids: list[str], bg_ids: list[str]) -> str:
    """What a state file must match to be resumed: result-deciding settings, model file, data ids.

    ``cfg`` is a config dataclass; its class lists the fields that do not decide verdicts in
    ``NOT_IN_FINGERPRINT`` (speed, detail, where files go).
    """
    skip = set(getattr(type(cfg), "NOT_IN_FINGERPRINT", ()))
    keep = {k: v for k, v in asdict(cfg).items() if k not in skip}
    files = []
    for f in (cfg.weights, cfg.model.partition(":")[2]):
        if f and os.path.isfile(f):
            st = os.stat(f)
            files.append([st.st_size, int(st.st_mtime)])
    blob = json.dumps([keep, files, fg_ids, bg_ids], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically, so an interrupt mid-write leaves the previous state intact."""
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, fp: str) -> dict[str, Any] | None:
    """The saved state (None when there is no file); a damaged or foreign file is an error, not a restart."""
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any damage means "start over" is wrong; say so
        raise ValueError(f"Challenge state file {path} is damaged ({type(e).__name__}); delete it to start over.") \
            from None
    if raw.get("fingerprint") != fp:
        raise ValueError(f"Challenge state file {path} belongs to a different model, data or settings; "
                         "delete it (or pass another --state) to start over.")
    return {k: v.numpy() if torch.is_tensor(v) else v for k, v in raw.items()}


def start_state(path: Path | None, fp: str, n_fg: int, n_classes: int, n_bg: int,
                seed: int, sub: np.ndarray | None = None, queue: np.ndarray | None = None) -> dict[str, Any]:
    """The state saved at ``path`` (it must match ``fp``) when there is one, else a fresh search with nothing decided.

    ``sub`` is the fixed foreground subset of the top-fooling analysis: the search keeps every prediction on
    those foregrounds (``sub_pred``, -3 = not scored) so the analysis measures only what it does not know.
    A resumed state whose subset differs (``--fool-subset`` changed) keeps its verdicts and forgets those.
    """
    sub = np.zeros(0, np.int64) if sub is None else np.asarray(sub, np.int64)
    s = load_state(path, fp) if path else None
    if s is None:
        s = {"fingerprint": fp, "verdict": np.full(n_fg, UNKNOWN, np.int8),
             "fool_bg": np.full(n_fg, -1, np.int64), "fool_pred": np.full(n_fg, -3, np.int64),
             "fool_conf": np.zeros(n_fg, np.float32), "clean_pred": np.full(n_fg, -3, np.int64),
             "count": np.zeros((n_classes, n_bg), np.int64), "active": [], "tried": np.zeros((0, n_bg), dtype=bool),
             "next_fg": 0, "forwards": 0, "clean_forwards": 0, "skipped": [], "rounds": 0,
             "shuffle": numpy_rng(seed, "challenge-order").permutation(n_bg),
             # the margin model: sums/counts of margin changes per (fg class, background), prediction error
             "dsum": np.zeros((n_classes, n_bg), np.float64), "dcnt": np.zeros((n_classes, n_bg), np.int64),
             "clean_margin": np.zeros(n_fg, np.float64), "res_sum": np.zeros(0, np.float64),
             "err2": 0.0, "err_n": 0, "fresh": np.zeros(3, np.float64),   # fools, tries, margin change of first-time bgs
             "queue": np.arange(n_fg, dtype=np.int64) if queue is None else np.asarray(queue, np.int64)}
    if "sub" not in s or not np.array_equal(s["sub"], sub):
        s["sub"], s["sub_pred"] = sub, np.full((len(sub), n_bg), NOT_SCORED, np.int16)
    s["skipped"] = list(s["skipped"])
    s["active"] = [int(a) for a in s["active"]]
    return s


class StopSignals:
    """While active, SIGTERM and SIGINT only set ``signal`` (the search loop saves its state and stops);
    a second signal acts as before. Main thread only (signal handlers cannot be set elsewhere)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            old = self._old.get(signum)
            if callable(old):
                old(signum, frame)
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
