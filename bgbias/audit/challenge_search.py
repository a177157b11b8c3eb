"""The learned early-exit search of ``bgbias challenge`` (the pool and foreground tensors: :mod:`.challenge_pool`).

Why it stays exact: a foreground is declared fooled only on an observed wrong
prediction and robust only after every pool background was tried; ordering,
step sizes and batching only change *when* we find out.

How it gets near the exact lower bound (one forward per fooled foreground plus
the whole pool per robust one):

- every scored composite teaches a *margin model*: the margin (true-class score
  minus the best other score, in dataset classes) moves by ``delta(f, b)``
  from the clean image's margin. Per foreground class y and background b the
  search keeps the sum and count of deltas; its estimate ``est[y, b]`` shrinks
  the pair's mean towards b's mean change on the other classes plus the class
  pair's offset (:meth:`Search.estimates`). Backgrounds are tried in ascending ``est[y, b]`` (the
  most margin-lowering first), ties: other classes' backgrounds before y's,
  then a seeded shuffle;
- fool counts per (class, background) enter the order as a Beta posterior whose prior is the background's
  fool rate on the other classes (shrunk to the rate of backgrounds tried for the first time) times its class
  pair's lift (own-class backgrounds start at 0), ``PRIOR`` pseudo-tries strong, so a background that misleads
  every class is tried first on a class that has not met it yet; a foreground that looks close to fooled
  picks by its own predicted P(margin < 0) and a draw from a concentrated posterior (near-ties broken per
  foreground, so foregrounds of one class spread over equally promising untried backgrounds instead of all
  failing on the same one);
- the foreground queue interleaves the classes (folder order within each), so every class learns during the
  slow start instead of each class arriving untaught, in bulk, once the search runs wide;
- a foreground's predicted margin on its next background is its clean margin
  plus ``est`` plus its own mean residual. When that is within
  ``2 sigma`` (sigma: the running error of the prediction) of a wrong answer it
  tries one background per round (a fooled foreground then wastes only the
  backgrounds ranked before its first fooling one); when it looks safely robust
  it tries 1.5x more per round (<= ``max_step``): robust foregrounds need the
  whole pool anyway;
- each round is padded to a whole number of batches with the next backgrounds
  of the most robust-looking foregrounds that already tried ``PAD_FRAC`` of the pool (padding a foreground
  that is about to be fooled wastes forwards), and up to ``active`` foregrounds are
  searched at once (after a slow start: ``1 + 0.3 x finished + rounds / 8``), so forward passes stay full;
- clean images are scored in blocks of ``batch_size`` queued foregrounds, not a few per round.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bgbias.audit.challenge_pool import Pool, prep_fg, read_pool
from bgbias.audit.challenge_state import FOOLED, ROBUST, SKIPPED, UNKNOWN
from bgbias.audit.core import Audit
from bgbias.core.compose import compose

SHRINK = 1.0          # pseudo-count pulling a mean margin change towards its prior (pair: bg + class pair)
FOOL_WEIGHT = 4.0     # weight of the log fool rate against the margin estimate in the background order
SLOW_DONE, SLOW_ROUNDS = 0.3, 8   # slow start: active <= 1 + SLOW_DONE x finished + rounds // SLOW_ROUNDS
THOMPSON = 1000.0     # Beta posterior concentration multiplier of the draw: only near-ties are broken at random
POP = 2.0             # pseudo-tries of the fresh-background rate behind a background's rate on other classes
LIFT = 1.0            # pseudo-count of a class pair's lift over its backgrounds' rates
PRIOR = 16.0          # pseudo-tries of fool_prior behind a class's own fool counts of a background
SAFE_Z = 2.0          # predicted margin above SAFE_Z sigmas -> the foreground looks robust: grow its step
PAD_FRAC = 0.1        # only foregrounds that tried this share of the pool unfooled pad a round's last batch


class Search:
    """The early-exit, learned-order, batched search; its whole state is ``self.s`` (saved for resume)."""

    def __init__(self, audit: Audit, pool: Pool, fg_labels: np.ndarray, bg_labels: np.ndarray, cfg: Any,
                 state: dict[str, Any]):
        self.audit, self.pool, self.cfg, self.s = audit, pool, cfg, state
        self.fg_labels, self.bg_labels = fg_labels, bg_labels
        self.n_classes = int(state["dsum"].shape[0])
        self.tensors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hard: dict[int, bool] = {}                   # foreground -> its mask is 0/1 only
        self.members: torch.Tensor | None = None
        self.sub_row = {int(f): r for r, f in enumerate(state["sub"])}
        self.ready: dict[int, tuple[int, Any]] = {}      # queue position -> (foreground, tensors or skip reason)
        self.read_pos = self.block_start()               # queue position the foreground reader is at
        self.bg_onehot = np.eye(self.n_classes)[bg_labels]                 # [n_bg, C]
        self.amp = audit.amp                              # mixed precision and channels-last live in the Audit

    # -- scoring ---------------------------------------------------------------------------------------------
    def _member(self, k: int) -> torch.Tensor:
        """``[K_model, C]`` bool: model class i means dataset class c (built once)."""
        if self.members is None:
            table = self.audit.label_map.table
            m = torch.zeros(k, self.n_classes, dtype=torch.bool)
            for i in range(k):
                c = i if table is None else table[i]
                if 0 <= c < self.n_classes:
                    m[i, c] = True
            self.members = m.to(self.audit.device)
        return self.members

    def score(self, x: torch.Tensor, y: np.ndarray, fp32: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Composites ``x`` with true classes ``y`` -> (dataset predictions, confidences, margins) as numpy."""
        logits = self.audit.logits(x, fp32)
        mk = self._member(logits.shape[1])[:, torch.as_tensor(y, device=logits.device)].T
        true = logits.masked_fill(~mk, float("-inf")).amax(1)
        other = logits.masked_fill(mk, float("-inf")).amax(1)
        margin = torch.nan_to_num(true - other, nan=0.0, posinf=1e9, neginf=-1e9)
        return (self.audit.label_map.predict(logits).cpu().numpy(), logits.softmax(-1).max(-1).values.cpu().numpy(),
                margin.cpu().numpy())

    def forward(self, fg_slots: list[int], rows: np.ndarray, fp32: bool = False):
        """Composite foreground ``fg_slots[i]`` with pool row ``rows[i]`` -> (preds, confidences, margins).

        Split into equal chunks of at most ``batch_size`` (300 composites: 150 + 150, not 256 + 44: a small
        remainder batch runs far below the batch rate on CPU).
        """
        out = [], [], []
        n = len(rows)
        step = -(-n // -(-n // self.cfg.batch_size)) if n else 1
        slots = np.asarray(fg_slots, dtype=np.int64)
        for i in range(0, n, step):
            u, inv = np.unique(slots[i:i + step], return_inverse=True)
            inv_t = torch.as_tensor(inv, device=self.audit.device)
            fgs = torch.stack([self.tensors[int(f)][0] for f in u])[inv_t]
            ms = torch.stack([self.tensors[int(f)][1] for f in u])[inv_t]
            bgs = self.pool.get(rows[i:i + step])
            hard = all(self.hard.get(int(f), False) for f in u)   # 0/1 masks: compose's one-select path
            x = compose(fgs, bgs, ms.bool() if hard else ms)
            for o, v in zip(out, self.score(x, self.fg_labels[slots[i:i + step]], fp32)):
                o.append(v)
        return tuple(np.concatenate(o) if o else np.zeros(0) for o in out)

    def add_tensors(self, f: int, t: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Keep foreground f's preprocessed image and mask (and whether the mask is hard 0/1)."""
        self.tensors[f] = t
        self.hard[f] = bool(((t[1] == 0) | (t[1] == 1)).all())

    # -- the margin model ------------------------------------------------------------------------------------
    def estimates(self) -> np.ndarray:
        """``est[y, b]``: expected margin change of a class-y foreground on background b (see module doc).

        The pair's mean shrunk to ``v[b] + u[y, class of b]``: v, b's mean change on the classes other than its
        own (shrunk to the mean change of first-time backgrounds), u, the class pair's mean offset from its
        backgrounds' v. (Offsets from the pair's own mean, as before, cancelled b's effect exactly when b made
        up most of its pair's tries, so a class meeting a strong background had nothing to go by.)
        """
        dsum, dcnt = self.s["dsum"], self.s["dcnt"].astype(np.float64)
        other = 1.0 - self.bg_onehot.T
        fresh = self.s.get("fresh", np.zeros(3))
        d0 = fresh[2] / (fresh[1] + 1.0) if len(fresh) > 2 else 0.0
        v = ((dsum * other).sum(0) + SHRINK * d0) / ((dcnt * other).sum(0) + SHRINK)        # [n_bg]
        u = ((dsum - dcnt * v) @ self.bg_onehot) / (dcnt @ self.bg_onehot + SHRINK)       # [C, C]
        prior = v[None, :] + u[:, self.bg_labels]
        return (dsum + SHRINK * prior) / (dcnt + SHRINK)

    def sigma(self) -> float:
        n = self.s["err_n"]
        return float(np.sqrt(self.s["err2"] / n)) if n >= 4 else float("inf")

    def rank_parts(self, est: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The background order's two terms, lower = try first: the margin estimate in units of its spread, and
        ``FOOL_WEIGHT`` x minus the log of the fool rate, here as Beta(alpha, beta) over class-y fools / tries
        with ``PRIOR`` pseudo-tries at :meth:`fool_prior`.

        Margins alone learn slowly when nearly every foreground is fooled at once (few composites per class);
        fool counts alone ignore how close the robust tries came. Their mix was best on the bench's three models.
        """
        cnt, tries = self.s["count"].astype(np.float64), self.s["dcnt"].astype(np.float64)
        prior = self.fool_prior(cnt, tries)
        alpha, beta = cnt + PRIOR * prior, tries - cnt + PRIOR * (1.0 - prior)
        seen = tries > 0
        spread = float(np.sqrt(np.mean((self.s["dsum"][seen] / tries[seen]) ** 2))) if seen.any() else 1.0
        return est / max(spread, 1e-9), alpha, beta

    def fool_prior(self, cnt: np.ndarray, tries: np.ndarray) -> np.ndarray:
        """``[C, n_bg]`` prior fool rate of background b on class y, before class y's own tries of b.

        b's fool rate on the classes other than its own, shrunk with ``POP`` pseudo-tries to the rate of
        backgrounds tried for the first time (``fresh``: an unbiased guess for an untried one; the pool's mean
        rate is not, since good backgrounds are tried most), times the (y, class of b) pair's lift: its fools
        over what its backgrounds' rates predict (``LIFT`` pseudo-counts). A background of y's own class starts
        at 0: it shows the class, it does not mislead. So a background that fooled other classes leads on a
        class that has not met it yet, whatever that class's pairs know (a lift relative to the pair, as
        before, cancelled exactly this when one background made up its pair's tries).
        """
        own = self.bg_onehot.T.astype(bool)                                           # [C, n_bg]
        fresh = self.s.get("fresh", np.zeros(2))
        p0 = (fresh[0] + 1.0) / (fresh[1] + 2.0)
        rate = ((cnt * ~own).sum(0) + POP * p0) / ((tries * ~own).sum(0) + POP)        # [n_bg]
        lift = (cnt @ self.bg_onehot + LIFT) / ((tries * rate) @ self.bg_onehot + LIFT)  # [C, C]
        prior = rate[None, :] * lift[:, self.bg_labels]
        prior[own] = 0.0
        return np.clip(prior, 1e-3, 1.0 - 1e-3)

    def orders(self, parts, classes: set[int]) -> dict[int, np.ndarray]:
        """Per class, the order by the mean fool rate (shared by the foregrounds that look robust)."""
        m, alpha, beta = parts
        score = m - FOOL_WEIGHT * np.log(alpha / (alpha + beta))
        return {y: np.lexsort((self.s["shuffle"], self.bg_labels == y, score[y])) for y in classes}

    def sampled_first(self, parts, ys: np.ndarray, tried: np.ndarray, base: np.ndarray, est: np.ndarray,
                      sig: float) -> np.ndarray:
        """Per looks-fooled foreground (class ``ys[i]``, tried mask ``tried[i]``, predicted margin before the
        background ``base[i]``): its best untried background by ``-log P(margin < 0) - FOOL_WEIGHT log p``, the
        Gaussian margin prediction (sigma ``sig``) of this foreground (a hard foreground needs the backgrounds
        that lower margins most, not those that fool its class most often) and the class's fool rate p drawn
        from its Beta posterior (concentrated ``THOMPSON`` x: near-ties broken per foreground). Before sigma is
        known the margin term is the class's ``est`` in units of its spread.

        Foregrounds of one class searched at the same time would otherwise all try the same untried
        background (equal priors) and fail together; a wide draw instead wasted tries on the always-fooled
        model (1.3x of the bound, against 1.06x). One generator per round, seeded by (seed, round), so a
        resumed run draws the same.
        """
        m, alpha, beta = parts
        rng = np.random.default_rng([int(self.cfg.seed), int(self.s["rounds"])])
        p = np.maximum(rng.beta(alpha[ys] * THOMPSON, beta[ys] * THOMPSON), 1e-12)
        score = m[ys] - FOOL_WEIGHT * np.log(p)
        if np.isfinite(sig) and sig > 0:         # the foreground's own P(margin < 0) instead of the class's term
            log_fool = torch.special.log_ndtr(torch.from_numpy(-(base[:, None] + est[ys]) / sig)).numpy()
            score = -log_fool - FOOL_WEIGHT * np.log(p)
        score[tried] = np.inf
        return score.argmin(1)

    # -- one round -------------------------------------------------------------------------------------------
    def round(self) -> int:
        """Try the next backgrounds for every active foreground; returns how many foregrounds finished."""
        s, n_bg, bs = self.s, len(self.pool), self.cfg.batch_size
        active = list(s["active"])
        est = self.estimates()
        parts = self.rank_parts(est)
        orders = self.orders(parts, {int(self.fg_labels[f]) for f in active})
        sig = self.sigma()
        fa = np.asarray(active, dtype=np.int64)
        ya, tried = self.fg_labels[fa], s["tried"]
        rank = np.empty((self.n_classes, n_bg), dtype=np.int64)    # position of b in class y's mean order
        for y, o in orders.items():
            rank[y, o] = np.arange(n_bg)
        first = np.where(tried, n_bg, rank[ya]).argmin(1)          # first untried background in that order
        n_t = tried.sum(1)
        pred = s["clean_margin"][fa] + est[ya, first] + s["res_sum"] / (n_t + 1.0)
        z = pred / sig if np.isfinite(sig) and sig > 0 else np.zeros(len(active))
        near = z < SAFE_Z
        pick = first.copy()
        if near.any():                                             # the looks-fooled ones: one draw each
            base = (s["clean_margin"][fa] + s["res_sum"] / (n_t + 1.0))[near]
            pick[near] = self.sampled_first(parts, ya[near], tried[near], base, est, sig)
        want = np.where(near, 1, np.minimum(np.maximum(1, n_t // 2), self.cfg.max_step))
        want = np.minimum(want, n_bg - n_t)
        full = len(active) >= self.cfg.active or s["next_fg"] >= len(s["queue"])
        pad = (-int(want.sum())) % bs if full else 0          # never pad the slow start
        for a in np.argsort(-z, kind="stable"):                 # fill the last batch with the most robust-looking
            if pad <= 0 or z[a] < SAFE_Z:
                break
            if n_t[a] < PAD_FRAC * n_bg:
                continue
            extra = min(pad, n_bg - int(n_t[a]) - int(want[a]))
            want[a] += extra
            pad -= extra
        slots, rows, spans = [], [], []
        for a, f in enumerate(active):
            if want[a] == 1:
                cand = pick[a:a + 1]
            else:
                o = orders[int(ya[a])]
                cand = o[~tried[a][o]][:want[a]]
            spans.append((len(rows), len(rows) + len(cand)))
            slots.extend([f] * len(cand))
            rows.extend(cand.tolist())
        rows_a, slots_a = np.asarray(rows, dtype=np.int64), np.asarray(slots, dtype=np.int64)
        preds, confs, margins = self.forward(slots, rows_a)
        s["forwards"] += len(rows_a)
        s["rounds"] += 1
        ys = self.fg_labels[slots_a]
        wrong = preds != ys
        other = self.bg_labels[rows_a] != ys         # fresh: no other class tried the background before this round
        fresh = other & ((s["dcnt"] * (1 - self.bg_onehot.T)).sum(0)[rows_a] == 0)
        delta0 = margins.astype(np.float64) - s["clean_margin"][slots_a]
        s["fresh"] = s.get("fresh", np.zeros(3)) + [float((wrong & fresh).sum()), float(fresh.sum()),
                                                   float(delta0[fresh].sum())]
        delta = margins.astype(np.float64) - s["clean_margin"][slots_a]
        resid = delta - est[ys, rows_a]
        s["err2"] += float((resid ** 2).sum())
        s["err_n"] += len(resid)
        np.add.at(s["dsum"], (ys, rows_a), delta)
        np.add.at(s["dcnt"], (ys, rows_a), 1)
        np.add.at(s["count"], (ys[wrong], rows_a[wrong]), 1)
        self._record_subset(slots_a, rows_a, preds)
        keep_a, done = [], 0
        for a, (f, (lo, hi)) in enumerate(zip(active, spans)):
            s["tried"][a, rows_a[lo:hi]] = True
            s["res_sum"][a] += resid[lo:hi].sum()
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
            if int(f) not in self.sub_row:
                self.tensors.pop(int(f), None)
                self.hard.pop(int(f), None)
        s["active"] = [active[a] for a in keep_a]
        s["tried"] = s["tried"][keep_a] if keep_a else np.zeros((0, n_bg), dtype=bool)
        s["res_sum"] = s["res_sum"][keep_a]
        return done

    def _record_subset(self, slots: np.ndarray, rows: np.ndarray, preds: np.ndarray) -> None:
        """Keep every prediction on a fool-subset foreground: the top-fooling analysis reuses them."""
        if not self.sub_row:
            return
        r = np.array([self.sub_row.get(int(f), -1) for f in slots], dtype=np.int64)
        k = r >= 0
        self.s["sub_pred"][r[k], rows[k]] = preds[k]

    def block_start(self) -> int:
        """Queue position where the block holding the next queued foreground starts (the reader starts there)."""
        return self.s["next_fg"] - self.s["next_fg"] % self.cfg.batch_size

    def fill(self, it, skipped: list, paths: list) -> None:
        """Activate queued foregrounds (from blocks read and clean-scored by :meth:`_clean_block`).

        Slow start: at most ``1 + SLOW_DONE x finished + rounds // SLOW_ROUNDS`` (<= ``active``) at once, so the
        first foregrounds run nearly one by one and teach the margin model before many run in parallel.
        """
        s = self.s
        cap = min(self.cfg.active, 1 + int(SLOW_DONE * (s["verdict"] != UNKNOWN).sum()) + int(s["rounds"] // SLOW_ROUNDS))
        while len(s["active"]) < cap and s["next_fg"] < len(s["queue"]):
            pos = s["next_fg"]
            if pos not in self.ready:
                self._clean_block(it, pos)
            i, item = self.ready.pop(pos)
            s["next_fg"] += 1
            if isinstance(item, str):
                s["verdict"][i] = SKIPPED
                skipped.append({"path": str(paths[i]), "variant": "original", "reason": item})
                continue
            self.add_tensors(i, item)
            s["active"].append(i)
            s["tried"] = np.concatenate([s["tried"], np.zeros((1, len(self.pool)), dtype=bool)])
            s["res_sum"] = np.concatenate([s["res_sum"], np.zeros(1)])

    def _clean_block(self, it, pos: int) -> None:
        """Read the block of ``batch_size`` queued foregrounds holding ``pos`` and score their clean images in one
        forward (a few per round ran far below the batch rate). Blocks are fixed queue slices, so a resumed run
        scores the same batches (re-reading the block's earlier, finished members; their results are kept)."""
        s, bs = self.s, self.cfg.batch_size
        end = min(pos - pos % bs + bs, len(s["queue"]))
        good = []
        for p in range(self.read_pos, end):
            img, mask, i, reason = next(it)
            if img is None:
                self.ready[p] = (i, str(reason))
            else:
                good.append((p, i, prep_fg(self.audit, img, mask, self.pool.shape)))
        self.read_pos = end
        if good:
            idx = np.array([i for _, i, _ in good], dtype=np.int64)
            pred, _, margin = self.score(torch.stack([t[0] for _, _, t in good]), self.fg_labels[idx])
            s["clean_forwards"] += len(good)
            for (p, i, t), pr, m in zip(good, pred, margin):
                if p >= pos:                                  # earlier ones: finished before a resume
                    s["clean_pred"][i], s["clean_margin"][i] = pr, m
                    self.ready[p] = (i, t)
        for p in [p for p in self.ready if p < pos]:
            del self.ready[p]


def class_interleaved(labels: np.ndarray, queue: np.ndarray) -> np.ndarray:
    """``queue`` reordered round-robin over classes (1st of each class, then 2nd, ...; queue order within a
    class), so the search meets every class early, while it still runs a few foregrounds at a time."""
    queue = np.asarray(queue, dtype=np.int64)
    y = labels[queue]
    rank = np.zeros(len(queue), dtype=np.int64)
    for c in np.unique(y):
        rank[y == c] = np.arange(int((y == c).sum()))
    return queue[np.lexsort((y, rank))]


def lower_bound(verdict: np.ndarray, n_bg: int) -> int:
    """The exact lower bound of any exact search: one forward per fooled foreground, the pool per robust one."""
    return int((verdict == FOOLED).sum() + (verdict == ROBUST).sum() * n_bg)


__all__ = ["Pool", "Search", "class_interleaved", "prep_fg", "read_pool", "lower_bound", "SKIPPED"]
