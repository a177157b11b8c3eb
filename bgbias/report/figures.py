"""The report's figures: matplotlib (Agg, no pyplot state) drawings returned as PNG bytes.

The drawing functions take plain numbers and images, so the report can embed
the bytes as data URIs and ``--figures DIR`` can save the same bytes for a
README; :func:`make_figures` gathers them for a :class:`bgbias.report.write.ReportInputs`
(thumbnails read from the build folder only through ``safe_join``).
Output is deterministic: no timestamps in the PNGs.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bgbias.core.io import read_image
from bgbias.core.layout import (
    IN9_VARIANTS,
    SPLIT,
    class_dirname,
    list_items,
    list_splits,
    list_variant_dirs,
    safe_join,
)
from bgbias.core.names import seen_in_training
from bgbias.core.registry import natural_key
from bgbias.core.sample import BadSample

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
GROUP_COLORS = {"fg+bg+": "#55a868", "fg+bg-": "#4c72b0", "fg-bg+": "#c44e52", "fg-bg-": "#8c8c8c"}
DPI = 100


def variant_order(names: Iterable[str]) -> list[str]:
    """IN-9 variants first in the paper's order, then the rest naturally sorted (stable columns everywhere)."""
    names = list(dict.fromkeys(names))
    rest = sorted((v for v in names if v not in IN9_VARIANTS), key=natural_key)
    return [v for v in IN9_VARIANTS if v in names] + rest


def mpl_text(s: object) -> str:
    """User text for matplotlib: ``$`` would start mathtext, so escape it."""
    return str(s).replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


@dataclass(frozen=True)
class Bar:
    """One model's accuracy on one variant: value and its 95% interval, all in [0, 1]."""

    value: float
    low: float
    high: float
    seen: bool = False


