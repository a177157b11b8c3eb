"""The report's detection figures (matplotlib Agg, no pyplot state, no torch) as deterministic PNG bytes.

Each takes ``bgbias-eval-detect/1`` result dicts (schema in docs/ARCHITECTURE.md):
:func:`ap_per_background_png` (AP with its bootstrap interval per variant, one bar group per
model), :func:`drop_per_category_png` (AP of each category on each variant minus on
``original``), :func:`example_boxes_png` (a few images of every variant with true boxes in
green and predicted boxes dashed red, both with a white halo; images are read from the build folder, only through
``safe_join``, so paths in a result file never reach outside it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.patheffects import withStroke

from bgbias.core.io import read_image
from bgbias.core.layout import safe_join
from bgbias.core.sample import BadSample
from bgbias.report.figures import PALETTE, _png, mpl_text, variant_order

HALO = [withStroke(linewidth=2.2, foreground="white")]   # boxes stay visible on a red or green background


def gt_variants(results: Sequence[dict]) -> list[str]:
    """Variants with ground truth (AP is defined there), ``original`` first (result files sort their keys)."""
    return variant_order(n for r in results for n, v in r["variants"].items() if v.get("has_gt"))


def ap_per_background_png(results: Sequence[dict], labels: Sequence[str] | None = None, metric: str = "AP") -> bytes:
    """Bars of ``metric`` (AP, AP50 or AP75) per variant with ground truth, 95% bootstrap intervals as error bars."""
    labels = list(labels or [r["model"].get("spec") or r["model"].get("predictions", "model") for r in results])
    names = gt_variants(results)
    fig = Figure(figsize=(max(5.0, 0.9 * len(names) + 1.5), 3.4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(results))
    for k, (r, lab) in enumerate(zip(results, labels)):
        vals, lo, hi = [], [], []
        for n in names:
            v = r["variants"].get(n, {})
            m = (v.get("metrics") or {}).get(metric)
            ci = (v.get("intervals") or {}).get(metric)
            vals.append(np.nan if m is None else m)
            lo.append(0 if m is None or not ci else max(0.0, m - ci[0]))
            hi.append(0 if m is None or not ci else max(0.0, ci[1] - m))
        x = np.arange(len(names)) + (k - (len(results) - 1) / 2) * width
        ax.bar(x, vals, width, yerr=[lo, hi], capsize=2, color=PALETTE[k % len(PALETTE)], label=mpl_text(lab)[:40])
    ax.set_xticks(np.arange(len(names)), [mpl_text(n)[:18] for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (COCO)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _png(fig)


def drop_per_category_png(result: dict, title: str = "") -> bytes:
    """Heatmap: per-category AP on each variant minus on ``original`` (red = the background costs AP)."""
    ref = result["variants"].get("original")
    if ref is None:
        raise ValueError("drop_per_category_png needs an 'original' variant in the result.")
    cats = list(ref["per_category"])
    names = [n for n in gt_variants([result]) if n != "original"]
    grid = np.full((len(cats), max(1, len(names))), np.nan)
    for j, n in enumerate(names):
        for i, c in enumerate(cats):
            a, b = result["variants"][n]["per_category"].get(c), ref["per_category"].get(c)
            if a is not None and b is not None:
                grid[i, j] = a - b
    fig = Figure(figsize=(max(4.0, 0.7 * len(names) + 2), max(2.5, 0.3 * len(cats) + 1.2)))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="RdBu", vmin=-0.5, vmax=0.5, aspect="auto")
    ax.set_xticks(range(len(names)), [mpl_text(n)[:18] for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(cats)), [mpl_text(c)[:16] for c in cats], fontsize=8)
    if title:
        ax.set_title(mpl_text(title)[:60], fontsize=9)
    fig.colorbar(im, ax=ax, label="AP - AP(original)")
    fig.tight_layout()
    return _png(fig)


def _image(root: Path, rel: str, file: str) -> np.ndarray | None:
    try:
        p = safe_join(root, *Path(str(rel)).parts, str(file))
        return read_image(p) if p.is_file() else None
    except (ValueError, BadSample, OSError):
        return None


def example_boxes_png(result: dict, data: str | Path | None = None, variants: Sequence[str] | None = None) -> bytes:
    """Rows = example images, columns = variants; true boxes green, predictions (score >= threshold) dashed red."""
    ex = result["examples"]
    root = Path(data or result["data"])
    names = list(variants or variant_order(ex["predictions"]))
    ids = [str(i) for i in ex["image_ids"]]
    fig = Figure(figsize=(1.6 * max(1, len(names)), 1.6 * max(1, len(ids))))
    for r, iid in enumerate(ids):
        for c, n in enumerate(names):
            ax = fig.add_subplot(len(ids), len(names), r * len(names) + c + 1)
            ax.set_axis_off()
            im = _image(root, ex["paths"][n], ex["files"][iid])
            if im is not None:
                ax.imshow(im, interpolation="nearest")
            for x, y, w, h, *_ in ex["ground_truth"].get(iid, []) if result["variants"][n]["has_gt"] else []:
                ax.add_patch(Rectangle((x, y), w, h, fill=False, color="#2ca02c", lw=1, path_effects=HALO))
            for x, y, w, h, *_ in ex["predictions"][n].get(iid, []):
                ax.add_patch(Rectangle((x, y), w, h, fill=False, color="#d62728", lw=1, ls="--", path_effects=HALO))
            if r == 0:
                ax.set_title(mpl_text(n)[:16], fontsize=7)
    fig.tight_layout()
    return _png(fig)
