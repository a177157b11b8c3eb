"""The report page: one self-contained HTML string from a :class:`bgbias.report.write.ReportInputs` and its figures.

Kept apart from :mod:`bgbias.report.write` (which reads and groups the result files)
so that the words and markup live in one place: the summary sentence (also
used in ``results.json`` and the terminal), the sections, the CSS. Every piece
of user text (class names, ids, paths, model names, titles) goes through
:func:`esc`; tables take already-escaped cells. Inline CSS, no scripts, every
image a data URI, so the page needs no network and no other file.
"""
from __future__ import annotations

import base64
import html
import json
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from bgbias.core.version import __version__
from bgbias.report.figures import pct, seen, top_fooling, variant_order

if TYPE_CHECKING:                      # only for hints: report.py imports this module
    from bgbias.report.inputs import ModelResults, ReportInputs

SECTIONS = (("summary", "Summary"), ("accuracy", "Accuracy per variant"), ("examples", "Variants"),
            ("fooling", "Fooling backgrounds"), ("saliency", "Saliency"), ("signal-groups", "Signal groups"),
            ("training", "Training setup"), ("inputs", "Inputs"))
SIGNAL_GROUPS = ("fg+bg+", "fg+bg-", "fg-bg+", "fg-bg-")


# --- words ------------------------------------------------------------------------------------------------------


def summary_segments(m: ModelResults) -> list[tuple[str, bool]]:
    """The model's one-sentence summary as (text, emphasised) pieces, shared by HTML and the terminal."""
    ev, ch = m.get("eval"), m.get("challenge")
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


def esc(x: object) -> str:
    """Escape user-provided text for HTML text and attribute values."""
    return html.escape(str(x), quote=True)


