"""The report page: one self-contained HTML string from :class:`bgbias.report.inputs.ReportInputs` and its figures.

The words live here (the summary sentence, also used in ``results.json`` and
the terminal) and the markup in ``templates/`` (jinja2 with autoescape, so
every piece of user text — class names, ids, paths, model names, titles — is
escaped). Inline CSS, no scripts, every image a data URI: the page needs no
network and no other file, and the same inputs give the same bytes.
"""
from __future__ import annotations

import base64
import html
import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from bgbias.core.layout import SIGNAL_GROUPS
from bgbias.core.version import __version__
from bgbias.report.detection import detection_context, detection_summary
from bgbias.report.figures import pct, seen, top_fooling, variant_order
from bgbias.report.figures_groups import heatmap_choices

if TYPE_CHECKING:                      # only for hints: report.py imports this module
    from bgbias.report.inputs import ModelResults, ReportInputs

SECTIONS = (("summary", "Summary"), ("accuracy", "Accuracy per variant"),
            ("groups", "Groups: class x background"),
            ("examples", "Variants"),
            ("fooling", "Fooling backgrounds"), ("saliency", "Saliency"), ("signal-groups", "Signal groups"),
            ("detection", "Detection"), ("training", "Training setup"), ("inputs", "Inputs"))


# --- words ------------------------------------------------------------------------------------------------------


def summary_segments(m: ModelResults) -> list[tuple[str, bool]]:
    """The model's one-sentence summary as (text, emphasised) pieces, shared by HTML and the terminal."""
    ev, ch = m.get("eval"), m.get("challenge")
    if m.get("detect") and not ev and not ch:      # a detector: its own sentence (bgbias.report.detection)
        return [(m.name, True), (detection_summary(m)[len(m.name):], False)]
    seg: list[tuple[str, bool]] = [(m.name, True), (": ", False)]
    gap = ev.get("bg_gap")
    var = ev.get("variants", {})
    if gap and gap.get("value") is not None:
        lo, hi = (gap.get("ci95") or [None, None])[:2]
        seg += [("BG-gap ", False), (f"{100 * gap['value']:+.1f} points", True)]
        if lo is not None:
            seg.append((f" (95% interval {100 * lo:+.1f} to {100 * hi:+.1f})", False))
        if "mixed_same" in var and "mixed_rand" in var:
            seg.append((f": {pct(var['mixed_same'].get('accuracy'))} correct when the background comes from the "
                        f"same class (Mixed-Same), {pct(var['mixed_rand'].get('accuracy'))} when it comes from "
                        "a random class (Mixed-Rand)", False))
    else:
        seg.append(("no BG-gap (needs eval.json with mixed_same and mixed_rand)", False))
    if ch.get("challenge_accuracy") is not None:
        acc = float(ch["challenge_accuracy"])
        n = ch.get("n_foregrounds")
        seg += [("; challenge accuracy ", False), (pct(acc), True)]
        note = "" if ch.get("exhaustive", True) else f", estimated from {ch.get('n_backgrounds')} backgrounds"
        seg.append((f": for {pct(1 - acc)} of {n if n is not None else 'the'} foregrounds some background from "
                    f"the pool makes it predict a wrong class{note}", False))
    else:
        seg.append(("; no challenge run", False))
    seg.append((".", False))
    return seg


def summary_text(m: ModelResults) -> str:
    """The same sentence as plain text, for ``results.json`` and the terminal."""
    return "".join(t for t, _ in summary_segments(m))


# --- the page ---------------------------------------------------------------------------------------------------
# The markup lives in bgbias/report/templates (jinja2, autoescaped). Python only prepares values; a cell that
# carries markup is built with markupsafe from numbers and escaped text.


def esc(x: object) -> Markup:
    """Escape user-provided text for HTML text and attribute values; every value a template prints goes through it."""
    return x if isinstance(x, Markup) else Markup(html.escape(str(x), quote=True))


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("bgbias.report", "templates"), autoescape=True, finalize=esc,
                      undefined=StrictUndefined, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env


def _acc_cell(info: dict | None, seen_flag: bool) -> Markup:
    if not info or info.get("accuracy") is None:
        return Markup("&ndash;")
    lo, hi = (info.get("ci95") or [None, None])[:2]
    out = Markup("{:.1f}").format(100 * float(info["accuracy"]))
    if lo is not None:
        out += Markup(' <span class="ci">[{:.1f}, {:.1f}]</span>').format(100 * lo, 100 * hi)
    if seen_flag:
        out += Markup(' <span class="seen" title="family seen in training">&dagger;</span>')
    if info.get("too_small"):
        out += Markup(' <span class="small" style="color:#b26b00" title="95% interval wider than 20 points: too few images">&Dagger;</span>')
    return out


