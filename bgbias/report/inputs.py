"""Read the result files a report is made of, group them by model, and key every variant by its canonical name.

Results are keyed by canonical variant names (``color:red``); older files keyed by folder (``color_red``) are
renamed on reading with the manifest's mapping (given, or the one in the data folder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from bgbias.core.io import read_json
from bgbias.core.layout import MANIFEST, list_splits, read_manifest
from bgbias.core.names import variant_names

KINDS = {"bgbias-eval": "eval", "bgbias-challenge": "challenge", "bgbias-saliency": "saliency",
         "bgbias-train": "metrics", "bgbias-eval-detect": "detect"}


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
        """The variant's canonical name (``texture:stripes:8``), also for a folder name (``texture_stripes_8``)."""
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
            model = doc.get("model", p.stem)    # eval-detect: {"spec": ...} or {"predictions": DIR}
            key = str(model.get("spec") or model.get("predictions") or p.stem if isinstance(model, dict) else model)
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
    names_by_dir = variant_names(manifest if manifest is not None else _data_manifest(data_dir))
    for m in ordered:
        for d in m.docs.values():
            canonical_keys(d, names_by_dir)
    return ReportInputs(ordered, manifest, data_dir, classes, files, warnings, names_by_dir)


def canonical_keys(doc: dict, names: Mapping[str, str]) -> dict:
    """Rename variant folders (``color_red``) to canonical names (``color:red``) in a result, in place.

    What files written before results were keyed by canonical names need: ``variants`` (eval), ``methods.*``
    and ``overlays[].variant`` (saliency), ``skipped[].variant``. Keys that are no folder stay as they are.
    """
    if not names:
        return doc
    if isinstance(doc.get("variants"), dict):
        doc["variants"] = {names.get(k, k): v for k, v in doc["variants"].items()}
    methods = doc.get("methods")
    if isinstance(methods, dict):
        doc["methods"] = {meth: {names.get(k, k): v for k, v in per.items()} if isinstance(per, dict) else per
                          for meth, per in methods.items()}
    for key in ("overlays", "skipped"):
        for row in doc.get(key) if isinstance(doc.get(key), list) else ():
            if isinstance(row, dict) and isinstance(row.get("variant"), str):
                row["variant"] = names.get(row["variant"], row["variant"])
    return doc


def _data_manifest(data_dir: Path | None) -> dict | None:
    """The data folder's ``manifest.json`` when no manifest was given (None for the IN-9 release or a broken one)."""
    try:
        doc = None if data_dir is None else read_manifest(data_dir)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


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
            if not d.get("data") or kind == "detect":   # a detection build is not a classification layout
                continue
            for cand in (Path(str(d["data"])), m.paths[kind].parent / str(d["data"])):
                if (cand / MANIFEST).is_file() or list_splits(cand, "original"):
                    return cand
    return None
