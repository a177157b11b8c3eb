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

- per foreground, backgrounds are tried in order of how often they fooled
  foregrounds of the same class so far, then of any class, then other classes'
  backgrounds first, then a seeded shuffle;
- a foreground tries 1, 1, 1, 1, 2, 3, 4, 6, ... backgrounds per round (1.5x
  growth, <= ``max_step``) and stops at the first round with a wrong
  prediction (early exit);
- up to ``active`` foregrounds are searched at once (after a slow start that
  lets the first ones teach the ordering), so one forward pass holds many
  foregrounds x backgrounds; the pool is preprocessed once and kept as one
  tensor on the device (or as uint8 when over ``pool_bytes``, then
  preprocessed per batch: the same values, more compute);
- image, background and mask are each resized to the model input (only when
  the preprocessing has a size) and normalised before compositing:
  normalisation is affine per channel, so compositing normalised tensors
  equals normalising the composite.

The "worst" background of a fooled foreground is the first fooling one found
(in search order), with the wrong class's confidence. Fool rates of the top
backgrounds per class are measured afterwards on one fixed, seeded subset of
foregrounds (``fool_subset``) so rates are comparable across backgrounds.
Progress is saved atomically to ``STATE`` (default ``OUT.state``) every
``save_every`` foregrounds or ``save_seconds``; rerunning the same command
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

from bgbias.audit.challenge_state import (
    FOOLED,
    ROBUST,
    SKIPPED,
    UNKNOWN,
    fingerprint,
    save_state,
    start_state,
    state_file,
)
from bgbias.audit.core import (
    Audit,
    AuditConfig,
    ForegroundFiles,
    ImageFiles,
    collate_by_size,
    foreground_items,
    overlap_with_training,
    open_audit,
)
from bgbias.audit.mask_check import check_masks
from bgbias.core.compose import compose
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
        "pool_bytes", "top_k", "top_candidates", "fool_subset")

    batch_size: int = 256
    max_backgrounds: int | None = None   # random subset of the pool -> estimate, "exhaustive": false
    active: int = 128                    # foregrounds searched at once
    max_step: int = 64                   # most backgrounds one foreground tries per round
    top_k: int = 5                       # top fooling backgrounds reported per class
    top_candidates: int = 10             # per class, by search fool count, re-measured on the subset
    fool_subset: int = 200               # fixed foreground subset for comparable fool rates
    save_every: int = 256                # foregrounds finished between state saves ...
    save_seconds: float = 60.0           # ... or seconds, whichever comes first
    pool_bytes: int = 4 << 30            # float pool above this -> uint8 pool, preprocessed per batch
    state: str | None = None             # resume file; default: <out>.state next to the output