def _gap_cell(gap: dict | None) -> Markup:
    if not gap or gap.get("value") is None:
        return Markup("&ndash;")
    ci = gap.get("ci95") or []
    out = Markup("{:+.1f}").format(100 * gap["value"])
    if len(ci) >= 2:
        out += Markup(" <span class='ci'>[{:+.1f}, {:+.1f}]</span>").format(100 * ci[0], 100 * ci[1])
    if gap.get("too_small"):
        out += Markup(' <span class="small" style="color:#b26b00" title="95% interval wider than 20 points: too few images">&Dagger;</span>')
    return out


def _rate_cell(x: Any) -> Markup:
    return Markup("&ndash;") if x is None else Markup("{:.1f}").format(100 * float(x))


def _code(text: object) -> Markup:
    return Markup("<code>{}</code>").format(esc(text))


def _accuracy(inputs: ReportInputs) -> dict | None:
    evals = [m for m in inputs.models if m.get("eval").get("variants")]
    if not evals:
        return None
    order = variant_order(v for m in evals for v in m.get("eval")["variants"])
    infos = lambda v: [m.get("eval")["variants"].get(v) or {} for m in evals]   # noqa: E731
    rows = [[_code(inputs.label(v))] + [_acc_cell(info, bool(info) and seen(m, v, info))
                                        for m, info in zip(evals, infos(v))] for v in order]
    rows.append([Markup("<strong>BG-gap</strong>")] + [_gap_cell(m.get("eval").get("bg_gap")) for m in evals])
    any_groups = any((info.get("groups") or {}).get("worst_group_accuracy") is not None
                     for v in order for info in infos(v))
    if any_groups:
        for v in order:
            cells = [(info.get("groups") or {}) for info in infos(v)]
            if any(c.get("worst_group_accuracy") is not None for c in cells):
                rows.append([Markup("worst group, ") + _code(inputs.label(v))]
                            + [_acc_cell({"accuracy": c.get("worst_group_accuracy"), "ci95": c.get("ci95")}, False)
                               for c in cells])
    any_reference = False
    for key, name in (("chance", "chance"), ("majority", "majority class")):
        vals = [[info.get(key) for info in infos(v)] for v in order]
        if any(x is not None for row in vals for x in row):
            any_reference = True
            # one reference per model: the same data gives the same level in every variant
            rows.append([Markup("<em>{}</em>").format(esc(name))]
                        + [_rate_cell(next((row[j] for row in vals if row[j] is not None), None))
                           for j in range(len(evals))])
    any_small = any(info.get("too_small") for v in order for info in infos(v))
    return {"head": ["variant"] + [m.name for m in evals], "rows": rows, "num": tuple(range(1, len(evals) + 1)),
            "any_small": any_small, "any_reference": any_reference, "any_groups": any_groups}


def _fooling(inputs: ReportInputs) -> list:
    chs = [m for m in inputs.models if m.get("challenge")]
    return [[m.name, r["class"], _code(r.get("background")), pct(r.get("fool_rate"), 1), r.get("n_tested", "")]
            for m in chs for r in top_fooling(m.get("challenge"), 5, per_class=1)]


def _groups(inputs: ReportInputs) -> dict | None:
    """One row per (model, variant) with groups: accuracy beside worst-group accuracy (intervals), the worst
    group's name, mean and training-weighted group accuracy; plus the heatmaps drawn for the page."""
    rows = []
    for m in inputs.models:
        var = m.get("eval").get("variants") or {}
        for v in variant_order(var):
            info = var[v] or {}
            g = info.get("groups") or {}
            if not g.get("per_group"):
                continue
            worst = g.get("worst_group")
            n_worst = ((g.get("per_group") or {}).get(worst) or {}).get("n", "") if worst else ""
            rows.append([m.name, _code(inputs.label(v)), _acc_cell(info, False),
                         _acc_cell({"accuracy": g.get("worst_group_accuracy"), "ci95": g.get("ci95"),
                                    "too_small": g.get("too_small")}, False),
                         _code(worst) if worst else Markup("none eligible"), n_worst,
                         _rate_cell(g.get("mean_group_accuracy")), _rate_cell(g.get("weighted_accuracy")),
                         Markup("{} of {}").format(g.get("eligible", ""), g.get("n_groups", "")),
                         g.get("min_count", "")])
    if not rows:
        return None
    return {"head": ["model", "variant", "accuracy", "worst-group accuracy", "worst group", "its images",
                     "mean group", "weighted (training)", "eligible groups", "min images"],
            "rows": rows, "num": (2, 3, 5, 6, 7, 8, 9),
            "heatmaps": [(h.stem, h.model, inputs.label(h.variant)) for h in heatmap_choices(inputs)]}


LOCALISATION = (("fg_share", "relevance mass"), ("relevance_rank_accuracy", "rank accuracy"),
                ("pointing_game", "pointing game"), ("iou_top", "top-k IoU"))


