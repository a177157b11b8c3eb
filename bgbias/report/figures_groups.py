"""Group figures for the report: a class x background heatmap of group accuracy (matplotlib -> PNG bytes).

Reads ``eval.json``'s ``variants[v]["groups"]`` (see :mod:`bgbias.audit.groups`); no torch.
Cells are accuracy in %, with the count below; groups below the eligibility count are hatched,
the worst eligible group is outlined.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from bgbias.report.figures import _png, mpl_text


def split_key(key: str) -> tuple[str, str]:
    """``"<class>|<background>"`` -> (class, background) (the key format of :mod:`bgbias.audit.groups`)."""
    c, _, b = key.partition("|")
    return c, b


def group_grid(groups: Mapping[str, Any], classes: Sequence[str] | None = None
               ) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(row classes, column backgrounds, accuracy [R, C] (NaN = no images), counts [R, C], eligible [R, C])."""
    per = groups.get("per_group") or {}
    cells = {split_key(k): v for k, v in per.items()}
    rows = [c for c in (classes or []) if any(k[0] == c for k in cells)]
    rows += sorted({k[0] for k in cells} - set(rows))
    cols = [c for c in (classes or []) if any(k[1] == c for k in cells)]   # mixed variants: background classes
    cols += sorted({k[1] for k in cells} - set(cols))
    acc = np.full((len(rows), len(cols)), np.nan)
    n = np.zeros((len(rows), len(cols)), dtype=np.int64)
    ok = np.zeros((len(rows), len(cols)), dtype=bool)
    for (c, b), v in cells.items():
        i, j = rows.index(c), cols.index(b)
        acc[i, j], n[i, j], ok[i, j] = float(v["accuracy"]), int(v["n"]), bool(v.get("eligible", True))
    return rows, cols, acc, n, ok


def group_heatmap(groups: Mapping[str, Any], classes: Sequence[str] | None = None, title: str = "") -> bytes:
    """Class (rows) x background (columns) accuracy heatmap of one variant's ``groups`` dict -> PNG bytes.

    ``groups``: ``eval.json["variants"][v]["groups"]``; ``classes``: the class order for the rows (and the
    columns of mixed variants, whose backgrounds are classes); ``title``: e.g. the model and variant.
    """
    rows, cols, acc, n, ok = group_grid(groups, classes)
    if not rows:
        raise ValueError("This variant has no groups to draw (the build records no backgrounds).")
    fig = Figure(figsize=(1.2 + 0.62 * len(cols), 0.9 + 0.42 * len(rows)))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn"].with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(acc * 100), vmin=0, vmax=100, cmap=cmap, aspect="auto")
    worst = groups.get("worst_group")
    for i, c in enumerate(rows):
        for j, b in enumerate(cols):
            if np.isnan(acc[i, j]):
                continue
            ax.text(j, i, f"{100 * acc[i, j]:.0f}\n{n[i, j]}", ha="center", va="center", fontsize=7,
                    color="black" if 25 < 100 * acc[i, j] < 85 else "white")
            if not ok[i, j]:
                ax.add_patch(_rect(i, j, hatch="///", edge="#555555", lw=0.0))
            if worst == f"{c}|{b}":
                ax.add_patch(_rect(i, j, hatch=None, edge="black", lw=2.0))
    ax.set_xticks(range(len(cols)), [mpl_text(b) for b in cols], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [mpl_text(c) for c in rows], fontsize=7)
    ax.set_xlabel("background", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    wga = groups.get("worst_group_accuracy")
    sub = (f"worst group {mpl_text(worst)}: {100 * wga:.1f}%" if wga is not None else "no eligible group") + \
        f" (groups with >= {groups.get('min_count', '?')} images; hatched: fewer)"
    ax.set_title((mpl_text(title) + "\n" if title else "") + sub, fontsize=8)
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cb.set_label("accuracy (%)", fontsize=7)
    cb.ax.tick_params(labelsize=7)
    return _png(fig)


def _rect(i: int, j: int, hatch: str | None, edge: str, lw: float):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch=hatch, edgecolor=edge, linewidth=lw)