def accuracy_plot(variants: Sequence[str], series: dict[str, Sequence[Bar | None]]) -> bytes:
    """Horizontal grouped bars: one group per variant, one bar per model, 95% intervals as whiskers.

    Hatched bars mark variants whose background family the model saw in training
    (their accuracy says less about background reliance).
    """
    n_models = max(len(series), 1)
    height = 0.8 / n_models
    fig = Figure(figsize=(7.5, 0.9 + 0.32 * len(variants) * max(1.0, n_models / 2)))
    ax = fig.add_subplot()
    y = np.arange(len(variants))[::-1].astype(float)
    any_seen, handles = False, []
    for k, (name, bars) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        ys = y + 0.4 - height * (k + 0.5)
        for yi, bar in zip(ys, bars):
            if bar is None:
                continue
            any_seen |= bar.seen
            err = [[max(bar.value - bar.low, 0.0)], [max(bar.high - bar.value, 0.0)]]
            ax.barh(yi, bar.value, height=height * 0.92, color=color, hatch="//" if bar.seen else None,
                    edgecolor="white" if bar.seen else color, xerr=err, ecolor="#333333", capsize=2,
                    error_kw={"elinewidth": 0.8})
        handles.append(Patch(color=color, label=mpl_text(name)))
    if any_seen:
        handles.append(Patch(facecolor="#bbbbbb", hatch="//", edgecolor="white", label="family seen in training"))
    ax.set_yticks(y, [mpl_text(v) for v in variants])
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (whiskers: 95% interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title("Accuracy per variant")
    return _png(fig)


def summary_plot(metrics: Sequence[str], series: dict[str, Sequence[float | None]]) -> bytes:
    """Vertical grouped bars of headline numbers (e.g. original, Mixed-Same, Mixed-Rand, challenge accuracy)."""
    n_models = max(len(series), 1)
    width = 0.8 / n_models
    fig = Figure(figsize=(1.2 + 1.3 * len(metrics), 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(metrics), dtype=float)
    for k, (name, values) in enumerate(series.items()):
        xs = x - 0.4 + width * (k + 0.5)
        for xi, v in zip(xs, values):
            if v is None:
                continue
            ax.bar(xi, v, width=width * 0.92, color=PALETTE[k % len(PALETTE)])
            ax.text(xi, v + 0.015, f"{100 * v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [mpl_text(m) for m in metrics], fontsize=9)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=[Patch(color=PALETTE[k % len(PALETTE)], label=mpl_text(n)) for k, n in enumerate(series)],
              fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def signal_groups_plot(series: dict[str, dict[str, int]]) -> bytes:
    """One stacked horizontal bar per model: the share of images in each of the four signal groups."""
    groups = list(GROUP_COLORS)
    fig = Figure(figsize=(7.5, 0.9 + 0.45 * max(len(series), 1)))
    ax = fig.add_subplot()
    names = list(series)
    for row, name in enumerate(names):
        counts = series[name]
        total = sum(int(counts.get(g, 0)) for g in groups) or 1
        left = 0.0
        for g in groups:
            share = int(counts.get(g, 0)) / total
            ax.barh(len(names) - 1 - row, share, left=left, color=GROUP_COLORS[g], height=0.6)
            if share >= 0.06:
                ax.text(left + share / 2, len(names) - 1 - row, f"{100 * share:.0f}%", ha="center", va="center",
                        fontsize=8, color="white")
            left += share
    ax.set_yticks(range(len(names))[::-1], [mpl_text(n) for n in names])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of images")
    ax.legend(handles=[Patch(color=GROUP_COLORS[g], label=g) for g in groups], ncols=4, fontsize=8,
              loc="upper center", bbox_to_anchor=(0.5, -0.3 - 0.1 / max(len(names), 1)), frameon=False)
    ax.set_title("Signal groups (correct on Only-FG? / correct on Only-BG-T?)")
    return _png(fig)


@dataclass(frozen=True)
class Cell:
    """One image in a grid with an optional caption under it (uint8 HxWx3)."""

    image: np.ndarray
    caption: str = ""


def image_grid(rows: Sequence[Sequence[Cell | None]], row_labels: Sequence[str] = (),
               col_labels: Sequence[str] = (), title: str = "", cell_inches: float = 0.95) -> bytes:
    """A table of images (nearest-neighbour upscaled, so small digits stay crisp); ``None`` cells stay blank."""
    n_rows = max(len(rows), 1)
    n_cols = max((len(r) for r in rows), default=1) or 1
    has_caption = any(c is not None and c.caption for r in rows for c in r)
    label_w = 1.1 if row_labels else 0.1
    fig = Figure(figsize=(label_w + cell_inches * n_cols,
                          0.35 + (0.75 if col_labels else 0) + (cell_inches + (0.22 if has_caption else 0)) * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            cell = rows[i][j] if i < len(rows) and j < len(rows[i]) else None
            if cell is not None:
                ax.imshow(cell.image, interpolation="nearest")
                if cell.caption:
                    ax.set_xlabel(mpl_text(_fit(cell.caption, int(cell_inches * 15))), fontsize=8)
            if i == 0 and j < len(col_labels):
                ax.set_title(mpl_text(col_labels[j]), fontsize=8, rotation=35, ha="left", va="bottom",
                             loc="left")
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(mpl_text(row_labels[i]), fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(mpl_text(title), fontsize=10)
    fig.subplots_adjust(wspace=0.06, hspace=0.35 if has_caption else 0.08)
    return _png(fig)


def _fit(text: str, width: int) -> str:
    """Shorten each line to ``width`` characters so captions of neighbouring cells never overlap."""
    return "\n".join(line if len(line) <= width else line[:width - 1] + "\u2026" for line in text.split("\n"))


def to_thumbnail(image: np.ndarray, max_side: int = 96) -> np.ndarray:
    """Shrink big images (nearest-neighbour stride) so an embedded grid stays small; small ones pass through."""
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    return np.ascontiguousarray(image[::step, ::step])


def image_at(root: Path, *parts: str) -> np.ndarray | None:
    """A thumbnail of the image at ``root/parts``, or None if missing, unreadable or outside ``root``."""
    try:
        p = safe_join(Path(root), *parts)
        return to_thumbnail(read_image(p)) if p.is_file() else None
    except (ValueError, BadSample):
        return None


def files_grid(rows: Sequence[tuple[str, Sequence[tuple[Path, Sequence[str], str]]]], title: str = "",
               cell_inches: float = 0.95) -> bytes | None:
    """Rows of image files: ``(row label, [(root, path parts, caption), ...])``; missing files leave gaps.

    Returns None when no file of any row could be read (the caller says so instead of drawing blanks).
    """
    cells = [[(lambda im, cap: Cell(im, cap) if im is not None else None)(image_at(root, *parts), cap)
              for root, parts, cap in files] for _, files in rows]
    keep = [i for i, r in enumerate(cells) if any(c is not None for c in r)]
    if not keep:
        return None
    return image_grid([cells[i] for i in keep], [rows[i][0] for i in keep], title=title, cell_inches=cell_inches)


def example_grid(root: Path, names: dict[str, str] | None = None, classes: Sequence[str] = (),
                 n_images: int = 4) -> bytes | None:
    """Every variant folder of a build for the first image of ``n_images`` classes.

    ``names`` maps folder names to variant names (from the manifest) for the column titles;
    ``classes`` gives the real class names (folder names are sanitised).
    """
    root = Path(root)
    splits = list_splits(root, "original")
    if not splits:
        return None
    split = SPLIT if SPLIT in splits else splits[0]           # the audited split when there is one
    by_name = {(names or {}).get(d, d): d for d in list_variant_dirs(root, split)}
    order = variant_order(by_name)
    picked: dict[int, object] = {}
    for item in list_items(root, "original", split):
        if item.label not in picked and len(picked) < n_images:
            picked[item.label] = item
    rows = [[(lambda im: Cell(im) if im is not None else None)(
        image_at(root, by_name[v], it.split, it.path.parent.name, it.path.name)) for v in order]
        for it in picked.values()]
    labels = [f"{classes[it.label] if it.label < len(classes) else it.class_name}\n{it.id}"
              for it in picked.values()]
    return image_grid(rows, labels, order) if rows else None


# --- the report's figures -------------------------------------------------------------------------------------


def pct(x: float | None, digits: int = 0) -> str:
    """``0.123`` -> ``12%``; None -> ``n/a``."""
    return "n/a" if x is None else f"{100 * float(x):.{digits}f}%"


def seen(m: Any, variant: str, info: dict) -> bool:
    """Whether the model's training showed this variant's background family (eval's flag, else its families)."""
    if info.get("seen_in_training") is not None:
        return bool(info["seen_in_training"])
    return bool(seen_in_training(variant, m.families_seen))


def top_fooling(ch: dict, k: int = 8, per_class: int | None = None) -> list[dict]:
    """The ``k`` backgrounds with the highest fool rate, best first (ties by class, id).

    ``per_class`` caps how many come from one class, so one dominant class does not hide the others.
    """
    rows = [{"class": c, **r} for c, lst in (ch.get("top_fooling") or {}).items()
            for r in sorted(lst, key=lambda r: -float(r.get("fool_rate", 0)))[:per_class]]
    rows.sort(key=lambda r: (-float(r.get("fool_rate", 0)), str(r["class"]), str(r.get("background"))))
    return rows[:k]


def saliency_rows(inputs: Any, per_model: int = 8) -> list[tuple[str, list]]:
    """Per model, overlays of one method round-robin over variants; later models reuse the first one's picks."""
    rows, keys = [], None
    for m in inputs.models:
        overlays, path = m.get("saliency").get("overlays") or [], m.paths.get("saliency")
        if not overlays or path is None:
            continue
        methods = [o.get("method") for o in overlays]
        method = "gradcam" if "gradcam" in methods else methods[0]
        mine = {(str(o.get("variant")), str(o.get("id"))): o for o in overlays
                if o.get("method") == method and _inside_file(path.parent, str(o.get("path", "")))}
        if not keys or not all(k in mine for k in keys):
            by_var: dict[str, list] = {}
            for k in sorted(mine):
                by_var.setdefault(k[0], []).append(k)
            lists = [by_var[v] for v in variant_order(by_var)]
            keys = [lst[i] for i in range(max(map(len, lists), default=0)) for lst in lists if i < len(lst)]
            rank = {v: i for i, v in enumerate(variant_order(by_var))}
            keys = sorted(keys[:per_model], key=lambda k: (rank[k[0]], k[1]))
        files = [(path.parent, (str(mine[k].get("path", "")),), f"{inputs.label(k[0])}\nfg {pct(mine[k].get('fg_share'))}")
                 for k in keys if k in mine]
        rows.append((f"{m.name}\n{method}", files))
    return rows


def _inside_file(root: Path, rel: str) -> bool:
    """``root/rel`` is an existing file that does not escape ``root``."""
    try:
        return safe_join(root, rel).is_file()
    except ValueError:
        return False


def _bg_file(root: Path, classes: Sequence[str], cls: str, bg_id: str, split: str = SPLIT) -> tuple[str, ...]:
    """Path parts of an Only-BG-T background of ``split``: in its class folder, else wherever that id is."""
    name = f"{bg_id}.png"
    if cls in classes:
        parts = ("only_bg_t", split, class_dirname(classes.index(cls), cls, len(classes)), name)
        if _inside_file(root, "/".join(parts)):
            return parts
    try:
        hit = next((it for it in list_items(root, "only_bg_t", split) if it.id == bg_id), None)
    except ValueError:
        hit = None
    return ("only_bg_t", split, hit.path.parent.name, hit.path.name) if hit else ("only_bg_t", split, "?", name)


def fooling_rows(inputs: Any, k: int = 8) -> list[tuple[str, list]]:
    """Per model, the most fooling Only-BG-T background of each class (best first) captioned with its fool rate."""
    rows = []
    for m in inputs.models:
        ch = m.get("challenge")
        root = inputs.data_dir or (Path(ch["data"]) if ch.get("data") and Path(ch["data"]).is_dir() else None)
        classes = ch.get("classes") or inputs.classes
        files = []
        for r in top_fooling(ch, k, per_class=1) if root is not None else []:
            c = str(r["class"])
            files.append((root, _bg_file(root, classes, c, str(r.get("background")), str(ch.get("split") or SPLIT)),
                          f"{c}\n{pct(r.get('fool_rate'))}"))
        if files:
            rows.append((m.name, files))
    return rows


def make_figures(inputs: Any) -> dict[str, bytes]:
    """All figures by file stem (``summary``, ``accuracy``, ``examples``, ...); absent data gives no figure."""
    figs: dict[str, bytes | None] = {}
    heads = [("original", "original"), ("mixed_same", "Mixed-Same"), ("mixed_rand", "Mixed-Rand")]
    summ = {m.name: [m.get("eval").get("variants", {}).get(v, {}).get("accuracy") for v, _ in heads]
            + [m.get("challenge").get("challenge_accuracy")] for m in inputs.models}
    if any(v is not None for vals in summ.values() for v in vals):
        figs["summary"] = summary_plot([h for _, h in heads] + ["challenge"], summ)
    evals = [m for m in inputs.models if m.get("eval").get("variants")]
    if evals:
        order = variant_order(v for m in evals for v in m.get("eval")["variants"])
        series = {}
        for m in evals:
            var = m.get("eval")["variants"]
            series[m.name] = [None if var.get(v, {}).get("accuracy") is None else Bar(
                float(var[v]["accuracy"]), *map(float, (var[v].get("ci95") or [var[v]["accuracy"]] * 2)[:2]),
                seen=seen(m, v, var[v])) for v in order]
        figs["accuracy"] = accuracy_plot([inputs.label(v) for v in order], series)
    if inputs.data_dir is not None:
        figs["examples"] = example_grid(inputs.data_dir, inputs.variant_names, inputs.classes)
    figs["fooling"] = files_grid(fooling_rows(inputs), title="most fooling backgrounds: class, fool rate")
    sal_rows = saliency_rows(inputs)
    figs["saliency"] = files_grid(sal_rows, cell_inches=1.1)
    if sal_rows and figs["saliency"] is None:
        inputs.warnings.append("No saliency overlay image was found next to its saliency.json.")
    groups = {m.name: (m.get("eval").get("signal_groups") or {}).get("counts") for m in inputs.models}
    if any(groups.values()):
        figs["signal_groups"] = signal_groups_plot({k: v for k, v in groups.items() if v})
    return {k: v for k, v in figs.items() if v is not None}
