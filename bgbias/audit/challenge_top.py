"""Top fooling backgrounds per class, with exact fool rates on one fixed foreground subset, reusing the search.

The fool rate of a background is the share of the fixed seeded subset's
foregrounds of *other* classes it makes wrong. Robust subset foregrounds were
tried on every background during the search (and none fooled them), fooled
ones on the backgrounds the search tried; every such prediction was kept.
So the analysis only scores the pairs the search did not, and only for the
backgrounds it reports: per class, candidates go in order of their estimated
rate (known pairs exact, unknown pairs from the search's margin model), and
measuring stops once ``top_k`` are exact and the next estimate is below the
k-th exact rate (at most ``top_candidates`` per class). All classes measure their next candidate in the
same forward batches (one round per candidate rank), so the analysis runs at the model's batch rate. Its cost is at most
``sum_c min(top_candidates, n_bg_c) * fooled_subset_c`` forwards (fooled_subset_c:
subset foregrounds of other classes that were fooled), a fixed term that does
not grow with the number of foregrounds or the pool.
"""
from __future__ import annotations

import numpy as np

from bgbias.audit.challenge_search import Search, prep_fg
from bgbias.audit.challenge_state import FOOLED, NOT_SCORED, ROBUST


def top_fooling(search: Search, load, cfg, classes: list[str], bg_ids: list[str]):
    """-> (top per class, reach per class, forwards spent, the cost bound above). ``load(indices)`` yields fgs."""
    s = search.s
    v = s["verdict"]
    rows_sub = np.flatnonzero((v[s["sub"]] == FOOLED) | (v[s["sub"]] == ROBUST))
    if cfg.top_k <= 0 or not len(rows_sub):
        return {}, {}, 0, 0
    fg_of = s["sub"][rows_sub]
    y_of = search.fg_labels[fg_of]
    fooled_of = v[fg_of] == FOOLED
    est = search.estimates()
    total = s["count"].sum(0)
    forwards, bound, top, reach = 0, 0, {}, {}
    st = {}                                   # per class: its state while candidates are measured
    for c, name in enumerate(classes):
        rows_c = np.flatnonzero(search.bg_labels == c)
        o = np.flatnonzero(y_of != c)
        if not len(rows_c) or not len(o):
            continue
        bound += min(cfg.top_candidates, len(rows_c)) * int(fooled_of[o].sum())
        sub_r, fgs, ys = rows_sub[o], fg_of[o], y_of[o]
        pred = s["sub_pred"][np.ix_(sub_r, rows_c)].astype(np.int64)
        known = pred != NOT_SCORED
        guess = (s["clean_margin"][fgs][:, None] + est[ys][:, rows_c]) < 0
        est_rate = np.where(known, pred != ys[:, None], guess).mean(0)
        search_fools = total[rows_c] - s["count"][c, rows_c]
        st[c] = dict(rows_c=rows_c, o=o, sub_r=sub_r, fgs=fgs, ys=ys, pred=pred, known=known, est_rate=est_rate,
                     fools=search_fools, queue=list(np.lexsort((rows_c, -search_fools, -est_rate))), measured=[],
                     exact=[])
    while True:                               # one round: every unfinished class's next candidate, one forward
        picks = [(c, d, d["queue"].pop(0)) for c, d in st.items() if _wants_more(d, cfg)]
        if not picks:
            break
        slots, rows, spans = [], [], []
        for c, d, j in picks:
            need = np.flatnonzero(~d["known"][:, j])
            spans.append(need)
            slots.extend(int(f) for f in d["fgs"][need])
            rows.extend([int(d["rows_c"][j])] * len(need))
        missing = sorted({f for f in slots if f not in search.tensors})
        for img, mask, i, _ in load(missing):
            search.add_tensors(i, prep_fg(search.audit, img, mask, search.pool.shape))
        p = search.forward(slots, np.asarray(rows, dtype=np.int64))[0] if slots else np.zeros(0, np.int64)
        forwards += len(slots)
        at = 0
        for (c, d, j), need in zip(picks, spans):
            got, at = p[at:at + len(need)], at + len(need)
            d["pred"][need, j] = got
            d["known"][need, j] = True
            s["sub_pred"][d["sub_r"][need], d["rows_c"][j]] = got
            d["measured"].append(j)
            d["exact"].append(float((d["pred"][:, j] != d["ys"]).mean()))
    for c, d in st.items():
        name, rows_c = classes[c], d["rows_c"]
        m = np.asarray(d["measured"], dtype=np.int64)
        rate = np.asarray(d["exact"])
        to_c = d["pred"][:, m] == c
        rank = np.lexsort((rows_c[m], -rate))[:cfg.top_k]
        top[name] = [{"background": bg_ids[rows_c[m[r]]], "fool_rate": float(rate[r]), "n_tested": len(d["o"]),
                      "to_class_rate": float(to_c[:, r].mean()), "search_fools": int(d["fools"][m[r]])}
                     for r in rank]
        reach[name] = float(to_c.any(1).mean()) if len(m) else 0.0
    return top, reach, forwards, bound


def _wants_more(d: dict, cfg) -> bool:
    """A class measures its next candidate unless ``top_candidates`` are measured, or ``top_k`` are and the
    next estimate is below the k-th exact rate (then no unmeasured background can enter its top k)."""
    if not d["queue"] or len(d["measured"]) >= cfg.top_candidates:
        return False
    kth = sorted(d["exact"], reverse=True)[cfg.top_k - 1] if len(d["measured"]) >= cfg.top_k else -1.0
    return bool(d["est_rate"][d["queue"][0]] >= kth)
