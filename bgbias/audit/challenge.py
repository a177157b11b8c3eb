"""``bgbias challenge``: the backgrounds challenge of paper 001, exact like the exhaustive search, much faster.

Every foreground (``original`` image x ``fg_mask``) is pasted with
:func:`bgbias.core.compose.compose` on every background of the pool (every
``only_bg_t`` image). A foreground is *fooled* when **any** background makes
the (label-mapped) prediction wrong; challenge accuracy = 1 - fooled fraction.
The verdict is over the pool only, like the published evaluation: the clean
image is not a pool member, so a foreground the model already gets wrong
counts as fooled only if some background also gives a wrong answer (that is
almost always so; ``clean_wrong_not_fooled`` in the JSON counts the rest).

Why the answer equals the exhaustive search: a foreground is declared fooled
only on an observed wrong prediction, and robust only after every background
was tried. Ordering and batching only change *when* we find out:

- per foreground class, backgrounds are tried in the order a margin model
  learned from every composite scored so far predicts them most fooling;
  a foreground that looks about to be fooled tries one background per round,
  one that looks robust 1.5x more each round (<= ``max_step``); it stops at the
  first wrong prediction (early exit); see :mod:`bgbias.audit.challenge_search`;
- up to ``active`` foregrounds are searched at once (after a slow start that
  lets the first ones teach the ordering), rounds are padded to whole batches,
  and the pool is preprocessed once and kept as one
  tensor on the device (or as uint8 when over ``pool_bytes``, then
  preprocessed per batch: the same values, more compute);
- image, background and mask are each resized to the model input (only when
  the preprocessing has a size) and normalised before compositing:
  normalisation is affine per channel, so compositing normalised tensors
  equals normalising the composite.

The "worst" background of a fooled foreground is the first fooling one found
(in search order), with the wrong class's confidence. Fool rates of the top
backgrounds per class are exact on one fixed, seeded subset of foregrounds
(``fool_subset``), reusing every prediction the search made on them
(:mod:`bgbias.audit.challenge_top`).
Progress is saved atomically to ``STATE`` (default ``OUT.state``) every
``save_every`` foregrounds or ``save_seconds``, and on SIGTERM/SIGINT; rerunning the same command
resumes and gives the identical result; the file is removed when done
(the state and its checks live in :mod:`bgbias.audit.challenge_state`).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bgbias.audit.challenge_search import Pool, Search, class_interleaved, lower_bound, prep_fg
from bgbias.audit.challenge_shards import run_shards
from bgbias.audit.challenge_state import (
    StopSignals,
    FOOLED,
    SKIPPED,
    UNKNOWN,
    fingerprint,
    save_state,
    start_state,
    state_file,
)
from bgbias.audit.challenge_top import top_fooling
from bgbias.audit.core import (
    Audit,
    AuditConfig,
    ForegroundFiles,
    foreground_items,
    overlap_with_training,
    open_audit,
)
from bgbias.audit.groups import reference_levels, wilson_ci
from bgbias.audit.mask_check import check_masks
from bgbias.core.executors import check_executor
from bgbias.core.layout import list_items
from bgbias.core.record import build_record
from bgbias.core.seeding import numpy_rng
from bgbias.models.load import LoadedModel


@dataclass(frozen=True)
class ChallengeConfig(AuditConfig):
    """Everything that decides a challenge result; saved into ``challenge.json``."""

    # Settings that change speed, output detail or where files go, not the verdicts: not in the resume fingerprint.
    NOT_IN_FINGERPRINT: ClassVar[tuple[str, ...]] = (
        "batch_size", "workers", "device", "save_every", "save_seconds", "state", "progress",
        "pool_bytes", "top_k", "top_candidates", "fool_subset", "channels_last", "executor", "devices",
        "shards")

    batch_size: int = 256
    max_backgrounds: int | None = None   # random subset of the pool -> estimate, "exhaustive": false
    active: int = 512                    # foregrounds searched at once
    max_step: int = 64                   # most backgrounds one foreground tries per round
    top_k: int = 5                       # top fooling backgrounds reported per class
    top_candidates: int = 10             # per class, by search fool count, re-measured on the subset
    fool_subset: int | None = None       # fixed foreground subset for fool rates; None: min(200, max(50, n/4))
    save_every: int = 256                # foregrounds finished between state saves ...
    save_seconds: float = 60.0           # ... or seconds, whichever comes first
    pool_bytes: int = 4 << 30            # float pool above this -> uint8 pool, preprocessed per batch
    state: str | None = None             # resume file; default: <out>.state next to the output
    amp: bool = False                    # float16 autocast on GPU, bfloat16 on CPU (flips vs fp32 counted in "amp")
    channels_last: bool = True           # channels-last memory format on GPU (fp32 stays fp32)
    shards: int = 1                      # foreground shards searched by separate workers (same verdicts)
    executor: str = "local"              # local processes or "ray" for the shards
    devices: tuple[str, ...] | None = None  # one shard worker per device (e.g. cuda:0, cuda:1); None: cfg.device


def _as_list(batch: list) -> list:
    return batch


def _iterate(dataset: Dataset, order: list[int], workers: int):
    """Foregrounds in ``order``, decoded by ``workers`` processes, one at a time."""
    loader = DataLoader(torch.utils.data.Subset(dataset, order), batch_size=32, num_workers=workers,
                        collate_fn=_as_list)
    for batch in loader:
        yield from batch


@dataclass
class Setup:
    """What every process of one challenge run shares: the model, data lists, the pool, labels, the subset."""

    audit: Audit
    fg_items: list
    masks: list
    pool: Pool
    bg_ids: list[str]
    bg_labels: np.ndarray
    fg_labels: np.ndarray
    exhaustive: bool
    skipped: list
    fp: str
    sub: np.ndarray
    mask_check: dict

    def dataset(self) -> ForegroundFiles:
        return ForegroundFiles(self.fg_items, self.masks)


def prepare(cfg: ChallengeConfig, loaded: LoadedModel | None = None, pool_raw=None) -> Setup:
    """Check settings and data, load the model and the pool (``pool_raw``: already decoded, from the driver)."""
    data = Path(cfg.data)
    for name, v in (("batch_size", cfg.batch_size), ("active", cfg.active), ("max_step", cfg.max_step),
                    ("save_every", cfg.save_every)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}.")
    check_executor(cfg.executor)
    if cfg.shards < 1:
        raise ValueError(f"shards must be >= 1, got {cfg.shards}.")
    audit = open_audit(cfg, loaded, amp=cfg.amp, channels_last=cfg.channels_last)
    fg_items, masks = foreground_items(data, cfg.split)
    mask_check = check_masks(masks)
    if mask_check["warning"]:
        print(f"warning: {mask_check['warning']}", file=sys.stderr)
    bg_items = pool_items(cfg)
    exhaustive = cfg.max_backgrounds is None or cfg.max_backgrounds >= len(list_items(data, "only_bg_t", cfg.split))
    if not fg_items or not bg_items:
        raise ValueError(f"{data} has no foregrounds (original + fg_mask) or no only_bg_t backgrounds.")
    pool = Pool(audit, [it.path for it in bg_items], cfg.batch_size, cfg.workers, cfg.pool_bytes, cfg.progress,
                raw=pool_raw)
    skipped = [{"path": str(bg_items[i].path), "variant": "only_bg_t", "reason": r} for i, r in pool.bad]
    bg_ids = [bg_items[i].id for i in pool.index]
    bg_labels = np.array([bg_items[i].label for i in pool.index], dtype=np.int64)
    fg_labels = np.array([it.label for it in fg_items], dtype=np.int64)
    fp = fingerprint(cfg, [f"{it.label}/{it.id}" for it in fg_items], bg_ids)
    n_fg = len(fg_items)
    k = cfg.fool_subset if cfg.fool_subset is not None else min(200, max(50, n_fg // 4))
    sub = np.sort(numpy_rng(cfg.seed, "fool_subset").choice(n_fg, size=min(k, n_fg), replace=False)) \
        if cfg.top_k > 0 else np.zeros(0, np.int64)
    return Setup(audit, fg_items, masks, pool, bg_ids, bg_labels, fg_labels, exhaustive, skipped, fp, sub, mask_check)


def pool_items(cfg: ChallengeConfig) -> list:
    """The only_bg_t pool (a seeded subset of it with ``max_backgrounds``)."""
    data = Path(cfg.data)
    try:
        bg_items = list_items(data, "only_bg_t", cfg.split)
    except ValueError:
        raise ValueError(f"The challenge needs the only_bg_t variant as its background pool; {data} has none.") \
            from None
    if cfg.max_backgrounds is not None and cfg.max_backgrounds < len(bg_items):
        if cfg.max_backgrounds < 1:
            raise ValueError(f"--max-backgrounds must be >= 1, got {cfg.max_backgrounds}.")
        pick = numpy_rng(cfg.seed, "max_backgrounds").choice(len(bg_items), cfg.max_backgrounds, replace=False)
        bg_items = [bg_items[i] for i in sorted(pick)]
    return bg_items


def search(cfg: ChallengeConfig, st: Setup, queue: np.ndarray, state_path: Path | None, fp: str,
           on_save: Callable[[dict[str, Any]], None] | None = None) -> tuple[Search, dict[str, Any]]:
    """Search the foregrounds ``queue`` (all, or one shard), resuming from and saving to ``state_path``."""
    n_fg, n_bg = len(st.fg_items), len(st.pool)
    s = start_state(state_path, fp, n_fg, len(st.audit.classes), n_bg, cfg.seed, st.sub, queue)
    srch = Search(st.audit, st.pool, st.fg_labels, st.bg_labels, cfg, s)
    it = _iterate(st.dataset(), s["active"] + s["queue"][srch.read_pos:].tolist(), cfg.workers)
    for f in s["active"]:
        img, mask, _, _ = next(it)
        srch.add_tensors(f, prep_fg(st.audit, img, mask, st.pool.shape))
    paths = [it_.path for it_ in st.fg_items]
    n_q = len(s["queue"])
    since, saved_at = 0, time.time()
    with tqdm(total=n_q, initial=int((s["verdict"][s["queue"]] != UNKNOWN).sum()), desc="challenge", unit="fg",
              disable=not cfg.progress) as bar, StopSignals() as stop:
        while s["active"] or s["next_fg"] < n_q:
            if stop.signal is not None:   # SIGTERM/SIGINT: save between rounds (a consistent state), then stop
                if state_path:
                    save_state(state_path, s)
                raise KeyboardInterrupt(f"{stop.signal} received; progress saved to {state_path}")
            before = int((s["verdict"] == SKIPPED).sum())
            srch.fill(it, s["skipped"], paths)
            done = int((s["verdict"] == SKIPPED).sum()) - before
            if s["active"]:
                done += srch.round()
            since += done
            bar.update(done)
            due = since >= cfg.save_every or time.time() - saved_at >= cfg.save_seconds
            if state_path and due and (s["active"] or s["next_fg"] < n_q):
                save_state(state_path, s)
                since, saved_at = 0, time.time()
                if on_save:
                    on_save({"done": int((s["verdict"] != UNKNOWN).sum()), "forwards": s["forwards"]})
    return srch, s


def run_challenge(cfg: ChallengeConfig, out: str | os.PathLike | None = None, loaded: LoadedModel | None = None,
                  on_save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the challenge; returns the ``challenge.json`` dict (see docs/ARCHITECTURE.md).

    With ``shards > 1`` (or ``executor="ray"`` / several ``devices``) the foregrounds are split into shards
    searched by separate workers (:mod:`bgbias.audit.challenge_shards`); verdicts are the same.
    """
    t0 = time.time()
    data = Path(cfg.data)
    st = prepare(cfg, loaded)
    n_bg = len(st.pool)
    state_path = state_file(cfg.state, out)
    if cfg.shards > 1 or cfg.executor != "local" or len(cfg.devices or ()) > 1:
        s = run_shards(cfg, st, state_path, loaded, prepare, search)
        srch = Search(st.audit, st.pool, st.fg_labels, st.bg_labels, cfg, s)
    else:
        srch, s = search(cfg, st, class_interleaved(st.fg_labels, np.arange(len(st.fg_items))), state_path, st.fp,
                         on_save)
    fg_items, fg_labels, bg_ids, bg_labels, audit = st.fg_items, st.fg_labels, st.bg_ids, st.bg_labels, st.audit
    fgs = st.dataset()
    top, reach, analysis_forwards, analysis_bound = top_fooling(
        srch, lambda idx: _iterate(fgs, idx, 0), cfg, audit.classes, bg_ids)
    amp = amp_check(srch, fgs) if srch.amp else None
    v = s["verdict"]
    ok = v != SKIPPED
    fooled = v == FOOLED
    clean_ok = s["clean_pred"] == fg_labels
    per_class = {}
    for c, name in enumerate(audit.classes):
        sel = ok & (fg_labels == c)
        if sel.any():
            per_class[name] = {"challenge_accuracy": float(1 - fooled[sel].mean()), "n": int(sel.sum()),
                               "clean_accuracy": float(clean_ok[sel].mean())}
    fooled_list = [{"id": fg_items[f].id, "label": int(fg_labels[f]), "background": bg_ids[s["fool_bg"][f]],
                    "background_class": int(bg_labels[s["fool_bg"][f]]), "predicted": int(s["fool_pred"][f]),
                    "confidence": round(float(s["fool_conf"][f]), 6), "clean_correct": bool(clean_ok[f])}
                   for f in np.flatnonzero(fooled)]
    n = int(ok.sum())
    result = {
        "kind": "bgbias-challenge/1", "model": cfg.model, "data": str(data), "config": asdict(cfg),
        "preprocess": audit.preprocess.to_dict(), "label_map": audit.label_map.name, "classes": audit.classes,
        "challenge_accuracy": float(1 - fooled[ok].mean()) if n else None, "exhaustive": st.exhaustive,
        # reference levels of challenge_accuracy: Wilson 95% interval, chance 1/C, majority-class rate, too_small
        "challenge_ci95": wilson_ci(int((~fooled & ok).sum()), n),
        **reference_levels(fg_labels[ok], len(audit.classes), wilson_ci(int((~fooled & ok).sum()), n)),
        "n_foregrounds": n, "n_backgrounds": n_bg, "clean_accuracy": float(clean_ok[ok].mean()) if n else None,
        "clean_wrong_fooled": int((fooled & ~clean_ok & ok).sum()),
        "clean_wrong_not_fooled": int((~fooled & ~clean_ok & ok).sum()),
        "per_class": per_class, "fooled": fooled_list, "top_fooling": top, "top_fooling_reach": reach,
        "fool_subset_size": int(ok[st.sub].sum()),
        "forwards": int(s["forwards"]), "clean_forwards": int(s["clean_forwards"]),
        "analysis_forwards": int(analysis_forwards), "analysis_forwards_bound": int(analysis_bound),
        "exhaustive_forwards": n * n_bg, "lower_bound_forwards": lower_bound(v, n_bg),
        "amp": amp, "seconds": round(time.time() - t0, 3), "skipped": st.skipped + list(s["skipped"]),
        "split": cfg.split,
        "overlap_with_training": overlap_with_training(audit, [it.id for it in fg_items], cfg.split),
        "masks": st.mask_check,
        "record": build_record(audit.model.files, audit.model.module, audit.device, cfg.seed, data,
                               audit.preprocess.to_dict()),
    }
    if state_path and state_path.is_file():
        state_path.unlink()
    return result


def amp_check(srch: Search, fgs: Dataset) -> dict[str, int]:
    """Mixed precision may flip a verdict: re-score each fooled foreground's fooling pair in fp32 and count those
    fp32 gets right (the verdicts reported stay amp's; robust ones are not re-checked)."""
    s = srch.s
    fooled = np.flatnonzero(s["verdict"] == FOOLED)
    missing = [int(f) for f in fooled if int(f) not in srch.tensors]
    for img, mask, i, _ in _iterate(fgs, missing, 0):
        srch.add_tensors(i, prep_fg(srch.audit, img, mask, srch.pool.shape))
    preds, _, _ = srch.forward(fooled.tolist(), s["fool_bg"][fooled], fp32=True)
    unconfirmed = int((preds == srch.fg_labels[fooled]).sum())
    return {"fooled_unconfirmed_fp32": unconfirmed, "recheck_forwards": len(fooled)}
