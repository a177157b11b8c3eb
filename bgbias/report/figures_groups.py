"""Group figures for the report: a class x background heatmap of group accuracy (matplotlib -> PNG bytes).

Reads ``eval.json``'s ``variants[v]["groups"]`` (see :mod:`bgbias.audit.groups`); no torch.
Cells are accuracy in %, with the count below; groups below the eligibility count are hatched,
the worst eligible group is outlined.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from bgbias.report.figures import _png, mpl_text, variant_order

HEATMAPS_PER_MODEL = 2    # the page shows at most this many class x background grids per model


@dataclass(frozen=True)
class Heatmap:
    """One heatmap on the page: its figure stem (``groups_1``...), the model's name and the variant key."""

    stem: str
    model: str
    variant: str


def heatmap_choices(inputs: Any) -> list[Heatmap]:
    """Which (model, variant) grids the page draws: per model, in variant order, the first
    :data:`HEATMAPS_PER_MODEL` variants whose groups cross classes with backgrounds (some class seen on two or
    more backgrounds: a spurious ``original`` or ``mixed_rand``; not ``mixed_same``'s diagonal nor a single
    colour). Works with any variant key form, since it only reads the keys eval.json has."""
    out: list[Heatmap] = []
    for m in inputs.models:
        var = m.get("eval").get("variants") or {}
        picked = 0
        for v in variant_order(var):
            per = ((var[v] or {}).get("groups") or {}).get("per_group") or {}
            bgs: dict[str, set[str]] = {}
            for k in per:
                c, b = split_key(k)
                bgs.setdefault(c, set()).add(b)
            if picked < HEATMAPS_PER_MODEL and any(len(b) >= 2 for b in bgs.values()):
                out.append(Heatmap(f"groups_{len(out) + 1}", m.name, v))
                picked += 1
    return out


def group_figures(inputs: Any) -> dict[str, bytes]:
    """The heatmaps of :func:`heatmap_choices` by figure stem."""
    by_name = {m.name: m for m in inputs.models}
    return {h.stem: group_heatmap(by_name[h.model].get("eval")["variants"][h.variant]["groups"], inputs.classes,
                                  title=f"{h.model}: {inputs.label(h.variant)}") for h in heatmap_choices(inputs)}


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
