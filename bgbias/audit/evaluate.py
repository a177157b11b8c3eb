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
from bgbias.audit.evaluate_shards import clear_state, predict_variant
from bgbias.audit.groups import (
    DEFAULT_MIN_COUNT,
    group_accuracy,
    reference_levels,
    sample_groups,
    too_small,
    wilson_ci,
)
from bgbias.core.layout import SIGNAL_GROUPS, Item, list_items, list_variant_dirs, read_manifest
from bgbias.core.names import seen_in_training, variant_names
from bgbias.core.record import build_record
from bgbias.core.seeding import numpy_rng
from bgbias.models.load import LoadedModel


@dataclass(frozen=True)
class EvalConfig(AuditConfig):
    """Everything that decides an eval result; saved into ``eval.json``."""

    variants: tuple[str, ...] | None = None   # None = every variant folder present; canonical names or folders
    n_bootstrap: int = 1000
    group_min_count: int = DEFAULT_MIN_COUNT   # groups with fewer samples are reported, not eligible for "worst"
    # spread over workers (bgbias.audit.evaluate_shards; the result is the same as one process's)
    shards: int = 1                          # each variant's images in this many pieces (resumable with state)
    executor: str = "local"                  # local processes or "ray"
    devices: tuple[str, ...] | None = None   # one worker per device; None: the config's device
    state: str | None = None                 # folder for finished shards (resume); None: no resume
    # mixed precision (float16 autocast on GPU, bfloat16 on CPU); amp_check images per variant are re-predicted
    # in fp32 and the predictions that differ counted (0: every image)
    amp: bool = False
    amp_check: int = 256


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
    ci = bootstrap_ci(correct, rng, n_boot)
    return {"accuracy": float(correct.mean()) if n else None, "ci95": ci, **reference_levels(labels, c, ci),
            "n": n, "correct": int(correct.sum()), "per_class": per_class, "confusion": confusion.tolist(),
            "outside_map": outside.tolist(), "seen_in_training": seen}


def _groups(items: list[Item], correct: np.ndarray, valid: np.ndarray, groups: dict[str, str] | None,
            cfg: "EvalConfig", train_counts: dict | None, variant: str) -> dict[str, Any] | None:
    """Worst-group / mean / training-weighted accuracy of one variant (None when the build records no backgrounds)."""
    if not groups:
        return None
    rows = [i for i, it in enumerate(items) if valid[i] and it.id in groups]
    if not rows:
        return None
    return group_accuracy([groups[items[i].id] for i in rows], correct[rows], min_count=cfg.group_min_count,
                          train_counts=train_counts, rng=numpy_rng(cfg.seed, "groups", variant),
                          n_boot=cfg.n_bootstrap)


def _by_key(items: list[Item], correct: np.ndarray, valid: np.ndarray) -> dict[tuple[int, str], bool]:
    return {(it.label, it.id): bool(correct[i]) for i, it in enumerate(items) if valid[i]}