class Pool:
    """The background pool, preprocessed once: float ``[N, 3, H, W]`` on the device, or uint8 when too big."""

    def __init__(self, audit: Audit, paths: list, batch_size: int, workers: int, pool_bytes: int, progress: bool):
        self.audit = audit
        self.raw: list[torch.Tensor] = []
        self.bad: list[tuple[int, str]] = []
        keep: list[int] = []
        loader = DataLoader(ImageFiles(paths), batch_size=batch_size, num_workers=workers, collate_fn=collate_by_size)
        for groups, bad in tqdm(loader, desc="backgrounds", disable=not progress, leave=False):
            self.bad.extend(bad)
            for images, idx in groups:
                self.raw.extend(images)
                keep.extend(idx.tolist())
        order = np.argsort(keep, kind="stable")
        self.index = np.asarray(keep, dtype=np.int64)[order]     # pool row -> position in `paths`
        self.raw = [self.raw[i] for i in order]
        if not self.raw:
            raise ValueError("No readable only_bg_t background in the pool.")
        sizes = {tuple(t.shape[-2:]) for t in self.raw}
        if audit.preprocess.size is None and len(sizes) > 1:
            raise ValueError(f"Backgrounds differ in size ({sorted(sizes)[:3]}); pass --size H W to resize them.")
        first = self.prep(self.raw[0][None])
        self.shape = tuple(first.shape[-2:])
        need = len(self.raw) * first[0].numel() * 4
        self.dense = None
        if need <= pool_bytes:
            self.dense = torch.cat([self.prep(torch.stack(self.raw[i:i + batch_size])) if len(sizes) == 1
                                    else self.prep(self.raw[i][None])
                                    for i in range(0, len(self.raw), batch_size if len(sizes) == 1 else 1)])
            self.raw = []
        else:
            self.raw_t = torch.stack(self.raw) if len(sizes) == 1 else None

    def prep(self, images: torch.Tensor) -> torch.Tensor:
        return self.audit.preprocess(images.to(self.audit.device))

    def __len__(self) -> int:
        return len(self.index)

    def get(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Preprocessed backgrounds for pool rows (identical values whichever storage is used)."""
        if self.dense is not None:
            return self.dense[torch.as_tensor(rows, device=self.dense.device)]
        if self.raw_t is not None:
            return self.prep(self.raw_t[torch.as_tensor(rows)])
        return torch.cat([self.prep(self.raw[int(r)][None]) for r in rows])


def _prep_fg(audit: Audit, img: torch.Tensor, mask: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    x = audit.preprocess(img[None].to(audit.device))[0]
    m = mask[None, None].to(audit.device, torch.float32)
    if tuple(m.shape[-2:]) != tuple(x.shape[-2:]):      # the image's own geometry (resize, centre crop)
        m = audit.preprocess.resize(m, "bilinear").clamp_(0, 1)
    if tuple(x.shape[-2:]) != tuple(shape):
        raise ValueError(f"A foreground is {x.shape[-1]}x{x.shape[-2]} but the backgrounds are {shape[1]}x{shape[0]}; "
                         "pass --size H W so both are resized to the model input.")
    return x, m[0]


class Search:
    """The early-exit, reordered, batched search; its whole state is ``self.s`` (saved for resume)."""

    def __init__(self, audit: Audit, pool: Pool, fg_labels: np.ndarray, bg_labels: np.ndarray, cfg: ChallengeConfig,
                 state: dict[str, Any]):
        self.audit, self.pool, self.cfg, self.s = audit, pool, cfg, state
        self.fg_labels, self.bg_labels = fg_labels, bg_labels
        self.tensors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def orders(self, classes: set[int]) -> dict[int, np.ndarray]:
        """Per foreground class y: pool rows by fools of class y, then fools of any class, then other
        classes' backgrounds before class y's, then a seeded shuffle (not the folder order, which is class-sorted).
        """
        count = self.s["count"]
        total = count.sum(0)
        out = {}
        for y in classes:
            out[y] = np.lexsort((self.s["shuffle"], self.bg_labels == y, -total, -count[y]))
        return out

    def forward(self, fg_slots: list[int], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Composite foreground ``fg_slots[i]`` with pool row ``rows[i]``; returns (dataset preds, confidences)."""
        preds, confs = [], []
        bs = self.cfg.batch_size
        for i in range(0, len(rows), bs):
            fgs = torch.stack([self.tensors[f][0] for f in fg_slots[i:i + bs]])
            ms = torch.stack([self.tensors[f][1] for f in fg_slots[i:i + bs]])
            logits = self.audit.logits(compose(fgs, self.pool.get(rows[i:i + bs]), ms))
            preds.append(self.audit.label_map.predict(logits).cpu().numpy())
            confs.append(logits.softmax(-1).max(-1).values.cpu().numpy())
        return np.concatenate(preds), np.concatenate(confs)

    def round(self) -> int:
        """Try the next backgrounds for every active foreground; returns how many foregrounds finished."""
        s, n_bg = self.s, len(self.pool)
        active = list(s["active"])
        orders = self.orders({int(self.fg_labels[f]) for f in active})
        slots, rows, spans = [], [], []
        for a, f in enumerate(active):
            tried = s["tried"][a]
            k = min(max(1, int(tried.sum()) // 2), self.cfg.max_step)
            o = orders[int(self.fg_labels[f])]
            cand = o[~tried[o]][:k]
            spans.append((len(rows), len(rows) + len(cand)))
            slots.extend([f] * len(cand))
            rows.extend(cand.tolist())
        rows_a = np.asarray(rows, dtype=np.int64)
        preds, confs = self.forward(slots, rows_a)
        s["forwards"] += len(rows_a)
        s["rounds"] += 1
        wrong = preds != self.fg_labels[np.asarray(slots, dtype=np.int64)]
        np.add.at(s["count"], (self.fg_labels[np.asarray(slots, dtype=np.int64)][wrong], rows_a[wrong]), 1)
        keep_a, done = [], 0
        for a, (f, (lo, hi)) in enumerate(zip(active, spans)):
            s["tried"][a, rows_a[lo:hi]] = True
            hit = np.flatnonzero(wrong[lo:hi])
            if hit.size:
                j = lo + int(hit[0])
                s["verdict"][f], s["fool_bg"][f] = FOOLED, rows_a[j]
                s["fool_pred"][f], s["fool_conf"][f] = preds[j], confs[j]
            elif s["tried"][a].all():
                s["verdict"][f] = ROBUST
            else:
                keep_a.append(a)
                continue
            done += 1
            self.tensors.pop(int(f), None)
        s["active"] = [active[a] for a in keep_a]
        s["tried"] = s["tried"][keep_a] if keep_a else np.zeros((0, n_bg), dtype=bool)
        return done

    def fill(self, it, skipped: list, paths: list) -> None:
        """Activate queued foregrounds (load, preprocess, one clean forward each).

        Slow start: at most ``1 + finished + rounds`` (<= ``active``) at once, so the first foregrounds run
        nearly one by one and teach the ordering which backgrounds fool, before many run in parallel.
        """
        s, new = self.s, []
        cap = min(self.cfg.active, 1 + int((s["verdict"] != UNKNOWN).sum()) + int(s["rounds"]))
        while len(s["active"]) < cap and s["next_fg"] < len(self.fg_labels):
            img, mask, i, reason = next(it)
            s["next_fg"] += 1
            if img is None:
                s["verdict"][i] = SKIPPED
                skipped.append({"path": str(paths[i]), "variant": "original", "reason": reason})
                continue
            self.tensors[i] = _prep_fg(self.audit, img, mask, self.pool.shape)
            s["active"].append(i)
            s["tried"] = np.concatenate([s["tried"], np.zeros((1, len(self.pool)), dtype=bool)])
            new.append(i)
        for j in range(0, len(new), self.cfg.batch_size):
            chunk = new[j:j + self.cfg.batch_size]
            logits = self.audit.logits(torch.stack([self.tensors[f][0] for f in chunk]))
            s["clean_pred"][chunk] = self.audit.label_map.predict(logits).cpu().numpy()
            s["clean_forwards"] += len(chunk)


def _as_list(batch: list) -> list:
    return batch


def _iterate(dataset: Dataset, order: list[int], workers: int):
    """Foregrounds in ``order``, decoded by ``workers`` processes, one at a time."""
    loader = DataLoader(torch.utils.data.Subset(dataset, order), batch_size=32, num_workers=workers,
                        collate_fn=_as_list)
    for batch in loader:
        yield from batch


def _top_fooling(search: Search, fgs: Dataset, cfg: ChallengeConfig, classes: list[str], bg_ids: list[str]):
    """Per background class: re-measure the search's most-fooling backgrounds on one fixed foreground subset."""
    s = search.s
    valid = np.flatnonzero((s["verdict"] == FOOLED) | (s["verdict"] == ROBUST))
    if cfg.top_k <= 0 or not len(valid):
        return {}, {}, 0
    rng = numpy_rng(cfg.seed, "fool_subset")
    subset = np.sort(rng.choice(valid, size=min(cfg.fool_subset, len(valid)), replace=False))
    for img, mask, i, _ in _iterate(fgs, subset.tolist(), 0):
        search.tensors[i] = _prep_fg(search.audit, img, mask, search.pool.shape)
    total, forwards, top, reach = s["count"].sum(0), 0, {}, {}
    for c, name in enumerate(classes):
        rows_c = np.flatnonzero(search.bg_labels == c)
        others = [int(f) for f in subset if search.fg_labels[f] != c]
        if not len(rows_c) or not others:
            continue
        other_fools = total[rows_c] - s["count"][c, rows_c]
        cand = rows_c[np.lexsort((rows_c, -other_fools))][:cfg.top_candidates]
        slots = [f for _ in cand for f in others]
        rows = np.repeat(cand, len(others))
        preds, _ = search.forward(slots, rows)
        forwards += len(rows)
        wrong = (preds != search.fg_labels[np.asarray(slots)]).reshape(len(cand), len(others))
        to_c = (preds == c).reshape(len(cand), len(others))
        rate = wrong.mean(1)
        rank = np.lexsort((cand, -rate))[:cfg.top_k]
        top[name] = [{"background": bg_ids[cand[r]], "fool_rate": float(rate[r]), "n_tested": len(others),
                      "to_class_rate": float(to_c[r].mean()), "search_fools": int(other_fools[np.flatnonzero(
                          rows_c == cand[r])[0]])} for r in rank]
        reach[name] = float(to_c.any(0).mean())
    return top, reach, forwards


def run_challenge(cfg: ChallengeConfig, out: str | os.PathLike | None = None, loaded: LoadedModel | None = None,
                  on_save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the challenge; returns the ``challenge.json`` dict (see docs/ARCHITECTURE.md)."""
    t0 = time.time()
    data = Path(cfg.data)
    for name, v in (("batch_size", cfg.batch_size), ("active", cfg.active), ("max_step", cfg.max_step),
                    ("save_every", cfg.save_every)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}.")
    audit = open_audit(cfg, loaded)
    fg_items, masks = foreground_items(data, cfg.split)
    mask_check = check_masks(masks)
    if mask_check["warning"]:
        print(f"warning: {mask_check['warning']}", file=sys.stderr)
    try:
        bg_items = list_items(data, "only_bg_t", cfg.split)
    except ValueError:
        raise ValueError(f"The challenge needs the only_bg_t variant as its background pool; {data} has none.") \
            from None
    exhaustive = cfg.max_backgrounds is None or cfg.max_backgrounds >= len(bg_items)
    if not exhaustive:
        if cfg.max_backgrounds < 1:
            raise ValueError(f"--max-backgrounds must be >= 1, got {cfg.max_backgrounds}.")
        pick = numpy_rng(cfg.seed, "max_backgrounds").choice(len(bg_items), cfg.max_backgrounds, replace=False)
        bg_items = [bg_items[i] for i in sorted(pick)]
    if not fg_items or not bg_items:
        raise ValueError(f"{data} has no foregrounds (original + fg_mask) or no only_bg_t backgrounds.")
    pool = Pool(audit, [it.path for it in bg_items], cfg.batch_size, cfg.workers, cfg.pool_bytes, cfg.progress)
    skipped = [{"path": str(bg_items[i].path), "variant": "only_bg_t", "reason": r} for i, r in pool.bad]
    bg_ids = [bg_items[i].id for i in pool.index]
    bg_labels = np.array([bg_items[i].label for i in pool.index], dtype=np.int64)
    fg_labels = np.array([it.label for it in fg_items], dtype=np.int64)
    n_fg, n_bg = len(fg_items), len(pool)
    state_path = state_file(cfg.state, out)
    fp = fingerprint(cfg, [f"{it.label}/{it.id}" for it in fg_items], bg_ids)
    s = start_state(state_path, fp, n_fg, len(audit.classes), n_bg, cfg.seed)
    fgs = ForegroundFiles(fg_items, masks)
    search = Search(audit, pool, fg_labels, bg_labels, cfg, s)
    it = _iterate(fgs, s["active"] + list(range(s["next_fg"], n_fg)), cfg.workers)
    for f in s["active"]:
        img, mask, _, _ = next(it)
        search.tensors[f] = _prep_fg(audit, img, mask, pool.shape)
    paths = [it_.path for it_ in fg_items]
    since, saved_at = 0, time.time()
    with tqdm(total=n_fg, initial=int((s["verdict"] != UNKNOWN).sum()), desc="challenge", unit="fg",
              disable=not cfg.progress) as bar:
        while s["active"] or s["next_fg"] < n_fg:
            before = int((s["verdict"] == SKIPPED).sum())
            search.fill(it, s["skipped"], paths)
            done = int((s["verdict"] == SKIPPED).sum()) - before
            if s["active"]:
                done += search.round()
            since += done
            bar.update(done)
            due = since >= cfg.save_every or time.time() - saved_at >= cfg.save_seconds
            if state_path and due and (s["active"] or s["next_fg"] < n_fg):
                save_state(state_path, s)
                since, saved_at = 0, time.time()
                if on_save:
                    on_save({"done": int((s["verdict"] != UNKNOWN).sum()), "forwards": s["forwards"]})
    top, reach, analysis_forwards = _top_fooling(search, fgs, cfg, audit.classes, bg_ids)
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
        "challenge_accuracy": float(1 - fooled[ok].mean()) if n else None, "exhaustive": exhaustive,
        "n_foregrounds": n, "n_backgrounds": n_bg, "clean_accuracy": float(clean_ok[ok].mean()) if n else None,
        "clean_wrong_fooled": int((fooled & ~clean_ok & ok).sum()),
        "clean_wrong_not_fooled": int((~fooled & ~clean_ok & ok).sum()),
        "per_class": per_class, "fooled": fooled_list, "top_fooling": top, "top_fooling_reach": reach,
        "fool_subset_size": int(min(cfg.fool_subset, n)),
        "forwards": int(s["forwards"]), "clean_forwards": int(s["clean_forwards"]),
        "analysis_forwards": int(analysis_forwards), "exhaustive_forwards": n * n_bg,
        "seconds": round(time.time() - t0, 3), "skipped": skipped + s["skipped"], "split": cfg.split,
        "overlap_with_training": overlap_with_training(audit, [it.id for it in fg_items], cfg.split),
        "masks": mask_check,
        "record": build_record(audit.model.files, audit.model.module, audit.device, cfg.seed, data,
                               audit.preprocess.to_dict()),
    }
    if state_path and state_path.is_file():
        state_path.unlink()
    return result