def _metric_cell(r: dict, key: str) -> Markup:
    """Mean with its 95% interval and, in grey, the level a map that looks everywhere alike would reach."""
    if r.get(key) is None:
        return Markup("&ndash;")
    ci = (r.get("ci95") or {}).get(key) or [None, None]
    out = Markup("{:.1f}").format(100 * float(r[key]))
    if len(ci) >= 2 and ci[0] is not None:
        out += Markup(' <span class="ci">[{:.1f}, {:.1f}]</span>').format(100 * ci[0], 100 * ci[1])
    chance = (r.get("chance") or {}).get(key, r.get("fg_area") if key == "fg_share" else None)
    if chance is not None:
        out += Markup(' <span class="ci">chance {:.1f}</span>').format(100 * float(chance))
    return out


def _saliency(inputs: ReportInputs) -> dict | None:
    """Localisation metrics (Quantus' definitions) per model, method and variant, and per class where present."""
    rows, per_class, top = [], [], set()
    for m in inputs.models:
        sal = m.get("saliency")
        if sal.get("methods"):
            top.add((sal.get("config") or {}).get("top_percent", 20))
        for meth, per in (sal.get("methods") or {}).items():
            for v in variant_order(per):
                r = per[v] or {}
                rows.append([m.name, meth, _code(inputs.label(v))] + [_metric_cell(r, k) for k, _ in LOCALISATION]
                            + [r.get("n", "")])
                pcm = r.get("per_class_metrics") or {}
                for c in [c for c in inputs.classes if c in pcm] + sorted(set(pcm) - set(inputs.classes)):
                    pc = pcm[c]
                    per_class.append([m.name, meth, _code(inputs.label(v)), c]
                                     + [_rate_cell(pc.get(k)) for k, _ in LOCALISATION] + [pc.get("n", "")])
    if not rows:
        return None
    top_text = "/".join(f"{t:g}" for t in sorted(top)) if top else "20"
    names = [n if k != "iou_top" else f"top-{top_text}% IoU" for k, n in LOCALISATION]
    return {"head": ["model", "method", "variant"] + names + ["images"], "rows": rows, "num": (3, 4, 5, 6, 7),
            "class_head": ["model", "method", "variant", "class"] + names + ["images"], "per_class": per_class,
            "class_num": (4, 5, 6, 7, 8), "top": top_text}


def _signal_groups(inputs: ReportInputs) -> list:
    ms = [m for m in inputs.models if (m.get("eval").get("signal_groups") or {}).get("counts")]
    return [[m.name] + [m.get("eval")["signal_groups"]["counts"].get(g, 0) for g in SIGNAL_GROUPS] for m in ms]


def _training(inputs: ReportInputs) -> list[dict]:
    rows = []
    for m in inputs.models:
        met, fams = m.get("metrics"), m.families_seen
        final = met.get("final") or {}
        rows.append({"name": m.name, "key": m.key, "recipe": m.recipe or "unknown", "arch": met.get("arch", ""),
                     "families": ", ".join(map(str, fams)) if fams else ("none" if fams is not None else "unknown"),
                     "epochs": len(met.get("history") or []) or "", "train": pct(final.get("train_accuracy"), 1),
                     "val": pct(final.get("val_accuracy"), 1),
                     "config": _json(met["config"]) if met.get("config") else ""})
    return rows


def _inputs(inputs: ReportInputs, results: dict) -> dict:
    records = []
    for m in inputs.models:
        for kind in ("eval", "challenge", "saliency", "metrics"):
            rec = m.get(kind).get("record")
            if rec:
                records.append((f"{m.name}: {kind}", _json(rec)))
    return {"files": inputs.files,
            "skipped": [(m.name, s) for m in inputs.models for s in m.get("eval").get("skipped") or []][:50],
            "dropped": list((((inputs.manifest or {}).get("counts") or {}).get("by_reason") or {}).items()),
            "warnings": inputs.warnings, "records": records,
            "demo": _json(results["demo"]) if results.get("demo") else ""}


def _json(x: Any) -> str:
    return json.dumps(x, indent=2, sort_keys=True, default=str)


def render_page(inputs: ReportInputs, results: dict, figs: dict[str, bytes]) -> str:
    """The whole page as one string: inline CSS, no scripts, every image a data URI."""
    accuracy = _accuracy(inputs)
    context = {
        "title": results.get("title", "bgbias report"), "version": __version__, "sections": SECTIONS, "figs": figs,
        "css": _environment().loader.get_source(_environment(), "style.css")[0],
        "summary": [summary_segments(m) for m in inputs.models],
        "any_reference": bool(accuracy and accuracy["any_reference"]),
        "accuracy": accuracy, "groups": _groups(inputs), "data_dir": str(inputs.data_dir) if inputs.data_dir else "",
        "fooling": _fooling(inputs), "saliency": _saliency(inputs), "signal_groups": _signal_groups(inputs),
        "detection": detection_context(inputs),
        "signal_group_names": list(SIGNAL_GROUPS), "training": _training(inputs), "inputs": _inputs(inputs, results),
    }
    return _environment().get_template("page.html.j2").render(context) + "\n"
