"""The report: one self-contained HTML page plus ``results.json`` from eval/challenge/saliency/metrics/manifest JSON.

``write_report(paths, out)`` is the one call (``bgbias report`` wraps it). Files
are recognised by their ``kind`` (schemas in docs/ARCHITECTURE.md) and grouped
by the model they describe; a train run's ``metrics.json`` joins the model
whose checkpoint sits next to it. This module reads and groups the inputs and
writes ``results.json``; :mod:`bgbias.report_html` renders the page (every
image a data URI, every piece of user text through :func:`esc`) and
:mod:`bgbias.plots` draws the figures. Neither needs torch, so neither does this.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .io import atomic_write_bytes, read_json, write_json
from .layout import MANIFEST, SPLIT
from .plots import make_figures, seen, top_fooling
from .report_html import CSS, SECTIONS, SIGNAL_GROUPS, esc, render_page, summary_segments, summary_text

__all__ = ["KINDS", "ModelResults", "ReportInputs", "load_inputs", "build_results", "write_report",
           # rendered by report_html, importable from here as before
           "CSS", "SECTIONS", "SIGNAL_GROUPS", "esc", "render_page", "summary_segments", "summary_text"]

KINDS = {"bgbias-eval": "eval", "bgbias-challenge": "challenge", "bgbias-saliency": "saliency",
         "bgbias-train": "metrics"}


@dataclass
class ModelResults:
    """Everything known about one model, by kind: the parsed JSON and the file it came from."""

    key: str
    name: str = ""
    docs: dict[str, dict] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def get(self, kind: str) -> dict:
        return self.docs.get(kind) or {}

    @property
    def recipe(self) -> str | None:
        return self.get("metrics").get("recipe")

    @property
    def families_seen(self) -> list[str] | None:
        fams = self.get("eval").get("families_seen")
        return fams if fams is not None else self.get("metrics").get("families_seen")


@dataclass
class ReportInputs:
    models: list[ModelResults]
    manifest: dict | None
    data_dir: Path | None
    classes: list[str]
    files: list[tuple[Path, str]]
    warnings: list[str]
    variant_names: dict[str, str] = field(default_factory=dict)

    def label(self, variant: str) -> str:
        """Results are keyed by variant folder (``texture_stripes_8``); show the variant name when known."""
        return self.variant_names.get(variant, variant)


def _kind(doc: Any, path: Path) -> str:
    if isinstance(doc, dict):
        tag = str(doc.get("kind", "")).split("/")[0]
        if tag in KINDS:
            return KINDS[tag]
        if doc.get("tool") == "bgbias" and "samples" in doc and "variants" in doc:
            return "manifest"
    valid = ", ".join(f"{k}/1" for k in KINDS)
    raise ValueError(f"{path} is not a bgbias result file (kind {doc.get('kind') if isinstance(doc, dict) else None!r});"
                     f" expected a manifest.json or one of {valid}.")


def _model_path(spec: str) -> Path | None:
    """The file inside a model spec (``checkpoint:runs/a/model.pt`` -> that path), if it names one."""
    tail = spec.split(":", 1)[1] if ":" in spec else spec
    return Path(tail) if tail and (tail.endswith((".pt", ".pth", ".ts")) or os.sep in tail) else None


def load_inputs(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None,
                data: str | os.PathLike | None = None) -> ReportInputs:
    """Read and group the result files; ``names`` renames the models in order of first appearance."""
    if not paths:
        raise ValueError("No input files given; pass eval.json and optionally challenge.json, saliency.json, "
                         "metrics.json, manifest.json.")
    models: dict[str, ModelResults] = {}
    metrics: list[tuple[Path, dict]] = []
    manifest, manifest_path, files, warnings = None, None, [], []
    for p in map(Path, paths):
        if not p.is_file():
            raise ValueError(f"Input file {p} does not exist.")
        try:
            doc = read_json(p)
        except ValueError as e:
            raise ValueError(f"{p} is not valid JSON ({e}).") from None
        kind = _kind(doc, p)
        files.append((p, kind))
        if kind == "manifest":
            manifest, manifest_path = doc, p
        elif kind == "metrics":
            metrics.append((p, doc))
        else:
            key = str(doc.get("model", p.stem))
            m = models.setdefault(key, ModelResults(key))
            if kind in m.docs:
                warnings.append(f"Two {kind} files for model {key}; using {p}, ignoring {m.paths[kind]}.")
            m.docs[kind], m.paths[kind] = doc, p
    for p, doc in metrics:
        host = next((m for m in models.values() if "metrics" not in m.docs and _model_path(m.key) is not None
                     and _model_path(m.key).resolve().parent == p.resolve().parent), None)
        if host is None:
            host = next((m for m in models.values() if "metrics" not in m.docs), None)
            if host is not None:
                warnings.append(f"{p} joined model {host.key} by input order (its checkpoint is not next to it).")
        host = host or models.setdefault(f"train:{p}", ModelResults(f"train:{p}"))
        host.docs["metrics"], host.paths["metrics"] = doc, p
    ordered = list(models.values())
    if names:
        if len(names) != len(ordered):
            raise ValueError(f"Got {len(names)} names ({', '.join(names)}) for {len(ordered)} models "
                             f"({', '.join(m.key for m in ordered)}); give one name per model.")
        for m, n in zip(ordered, names):
            m.name = str(n)
    taken: set[str] = set()
    for m in ordered:
        base = m.name or m.recipe or m.key
        m.name = base if base not in taken else f"{base} ({len(taken) + 1})"
        taken.add(m.name)
    data_dir = _find_data_dir(data, manifest_path, ordered)
    classes = next((list(d["classes"]) for m in ordered for d in m.docs.values() if d.get("classes")),
                   list((manifest or {}).get("classes") or []))
    for m in ordered:
        for kind, d in m.docs.items():
            if d.get("classes") and list(d["classes"]) != classes:
                warnings.append(f"{m.paths[kind]} lists other classes than the first file; its class names may "
                                "not line up.")
    names_by_dir = {str(v.get("dirname", k)): str(v.get("name", k))
                    for k, v in ((manifest or {}).get("variants") or {}).items() if isinstance(v, dict)}
    return ReportInputs(ordered, manifest, data_dir, classes, files, warnings, names_by_dir)


def _find_data_dir(data: Any, manifest_path: Path | None, models: list[ModelResults]) -> Path | None:
    """The build folder, for example images: given, else next to the manifest, else the results' ``data``."""
    if data is not None:
        if not Path(data).is_dir():
            raise ValueError(f"Data folder {data} does not exist; pass a bgbias build output (IN-9 layout).")
        return Path(data)
    if manifest_path is not None:
        return manifest_path.parent
    for m in models:
        for kind, d in m.docs.items():
            if not d.get("data"):
                continue
            for cand in (Path(str(d["data"])), m.paths[kind].parent / str(d["data"])):
                if (cand / MANIFEST).is_file() or (cand / "original" / SPLIT).is_dir():
                    return cand
    return None


