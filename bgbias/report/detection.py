"""The report's detection section: AP per background with intervals, the drop per category, example boxes.

Input: ``bgbias-eval-detect/1`` files (kind ``detect`` in :mod:`bgbias.report.inputs`), one per
detector. :func:`detection_figures` draws the figures (:mod:`bgbias.report.figures_detect`),
:func:`detection_context` prepares the template's tables (``templates/sections/detection.html.j2``),
:func:`detection_results` the ``results.json`` part and :func:`detection_summary` the one
sentence per detector. Numbers are printed as the result file gives them (pycocotools' AP in
[0, 1], three decimals, as COCO tables do); nothing here needs torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from bgbias.report.figures import variant_order
from bgbias.report.figures_detect import ap_per_background_png, drop_per_category_png, example_boxes_png, gt_variants

if TYPE_CHECKING:
    from bgbias.report.inputs import ModelResults, ReportInputs

KIND = "detect"


def detectors(inputs: ReportInputs) -> list[ModelResults]:
    """The models that have an eval-detect result, in input order."""
    return [m for m in inputs.models if m.get(KIND).get("variants")]


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.3f}"


def _ap_cell(v: dict | None, metric: str = "AP") -> Markup:
    if not v:
        return Markup("&ndash;")
    if not v.get("has_gt"):
        return Markup('FP/img {} <span class="ci">(no ground truth)</span>').format(_f(v.get("fp_per_image")))
    val = (v.get("metrics") or {}).get(metric)
    ci = (v.get("intervals") or {}).get(metric)
    out = Markup("{}").format(_f(val))
    if ci:
        out += Markup(' <span class="ci">[{}, {}]</span>').format(_f(ci[0]), _f(ci[1]))
    return out


def _drop_cell(v: dict | None) -> Markup:
    d = ((v or {}).get("drop") or {}).get("AP")
    r = ((v or {}).get("rpc") or {}).get("AP")
    if d is None:
        return Markup("&ndash;")
    return Markup('{:+.3f}{}').format(0.0 - d, Markup(' <span class="ci">rPC {:.2f}</span>').format(r) if r is not None
                                      else "")


def example_root(m: ModelResults, inputs: ReportInputs) -> Path | None:
    """The detection build the result names: as written, next to the result file, or the report's ``--data``."""
    doc, path = m.get(KIND), m.paths.get(KIND)
    data = str(doc.get("data") or "")
    cands = ([Path(data)] + ([path.parent / data] if path is not None else []) if data else []) + \
        ([inputs.data_dir] if inputs.data_dir is not None else [])
    return next((c for c in cands if (c / "manifest.json").is_file()), None)


def detection_figures(inputs: ReportInputs) -> dict[str, bytes]:
    """``detection_ap`` (all detectors), ``detection_drop_<k>`` and ``detection_examples_<k>`` per detector."""
    ms = detectors(inputs)
    if not ms:
        return {}
    figs = {"detection_ap": ap_per_background_png([m.get(KIND) for m in ms], [m.name for m in ms])}
    for k, m in enumerate(ms):
        doc = m.get(KIND)
        if "original" in doc["variants"] and len(gt_variants([doc])) > 1:
            figs[f"detection_drop_{k}"] = drop_per_category_png(doc, m.name)
        root = example_root(m, inputs)
        if (doc.get("examples") or {}).get("image_ids") and root is not None:
            figs[f"detection_examples_{k}"] = example_boxes_png(doc, root)
        elif doc.get("examples"):
            inputs.warnings.append(f"Detection build {doc.get('data')} of {m.name} was not found; no example boxes "
                                   "(pass --data BUILD).")
    return figs


def detection_context(inputs: ReportInputs) -> dict | None:
    """Tables for the template: AP [95% interval] per variant and model, and the AP drop per category."""
    ms = detectors(inputs)
    if not ms:
        return None
    docs = [m.get(KIND) for m in ms]
    order = variant_order(n for d in docs for n in d["variants"])
    head = ["variant"] + [h for m in ms for h in (f"{m.name}: AP [95%]", "AP50", "AP - AP(original)")]
    rows = [[Markup("<code>{}</code>").format(n)]
            + [c for d in docs for c in (_ap_cell(d["variants"].get(n)), _ap_cell(d["variants"].get(n), "AP50")
                                         if (d["variants"].get(n) or {}).get("has_gt") else Markup("&ndash;"),
                                         _drop_cell(d["variants"].get(n)))]
            for n in order]
    per_cat = []
    for m, d in zip(ms, docs):
        ref = d["variants"].get("original")
        others = [n for n in gt_variants([d]) if n != "original"]
        if ref is None or not others:
            continue
        cat_rows = []
        for c, base in (ref.get("per_category") or {}).items():
            cells = []
            for n in others:
                a = (d["variants"][n].get("per_category") or {}).get(c)
                cells.append(Markup("&ndash;") if a is None or base is None else Markup("{:+.3f}").format(a - base))
            cat_rows.append([c, _f(base)] + cells)
        per_cat.append({"name": m.name, "head": ["category", "AP original"] + others, "rows": cat_rows,
                        "num": tuple(range(1, len(others) + 2))})
    n_boot = max(int((d.get("bootstrap") or {}).get("n") or 0) for d in docs)
    return {"head": head, "rows": rows, "num": tuple(range(1, len(head))), "per_category": per_cat,
            "models": [{"name": m.name, "k": k, "summary": detection_summary(m)} for k, m in enumerate(ms)],
            "n_bootstrap": n_boot}


def detection_summary(m: ModelResults) -> str:
    """One sentence: AP on original, the mean over the other backgrounds with ground truth, the worst one."""
    var = m.get(KIND).get("variants") or {}
    aps = {n: (v.get("metrics") or {}).get("AP") for n, v in var.items() if v.get("has_gt")}
    o = aps.pop("original", None)
    aps = {n: a for n, a in aps.items() if a is not None}
    text = f"{m.name}: detection AP {_f(o)} on original"
    if aps:
        worst = min(aps, key=aps.get)
        plural = "s" if len(aps) > 1 else ""
        text += (f", {_f(sum(aps.values()) / len(aps))} on average over {len(aps)} other background{plural} "
                 f"(lowest {_f(aps[worst])} on {worst})")
    fp = [v.get("fp_per_image") for v in var.values() if not v.get("has_gt") and v.get("fp_per_image") is not None]
    if fp:
        text += f"; {_f(max(fp))} false positives per image without objects"
    return text + "."


def detection_results(inputs: ReportInputs) -> dict[str, Any]:
    """``results.json``'s ``detection``: per detector and variant the headline numbers, their intervals and drops."""
    out = {}
    for m in detectors(inputs):
        out[m.name] = {"model": m.key, "summary": detection_summary(m), "file": str(m.paths.get(KIND)),
                       "variants": {n: {k: v.get(k) for k in ("metrics", "intervals", "drop", "rpc", "per_category",
                                                             "fp_per_image", "has_gt", "n_images")}
                                    for n, v in m.get(KIND)["variants"].items()}}
    return out


