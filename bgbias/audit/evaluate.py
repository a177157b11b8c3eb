"""``bgbias eval``: accuracy per variant (bootstrap CI), per class, confusion, BG-gap, signal groups.

Reads the IN-9 layout (our build output or the official release) through
``layout.py``; images stream through a DataLoader (workers decode), the
preprocessing and the model run batched on ``--device``. A model prediction is
mapped to a dataset class with the label map; outside the map (-1) is wrong.
An unreadable image is skipped and named in ``skipped``; it never stops the run.
The result follows the ``eval.json`` schema of docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bgbias.audit.core import AuditConfig, bootstrap_ci, open_audit, overlap_with_training, predict_paths
from bgbias.core.layout import SIGNAL_GROUPS, Item, list_items, list_variant_dirs, sanitize_name
from bgbias.core.record import build_record
from bgbias.core.seeding import numpy_rng
from bgbias.models.load import LoadedModel



_MIXED_FAMILIES = {"mixed", "mixed_rand", "mixed_same", "mixed_next", "other_sample", "other", "rand", "same", "next"}


_EXACT_ONLY = {"mean", "original"}   # "mean" must not claim "mean_color"


@dataclass(frozen=True)
class EvalConfig(AuditConfig):
    """Everything that decides an eval result; saved into ``eval.json``."""

    variants: tuple[str, ...] | None = None   # None = every variant folder present
    n_bootstrap: int = 1000


def family_dirname(family: str) -> str:
    return sanitize_name(family.replace(":", "_"))


def seen_in_training(variant_dir: str, families: Sequence[str] | None) -> bool | None:
    """Whether a training background family produced this variant's kind of image (None when unknown).

    ``color`` marks every ``color_*`` folder, ``texture:stripes`` marks ``texture_stripes*``,
    ``mixed_rand``/``other_sample`` (another image's background) mark every ``mixed_*`` folder.
    """
    if families is None:
        return None
    for fam in families:
        if fam in _MIXED_FAMILIES and variant_dir.startswith("mixed_"):
            return True
        prefix = family_dirname(fam)
        if variant_dir == prefix or (prefix not in _EXACT_ONLY and variant_dir.startswith(prefix + "_")):
            return True
    return False


def _variant_result(items: list[Item], preds: np.ndarray, valid: np.ndarray, classes: list[str],
                    rng: np.random.Generator, n_boot: int, seen: bool | None) -> dict[str, Any]:
    labels = np.array([it.label for it in items], dtype=np.int64)[valid]
    p = preds[valid]
    correct = (p == labels).astype(np.float64)
    c = len(classes)
    confusion = np.zeros((c, c), dtype=np.int64)
    inside = (p >= 0) & (p < c)
    np.add.at(confusion, (labels[inside], p[inside]), 1)
    outside = np.bincount(labels[~inside], minlength=c)[:c]
    per_class = {}
    for k, name in enumerate(classes):
        sel = labels == k
        if sel.any():
            per_class[name] = {"accuracy": float(correct[sel].mean()), "n": int(sel.sum())}
    n = int(len(correct))
    return {"accuracy": float(correct.mean()) if n else None, "ci95": bootstrap_ci(correct, rng, n_boot),
            "n": n, "correct": int(correct.sum()), "per_class": per_class, "confusion": confusion.tolist(),
            "outside_map": outside.tolist(), "seen_in_training": seen}


def _by_key(items: list[Item], correct: np.ndarray, valid: np.ndarray) -> dict[tuple[int, str], bool]:
    return {(it.label, it.id): bool(correct[i]) for i, it in enumerate(items) if valid[i]}


def bg_gap(same: dict, rand: dict, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """acc(mixed_same) - acc(mixed_rand); CI from a paired bootstrap over the foreground ids in both."""
    value = float(np.mean(list(same.values())) - np.mean(list(rand.values())))
    common = sorted(set(same) & set(rand))
    if common:
        d = np.array([float(same[k]) - float(rand[k]) for k in common])
        ci = bootstrap_ci(d, rng, n_boot)
    else:
        ci = None
    return {"value": value, "ci95": ci, "paired": len(common), "n_same": len(same), "n_rand": len(rand)}


def signal_groups(fg: dict, bg: dict, classes: list[str]) -> dict[str, Any]:
    """Per image: correct on only_fg (fg+/-) x correct on only_bg_t (bg+/-), counts overall and per class."""
    counts = dict.fromkeys(SIGNAL_GROUPS, 0)
    per_class = {name: dict.fromkeys(SIGNAL_GROUPS, 0) for name in classes}
    for key in sorted(set(fg) & set(bg)):
        g = f"fg{'+' if fg[key] else '-'}bg{'+' if bg[key] else '-'}"
        counts[g] += 1
        per_class[classes[key[0]]][g] += 1
    return {"counts": counts, "per_class": per_class, "n": sum(counts.values())}


def resolve_variants(data: Path, variants: Sequence[str] | None, split: str = "val") -> list[str]:
    present = list_variant_dirs(data, split)
    if not variants or list(variants) == ["all"]:
        return present
    missing = [v for v in variants if v not in present]
    if missing:
        raise ValueError(f"Variant {missing[0]!r} is missing from {data} (split {split!r}); "
                         f"present: {', '.join(present)}.")
    return list(variants)


def evaluate(config: EvalConfig, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Run the evaluation and return the ``eval.json`` dict (see docs/ARCHITECTURE.md)."""
    t0 = time.time()
    data = Path(config.data)
    audit = open_audit(config, loaded)
    families = audit.model.families_seen
    variants = resolve_variants(data, config.variants, config.split)
    result: dict[str, Any] = {"kind": "bgbias-eval/1", "model": config.model, "data": str(data), "split": config.split,
                              "config": asdict(config), "preprocess": audit.preprocess.to_dict(),
                              "label_map": audit.label_map.name, "classes": audit.classes, "variants": {},
                              "families_seen": families, "skipped": []}
    keyed: dict[str, dict] = {}
    seen_ids: set[str] = set()
    for v in variants:
        items = list_items(data, v, config.split)
        seen_ids.update(it.id for it in items)
        if not items:
            raise ValueError(f"Variant {v!r} in {data} has no images.")
        if max(it.label for it in items) >= len(audit.classes):
            raise ValueError(f"Variant {v!r} has class folders beyond the {len(audit.classes)} classes of 'original'.")
        preds, _, bad = predict_paths(audit, [it.path for it in items], config.batch_size, config.workers,
                                      config.progress, desc=v)
        result["skipped"].extend({"path": str(items[i].path), "variant": v, "reason": r} for i, r in bad)
        valid = preds != -2
        rng = numpy_rng(config.seed, "bootstrap", v)
        result["variants"][v] = _variant_result(items, preds, valid, audit.classes, rng, config.n_bootstrap,
                                                seen_in_training(v, families))
        labels = np.array([it.label for it in items])
        keyed[v] = _by_key(items, preds == labels, valid)
    result["bg_gap"] = (bg_gap(keyed["mixed_same"], keyed["mixed_rand"], numpy_rng(config.seed, "bg_gap"),
                               config.n_bootstrap) if "mixed_same" in keyed and "mixed_rand" in keyed else None)
    result["signal_groups"] = (signal_groups(keyed["only_fg"], keyed["only_bg_t"], audit.classes)
                               if "only_fg" in keyed and "only_bg_t" in keyed else None)
    result["overlap_with_training"] = overlap_with_training(audit, seen_ids, config.split)
    result["record"] = build_record(audit.model.files, audit.model.module, audit.device, config.seed, data,
                                    result["preprocess"])
    result["seconds"] = round(time.time() - t0, 3)
    return result


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def format_table(result: dict[str, Any]) -> str:
    """The terminal summary: one row per variant, then BG-gap and signal groups."""
    rows = [f"{'variant':<22} {'acc':>7} {'95% CI':>16} {'n':>6}  seen"]
    for v, r in result["variants"].items():
        ci = r["ci95"] or [None, None]
        seen = {True: "yes", False: "no", None: "?"}[r["seen_in_training"]]
        rows.append(f"{v:<22} {_pct(r['accuracy']):>7} {_pct(ci[0]):>7} - {_pct(ci[1]):<7} {r['n']:>6}  {seen}")
    gap = result.get("bg_gap")
    if gap:
        ci = gap["ci95"] or [None, None]
        rows.append(f"{'BG-gap (same - rand)':<22} {_pct(gap['value']):>7} {_pct(ci[0]):>7} - {_pct(ci[1]):<7}")
    sg = result.get("signal_groups")
    if sg:
        rows.append("signal groups (only_fg x only_bg_t): "
                    + ", ".join(f"{k} {v}" for k, v in sg["counts"].items()))
    if result.get("overlap_with_training"):
        rows.append(f"warning: {result['overlap_with_training']} evaluated images were in the model's training set")
    if result.get("skipped"):
        rows.append(f"skipped {len(result['skipped'])} unreadable image(s); see 'skipped' in the JSON")
    return "\n".join(rows)