# --- results.json and the page ----------------------------------------------------------------------------------


def build_results(inputs: ReportInputs, title: str, extra: dict | None = None) -> dict:
    """The machine-readable twin of the page (``results.json``)."""
    models = []
    for m in inputs.models:
        ev, ch, sal, met = (m.get(k) for k in ("eval", "challenge", "saliency", "metrics"))
        models.append({
            "name": m.name, "model": m.key, "recipe": m.recipe, "arch": met.get("arch"),
            "families_seen": m.families_seen, "summary": summary_text(m),
            "variants": {v: {"name": inputs.label(v), "accuracy": i.get("accuracy"), "ci95": i.get("ci95"), "n": i.get("n"),
                             "seen_in_training": seen(m, v, i)} for v, i in ev.get("variants", {}).items()},
            "bg_gap": ev.get("bg_gap"),
            "challenge": None if not ch else {k: ch.get(k) for k in (
                "challenge_accuracy", "clean_accuracy", "exhaustive", "n_foregrounds", "n_backgrounds",
                "forwards", "exhaustive_forwards")},
            "top_fooling": top_fooling(ch),
            "fg_share": {meth: {v: r.get("fg_share") for v, r in per.items()}
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
    results = build_results(inputs, title, extra)
    atomic_write_bytes(out, render_page(inputs, results, figs).encode("utf-8"))
    write_json(Path(results_path) if results_path else out.with_name("results.json"), results)
    if figures_dir is not None:
        for stem, png in figs.items():
            atomic_write_bytes(Path(figures_dir) / f"{stem}.png", png)
    return results