def bg_gap(same: dict, rand: dict, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """acc(mixed_same) - acc(mixed_rand); CI from a paired bootstrap over the foreground ids in both.

    Its reference level is 0 (a model that ignores backgrounds); ``too_small`` flags an interval wider
    than 20 points."""
    value = float(np.mean(list(same.values())) - np.mean(list(rand.values())))
    common = sorted(set(same) & set(rand))
    if common:
        d = np.array([float(same[k]) - float(rand[k]) for k in common])
        ci = bootstrap_ci(d, rng, n_boot)
    else:
        ci = None
    # reference: 0 (no reliance on the background); too_small: the paired interval is wider than 20 points
    return {"value": value, "ci95": ci, "too_small": too_small(ci), "paired": len(common), "n_same": len(same),
            "n_rand": len(rand)}


def signal_groups(fg: dict, bg: dict, classes: list[str]) -> dict[str, Any]:
    """Per image: correct on only_fg (fg+/-) x correct on only_bg_t (bg+/-), counts overall and per class."""
    counts = dict.fromkeys(SIGNAL_GROUPS, 0)
    per_class = {name: dict.fromkeys(SIGNAL_GROUPS, 0) for name in classes}
    for key in sorted(set(fg) & set(bg)):
        g = f"fg{'+' if fg[key] else '-'}bg{'+' if bg[key] else '-'}"
        counts[g] += 1
        per_class[classes[key[0]]][g] += 1
    return {"counts": counts, "per_class": per_class, "n": sum(counts.values())}


def resolve_variants(data: Path, variants: Sequence[str] | None, split: str = "val",
                     manifest: dict | None = None) -> list[tuple[str, str]]:
    """``(canonical name, folder)`` of each variant to audit, in folder order for ``None``/``all``.

    ``variants`` may name a variant by its canonical name (``color:red``) or its folder (``color_red``); the
    manifest says which folder holds which name (without one, as in the IN-9 release, folders are the names).
    """
    present = list_variant_dirs(data, split)
    names = variant_names(manifest if manifest is not None else read_manifest(data))
    if not variants or list(variants) == ["all"]:
        return [(names.get(d, d), d) for d in present]
    folder = {**{d: d for d in present}, **{names.get(d, d): d for d in present}}
    missing = [v for v in variants if v not in folder]
    if missing:
        raise ValueError(f"Variant {missing[0]!r} is missing from {data} (split {split!r}); "
                         f"present: {', '.join(names.get(d, d) for d in present)}.")
    return [(names.get(d, d), d) for d in dict.fromkeys(folder[v] for v in variants)]


# how the work was spread, not what was computed: left out of eval.json, so its bytes do not depend on them
RUN_ONLY = ("workers", "progress", "shards", "executor", "devices", "state")


def recorded_config(config: EvalConfig) -> dict[str, Any]:
    """The config as ``eval.json`` records it: everything that decides the numbers."""
    return {k: v for k, v in asdict(config).items() if k not in RUN_ONLY}


def amp_recheck(config: EvalConfig, audit, paths: Sequence[Path], preds: np.ndarray, folder: str) -> dict[str, Any]:
    """Re-predict a seeded sample of ``amp_check`` readable images in fp32; count predictions amp changed.

    A fixed cost per variant (the whole variant with ``amp_check`` 0); the reported accuracies stay amp's."""
    ok = np.flatnonzero(preds != -2)
    k = len(ok) if config.amp_check == 0 else min(config.amp_check, len(ok))
    sel = np.sort(numpy_rng(config.seed, "amp", folder).choice(ok, size=k, replace=False)) if k else ok[:0]
    p32, _, _ = predict_paths(audit, [paths[i] for i in sel], config.batch_size, config.workers, fp32=True)
    differ = int((p32 != preds[sel]).sum())
    return {"checked": int(k), "differ": differ, "ci95": wilson_ci(differ, int(k))}


def _amp_summary(audit, per_variant: dict[str, dict]) -> dict[str, Any]:
    checked = sum(v["checked"] for v in per_variant.values())
    differ = sum(v["differ"] for v in per_variant.values())
    return {"dtype": str(audit.amp_dtype).removeprefix("torch."), "checked": checked, "differ": differ,
            "ci95": wilson_ci(differ, checked), "variants": per_variant}


def evaluate(config: EvalConfig, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Run the evaluation and return the ``eval.json`` dict (see docs/ARCHITECTURE.md)."""
    t0 = time.time()
    if config.amp_check < 0:
        raise ValueError(f"amp_check must be >= 0 (0 re-checks every image), got {config.amp_check}.")
    data = Path(config.data)
    audit = open_audit(config, loaded, amp=config.amp, channels_last=True)
    families = audit.model.families_seen
    manifest = read_manifest(data)
    variants = resolve_variants(data, config.variants, config.split, manifest)
    result: dict[str, Any] = {"kind": "bgbias-eval/1", "model": config.model, "data": str(data), "split": config.split,
                              "config": recorded_config(config), "preprocess": audit.preprocess.to_dict(),
                              "label_map": audit.label_map.name, "classes": audit.classes, "variants": {},
                              "families_seen": families, "skipped": []}
    keyed: dict[str, dict] = {}
    train_counts = audit.model.meta.get("group_counts") or None
    result["group_min_count"] = config.group_min_count
    seen_ids: set[str] = set()
    amp: dict[str, dict] = {}
    for name, folder in variants:      # results keyed by the canonical name; seeds keep the folder (same numbers)
        items = list_items(data, folder, config.split)
        seen_ids.update(it.id for it in items)
        if not items:
            raise ValueError(f"Variant {name!r} in {data} has no images.")
        if max(it.label for it in items) >= len(audit.classes):
            raise ValueError(f"Variant {name!r} has class folders beyond the {len(audit.classes)} classes of "
                             "'original'.")
        preds, _, bad = predict_variant(config, audit, name, [it.path for it in items], loaded)  # sharded if asked
        if config.amp:
            amp[name] = amp_recheck(config, audit, [it.path for it in items], preds, folder)
        result["skipped"].extend({"path": str(items[i].path), "variant": name, "reason": r} for i, r in bad)
        valid = preds != -2
        rng = numpy_rng(config.seed, "bootstrap", folder)
        result["variants"][name] = _variant_result(items, preds, valid, audit.classes, rng, config.n_bootstrap,
                                                   seen_in_training(name, families))
        labels = np.array([it.label for it in items])
        result["variants"][name]["chance"] = 1.0 / len(audit.classes)
        result["variants"][name]["groups"] = _groups(items, preds == labels, valid, sample_groups(manifest, folder),
                                                     config, train_counts, folder)
        keyed[name] = _by_key(items, preds == labels, valid)
    result["bg_gap"] = (bg_gap(keyed["mixed_same"], keyed["mixed_rand"], numpy_rng(config.seed, "bg_gap"),
                               config.n_bootstrap) if "mixed_same" in keyed and "mixed_rand" in keyed else None)
    result["signal_groups"] = (signal_groups(keyed["only_fg"], keyed["only_bg_t"], audit.classes)
                               if "only_fg" in keyed and "only_bg_t" in keyed else None)
    result["amp"] = _amp_summary(audit, amp) if config.amp else None
    result["overlap_with_training"] = overlap_with_training(audit, seen_ids, config.split)
    result["record"] = build_record(audit.model.files, audit.model.module, audit.device, config.seed, data,
                                    result["preprocess"])
    result["seconds"] = round(time.time() - t0, 3)
    clear_state(config)
    return result


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def _flag(small: bool | None) -> str:
    return "!" if small else " "


def format_table(result: dict[str, Any]) -> str:
    """The terminal summary (all in %): per variant accuracy, interval, majority rate, worst group; then BG-gap."""
    rows = [f"{'variant':<22} {'acc':>6} {'95% CI':>16}  {'n':>6} {'major.':>6} {'worst-grp':>9}  seen  worst group"]
    small = False
    for v, r in result["variants"].items():
        ci = r["ci95"] or [None, None]
        seen = {True: "yes", False: "no", None: "?"}[r["seen_in_training"]]
        g = r.get("groups") or {}
        wg = g.get("worst_group_accuracy")
        small |= bool(r.get("too_small")) or bool(g.get("too_small"))
        rows.append(f"{v:<22} {_pct(r['accuracy']):>6} {_pct(ci[0]):>7}-{_pct(ci[1]):<7}{_flag(r.get('too_small'))} "
                    f"{r['n']:>6} {_pct(r.get('majority')):>6} {_pct(wg):>8}{_flag(g.get('too_small'))}  "
                    f"{seen:<4}  {g.get('worst_group') or ''}")
    gap = result.get("bg_gap")
    if gap:
        ci = gap["ci95"] or [None, None]
        small |= bool(gap.get("too_small"))
        rows.append(f"{'BG-gap (same - rand)':<22} {_pct(gap['value']):>6} {_pct(ci[0]):>7}-{_pct(ci[1]):<7}"
                    f"{_flag(gap.get('too_small'))}  (0 = no reliance on the background)")
    classes = result.get("classes") or []
    if classes:
        rows.append(f"chance {_pct(1 / len(classes)).strip()} (1/{len(classes)} classes); major. = majority-class "
                    "rate of that variant's images; worst-grp = lowest accuracy over (class|background) groups "
                    f"with >= {result.get('group_min_count', '?')} images")
    if small:
        rows.append("! = 95% interval wider than 20 points: too few images to conclude from")
    sg = result.get("signal_groups")
    if sg:
        rows.append("signal groups (only_fg x only_bg_t): "
                    + ", ".join(f"{k} {v}" for k, v in sg["counts"].items()))
    amp = result.get("amp")
    if amp:
        ci = amp["ci95"] or [None, None]
        rows.append(f"amp ({amp['dtype']}): {amp['differ']} of {amp['checked']} re-checked predictions differ from fp32 "
                    f"({_pct(ci[0]).strip()}-{_pct(ci[1]).strip()} 95% interval of the rate); accuracies above are amp's")
    if result.get("overlap_with_training"):
        rows.append(f"warning: {result['overlap_with_training']} evaluated images were in the model's training set")
    if result.get("skipped"):
        rows.append(f"skipped {len(result['skipped'])} unreadable image(s); see 'skipped' in the JSON")
    return "\n".join(rows)