def _img(figs: dict[str, bytes], key: str, alt: str) -> str:
    if key not in figs:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(figs[key]).decode("ascii")
    return f'<figure><img src="{uri}" alt="{esc(alt)}" data-figure="{esc(key)}"></figure>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], num: Iterable[int] = ()) -> str:
    """Cells are already-escaped HTML; headers are escaped here; columns ``num`` are right-aligned numbers."""
    num = set(num)
    cell = lambda tag, j, c: f'<{tag} class="n">{c}</{tag}>' if j in num else f"<{tag}>{c}</{tag}>"  # noqa: E731
    th = "".join(cell("th", j, esc(h)) for j, h in enumerate(head))
    body = "".join("<tr>" + "".join(cell("td", j, c) for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _missing(what: str, how: str) -> str:
    return f'<p class="missing">No {esc(what)} in the inputs. {how}</p>'


def _acc_cell(info: dict | None, seen: bool) -> str:
    if not info or info.get("accuracy") is None:
        return "&ndash;"
    lo, hi = (info.get("ci95") or [None, None])[:2]
    ci = f' <span class="ci">[{100 * lo:.1f}, {100 * hi:.1f}]</span>' if lo is not None else ""
    mark = ' <span class="seen" title="family seen in training">&dagger;</span>' if seen else ""
    return f"{100 * float(info['accuracy']):.1f}{ci}{mark}"


def _gap_cell(gap: dict | None) -> str:
    if not gap or gap.get("value") is None:
        return "&ndash;"
    ci = gap.get("ci95") or []
    span = f" <span class='ci'>[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]</span>" if len(ci) >= 2 else ""
    return f"{100 * gap['value']:+.1f}{span}"


def _sec_summary(inputs: ReportInputs, figs: dict) -> str:
    items = "".join("<li>" + "".join(f"<strong>{esc(t)}</strong>" if b else esc(t)
                                     for t, b in summary_segments(m)) + "</li>" for m in inputs.models)
    return (f"<ul class='summary'>{items}</ul>"
            "<p class='help'>BG-gap = accuracy on Mixed-Same minus accuracy on Mixed-Rand (same foregrounds): how "
            "much the model gains when the background agrees with the label. Challenge accuracy = the share of "
            "foregrounds for which no background in the pool makes the model wrong (worst case).</p>"
            + _img(figs, "summary", "headline accuracies per model"))


def _sec_accuracy(inputs: ReportInputs, figs: dict) -> str:
    evals = [m for m in inputs.models if m.get("eval").get("variants")]
    if not evals:
        return _missing("eval.json", "Run <code>bgbias eval</code> on a build to fill this section.")
    order = variant_order(v for m in evals for v in m.get("eval")["variants"])
    rows = []
    for v in order:
        row = [f"<code>{esc(inputs.label(v))}</code>"]
        for m in evals:
            info = m.get("eval")["variants"].get(v)
            row.append(_acc_cell(info, bool(info) and seen(m, v, info)))
        rows.append(row)
    gaps = ["<strong>BG-gap</strong>"] + [_gap_cell(m.get("eval").get("bg_gap")) for m in evals]
    table = _table(["variant"] + [m.name for m in evals], rows + [gaps], range(1, len(evals) + 1))
    return (_img(figs, "accuracy", "accuracy per variant per model") +
            "<p class='help'>Accuracy in % with its 95% bootstrap interval in brackets. &dagger; marks a variant "
            "whose background family the model saw in training (not a fair test of that model).</p>" + table)


def _sec_examples(inputs: ReportInputs, figs: dict) -> str:
    if "examples" not in figs:
        return _missing("build folder", "Pass the build's <code>manifest.json</code> or <code>--data DIR</code>.")
    where = esc(inputs.data_dir) if inputs.data_dir else ""
    return (f"<p class='help'>The same images in every variant of the build in <code>{where}</code>: "
            "Only-BG-B/-T and No-FG remove the object, Only-FG removes the background, Mixed-Same/-Rand/-Next "
            "paste the object on the background of another image of the same / a random / the next class.</p>"
            + _img(figs, "examples", "every variant for a few images"))


def _sec_fooling(inputs: ReportInputs, figs: dict) -> str:
    chs = [m for m in inputs.models if m.get("challenge")]
    if not chs:
        return _missing("challenge.json", "Run <code>bgbias challenge</code> to fill this section.")
    rows = [[esc(m.name), esc(r["class"]), f"<code>{esc(r.get('background'))}</code>", pct(r.get("fool_rate"), 1),
             esc(r.get("n_tested", ""))] for m in chs for r in top_fooling(m.get("challenge"), 5, per_class=1)]
    return ("<p class='help'>Fool rate: the share of foregrounds of <em>other</em> classes that this single "
            "background (Only-BG-T) turns into a wrong prediction. Shown: the most fooling background of each "
            "class, highest first.</p>" + _img(figs, "fooling", "most fooling backgrounds")
            + _table(["model", "background class", "background id", "fool rate", "tested"], rows, (3, 4)))


def _sec_saliency(inputs: ReportInputs, figs: dict) -> str:
    sal = [m for m in inputs.models if m.get("saliency").get("methods")]
    if not sal:
        return _missing("saliency.json", "Run <code>bgbias saliency</code> to fill this section.")
    rows = []
    for m in sal:
        for meth, per in m.get("saliency")["methods"].items():
            for v in variant_order(per):
                r = per[v]
                rows.append([esc(m.name), esc(meth), f"<code>{esc(inputs.label(v))}</code>", pct(r.get("fg_share"), 1),
                             pct(r.get("fg_area"), 1), esc(r.get("n", ""))])
    return ("<p class='help'>Foreground share: the fraction of the attribution that falls inside the "
            "object's mask. Compare it with the foreground area: a model that ignores the object entirely "
            "would sit near the area; a higher share means it looks at the object.</p>"
            + _img(figs, "saliency", "saliency overlays")
            + _table(["model", "method", "variant", "foreground share", "foreground area", "images"], rows, (3, 4, 5)))


def _sec_groups(inputs: ReportInputs, figs: dict) -> str:
    ms = [m for m in inputs.models if (m.get("eval").get("signal_groups") or {}).get("counts")]
    if not ms:
        return _missing("signal groups", "They come from eval.json when it has only_fg and only_bg_t.")
    rows = [[esc(m.name)] + [esc(m.get("eval")["signal_groups"]["counts"].get(g, 0)) for g in SIGNAL_GROUPS]
            for m in ms]
    return ("<p class='help'>Per image: is the model right on Only-FG (fg+) and on Only-BG-T (bg+)? "
            "fg-bg+ images are recognised from the background alone but not from the object: the shortcut.</p>"
            + _img(figs, "signal_groups", "signal groups per model")
            + _table(["model", *SIGNAL_GROUPS], rows, range(1, 5)))


def _sec_training(inputs: ReportInputs) -> str:
    rows = []
    for m in inputs.models:
        met = m.get("metrics")
        fams = m.families_seen
        hist = met.get("history") or []
        cfg = met.get("config")
        rows.append([esc(m.name), f"<code>{esc(m.key)}</code>", esc(m.recipe or "unknown"), esc(met.get("arch", "")),
                     esc(", ".join(map(str, fams)) if fams else ("none" if fams is not None else "unknown")),
                     esc(len(hist) or ""), pct((met.get("final") or {}).get("train_accuracy"), 1),
                     pct((met.get("final") or {}).get("val_accuracy"), 1),
                     f"<details><summary>config</summary><pre>{esc(_json(cfg))}</pre></details>" if cfg else ""])
    return ("<p class='help'>Families seen in training: background families the recipe used; test variants of "
            "those families are marked &dagger; in the accuracy table.</p>"
            + _table(["model", "spec", "recipe", "arch", "families seen", "epochs", "train accuracy",
                      "val accuracy", ""], rows, (5, 6, 7)))


def _sec_inputs(inputs: ReportInputs, results: dict) -> str:
    files = "".join(f"<li><code>{esc(p)}</code> ({esc(k)})</li>" for p, k in inputs.files)
    skipped = [(m.name, s) for m in inputs.models for s in m.get("eval").get("skipped") or []]
    sk = "".join(f"<li>{esc(n)}: <code>{esc(s.get('path'))}</code>: {esc(s.get('reason'))}</li>" for n, s in skipped[:50])
    dropped = ((inputs.manifest or {}).get("counts") or {}).get("by_reason") or {}
    dr = "".join(f"<li>{esc(r)}: {esc(c)}</li>" for r, c in dropped.items())
    warn = "".join(f"<li>{esc(w)}</li>" for w in inputs.warnings)
    demo = results.get("demo")
    return (f"<ul>{files}</ul>" + (f"<h3>Skipped images</h3><ul>{sk}</ul>" if sk else "")
            + (f"<h3>Dropped at build time</h3><ul>{dr}</ul>" if dr else "")
            + (f"<h3>Warnings</h3><ul>{warn}</ul>" if warn else "")
            + (f"<details><summary>demo configuration</summary><pre>{esc(_json(demo))}</pre></details>" if demo else ""))


def _json(x: Any) -> str:
    return json.dumps(x, indent=2, sort_keys=True, default=str)


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:0 1.2em 3em}
header{background:#263238;color:#fff;padding:.8em 1.2em}
header h1{margin:0 auto;max-width:1100px;font-size:1.4em}
nav{position:sticky;top:0;background:#eceff1;padding:.4em 1.2em;z-index:1;border-bottom:1px solid #cfd8dc}
nav ul{display:flex;flex-wrap:wrap;gap:.3em 1.2em;list-style:none;margin:0 auto;padding:0;max-width:1100px}
nav a{color:#37474f;text-decoration:none}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:.6em 1.2em 1em;margin:1.2em 0}
h2{font-size:1.2em;margin:.4em 0}
figure{margin:.6em 0;text-align:center}
figure img{max-width:100%;height:auto}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border-bottom:1px solid #e0e0e0;padding:.25em .6em;text-align:left;vertical-align:top}
th.n,td.n{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#777;font-size:.85em}.seen{color:#c44e52;font-weight:bold}
.help{color:#555;font-size:.92em}.missing{color:#999;font-style:italic}
ul.summary li{margin:.4em 0}
pre{white-space:pre-wrap;font-size:.8em;background:#f5f5f5;padding:.5em}
"""


def render_page(inputs: ReportInputs, results: dict, figs: dict[str, bytes]) -> str:
    """The whole page as one string: inline CSS, no scripts, every image a data URI."""
    body = {"summary": _sec_summary(inputs, figs), "accuracy": _sec_accuracy(inputs, figs),
            "examples": _sec_examples(inputs, figs), "fooling": _sec_fooling(inputs, figs),
            "saliency": _sec_saliency(inputs, figs), "signal-groups": _sec_groups(inputs, figs),
            "training": _sec_training(inputs), "inputs": _sec_inputs(inputs, results)}
    nav = "".join(f'<li><a href="#{sid}">{esc(title)}</a></li>' for sid, title in SECTIONS)
    secs = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{body[sid]}</section>' for sid, title in SECTIONS)
    title = esc(results.get("title", "bgbias report"))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>'
            f'<header><h1>{title}</h1></header><nav><ul>{nav}</ul></nav><main>{secs}'
            f'<p class="help">Written by bgbias {esc(__version__)}; the same numbers are in results.json.</p>'
            f'</main></body></html>\n')
