"""The report: one self-contained HTML page plus ``results.json`` from eval/challenge/saliency/metrics/manifest JSON.

``write_report(paths, out)`` is the one call (``bgbias report`` wraps it). Files
are recognised by their ``kind`` (schemas in docs/ARCHITECTURE.md) and grouped
by the model they describe; a train run's ``metrics.json`` joins the model
whose checkpoint sits next to it. This module reads and groups the inputs and
writes ``results.json``; :mod:`bgbias.report.page` renders the page (every
image a data URI, every piece of user text through :func:`esc`) and
:mod:`bgbias.report.figures` draws the figures. Neither needs torch, so neither does this.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from bgbias.core.io import atomic_write_bytes, write_json
from bgbias.core.version import __version__
from bgbias.report.detection import detection_figures, detection_results
from bgbias.report.figures import make_figures, seen, top_fooling
from bgbias.report.figures_groups import group_figures
from bgbias.report.inputs import ReportInputs, load_inputs
from bgbias.report.page import LOCALISATION, render_page, summary_text


def build_results(inputs: ReportInputs, title: str, extra: dict | None = None) -> dict:
    """The machine-readable twin of the page (``results.json``)."""
    models = []
    for m in inputs.models:
        ev, ch, sal, met = (m.get(k) for k in ("eval", "challenge", "saliency", "metrics"))
        models.append({
            "name": m.name, "model": m.key, "recipe": m.recipe, "arch": met.get("arch"),
            "families_seen": m.families_seen, "summary": summary_text(m),
            "variants": {v: {"name": inputs.label(v), "accuracy": i.get("accuracy"), "ci95": i.get("ci95"), "n": i.get("n"),
                             "seen_in_training": seen(m, v, i), **_group_summary(i.get("groups"))}
                         for v, i in ev.get("variants", {}).items()},
            "bg_gap": ev.get("bg_gap"),
            "challenge": None if not ch else {k: ch.get(k) for k in (
                "challenge_accuracy", "clean_accuracy", "exhaustive", "n_foregrounds", "n_backgrounds",
                "forwards", "exhaustive_forwards")},
            "top_fooling": top_fooling(ch),
            "fg_share": {meth: {v: r.get("fg_share") for v, r in per.items()}
                         for meth, per in (sal.get("methods") or {}).items()},
            "localisation": {meth: {v: {k: r.get(k) for k, _ in LOCALISATION} for v, r in per.items()}
                             for meth, per in (sal.get("methods") or {}).items()},
            "signal_groups": (ev.get("signal_groups") or {}).get("counts"),
            "final": met.get("final"),
            "files": {k: str(p) for k, p in m.paths.items()},
        })
    out = {"kind": "bgbias-report/1", "tool": "bgbias", "version": __version__, "title": title,
           "inputs": [{"path": str(p), "kind": k} for p, k in inputs.files],
           "data": str(inputs.data_dir) if inputs.data_dir else None, "classes": inputs.classes,
           "models": models, "warnings": inputs.warnings}
    out.update(extra or {})
    return out


def _group_summary(groups: dict | None) -> dict:
    """The worst group of a variant for ``results.json`` (nothing when eval.json has no groups)."""
    if not groups or not groups.get("per_group"):
        return {}
    return {k: groups.get(k) for k in ("worst_group", "worst_group_accuracy", "mean_group_accuracy",
                                       "weighted_accuracy")} | {"worst_group_ci95": groups.get("ci95")}


def write_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike = "report.html", *,
                 results_path: str | os.PathLike | None = None, figures_dir: str | os.PathLike | None = None,
                 names: Sequence[str] | None = None, data: str | os.PathLike | None = None,
                 title: str = "bgbias report", extra: dict | None = None) -> dict:
    """Write the HTML page and ``results.json`` (default: next to the page); return the results dict."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"Report path {out} should end in .html or .htm.")
    inputs = load_inputs(paths, names=names, data=data)
    figs = make_figures(inputs)
    figs.update(group_figures(inputs))
    figs.update(detection_figures(inputs))
    results = build_results(inputs, title, {"detection": detection_results(inputs), **(extra or {})})
    atomic_write_bytes(out, render_page(inputs, results, figs).encode("utf-8"))
    write_json(Path(results_path) if results_path else out.with_name("results.json"), results)
    if figures_dir is not None:
        for stem, png in figs.items():
            atomic_write_bytes(Path(figures_dir) / f"{stem}.png", png)
    return results
