"""Groups and reference levels: the numbers that say how bad the worst case is and what a rate is worth.

A *group* is a (true class, background) cell, as in Waterbirds (Sagawa et al.): the background is the
family a spurious build put behind the sample (``original``, ``only_bg_*``, ``no_fg`` keep it), the
family of a colour / texture / photo / mean variant, or, for the mixed variants, the class of the image
the background came from (the manifest's pairing). Keys are ``"<class>|<background>"``.

Worst-group accuracy is the lowest accuracy over groups with at least ``min_count`` samples (smaller
groups are reported, not eligible); ``weighted_accuracy`` weights each group's accuracy by its share of
the *training* set (DFR's definition), ``mean_group_accuracy`` is the plain mean. Reference levels:
chance = 1/C, majority = the majority-class rate of the data scored, and a figure whose 95% interval is
wider than :data:`TOO_WIDE` is flagged ``too_small``. No torch here (the report and the loop share it).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

TOO_WIDE = 0.20                        # a 95% interval wider than 20 points is too small to conclude from
DEFAULT_MIN_COUNT = 10                 # groups with fewer samples are not eligible for "worst"
KEEPS_OWN_BACKGROUND = {"original", "box_black", "box_tiled", "mask_black"}   # variant recipes (variants.py)
SEP = "|"


# ------------------------------------------------------------------------------------- reference levels
def too_small(ci: Sequence[float] | None) -> bool | None:
    """True when the 95% interval is wider than :data:`TOO_WIDE` (None without an interval)."""
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return bool(ci[1] - ci[0] > TOO_WIDE + 1e-12)


def reference_levels(labels: Sequence[int] | np.ndarray, num_classes: int,
                     ci: Sequence[float] | None = None) -> dict[str, Any]:
    """``{"chance": 1/C, "majority": majority-class rate of labels, "too_small": interval wider than 20 points}``."""
    labels = np.asarray(labels, dtype=np.int64)
    majority = float(np.bincount(labels).max() / len(labels)) if len(labels) else None
    return {"chance": 1.0 / num_classes if num_classes else None, "majority": majority, "too_small": too_small(ci)}


def wilson_ci(k: int, n: int, z: float = 1.959964) -> list[float] | None:
    """Wilson score 95% interval of k successes in n (for rates with no per-sample bootstrap)."""
    if n <= 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [float(max(0.0, c - h)), float(min(1.0, c + h))]


# ------------------------------------------------------------------------------------- groups from a build
def group_key(class_name: str, background: str) -> str:
    return f"{class_name}{SEP}{background}"


def _variant_entry(manifest: Mapping, variant: str) -> dict | None:
    for name, v in (manifest.get("variants") or {}).items():
        if variant in (name, v.get("dirname")):
            return {"name": name, **v}
    return None


def spurious_families(manifest: Mapping) -> dict[str, str] | None:
    """``{sample id: background family}`` of a spurious build (None otherwise)."""
    sp = (manifest.get("source") or {}).get("spurious")
    return dict(sp["per_sample"]) if sp and sp.get("per_sample") else None


def sample_backgrounds(manifest: Mapping | None, variant: str) -> dict[str, str] | None:
    """``{sample id: background}`` for one variant (name or folder) of a build, or None when it records none.

    Mixed variants: the class of the partner image (from ``pairing``); colour, texture, photo and mean
    variants: the variant's family; variants that keep the sample's own background: its spurious family.
    """
    if not manifest:
        return None
    entry = _variant_entry(manifest, variant)
    if entry is None:
        return None
    classes = list(manifest.get("classes") or [])
    if entry.get("pairing"):
        label = {s["id"]: int(s["label"]) for s in manifest.get("samples", [])}
        plan = (manifest.get("pairing") or {}).get(entry["name"], {})
        return {fg: classes[label[bg]] for fg, bg in plan.items() if bg in label}
    if entry.get("recipe") == "paste":
        ids = [s["id"] for s in manifest.get("samples", [])]
        return dict.fromkeys(ids, entry["name"])
    if entry.get("recipe") in KEEPS_OWN_BACKGROUND:
        return spurious_families(manifest)
    return None


def sample_groups(manifest: Mapping | None, variant: str) -> dict[str, str] | None:
    """``{sample id: "<class>|<background>"}`` for one variant of a build (None when it records no backgrounds)."""
    bgs = sample_backgrounds(manifest, variant)
    if bgs is None:
        return None
    classes = list(manifest.get("classes") or [])
    label = {s["id"]: int(s["label"]) for s in manifest.get("samples", [])}
    return {sid: group_key(classes[label[sid]], bg) for sid, bg in bgs.items() if sid in label}


def training_groups(manifest: Mapping | None, variant: str) -> dict[str, str] | None:
    """Groups of a training build's samples: the spurious family when the build records one (the same
    cells ``eval`` scores, whatever variant a recipe reads), else the groups of the variant read."""
    return sample_groups(manifest, "original") or sample_groups(manifest, variant)


# ------------------------------------------------------------------------------------- group accuracy
def group_accuracy(keys: Sequence[str], correct: np.ndarray, *, min_count: int = DEFAULT_MIN_COUNT,
                   train_counts: Mapping[str, int] | None = None, rng: np.random.Generator | None = None,
                   n_boot: int = 1000) -> dict[str, Any]:
    """Worst-group, mean-group and training-weighted accuracy of per-sample ``correct`` flags.

    ``weighted_accuracy`` = sum_g share_train(g) * acc(g) over the groups scored here, shares renormalised
    over them; None without ``train_counts`` or when none of the scored groups occurs in training.
    ``ci95`` (of the worst-group accuracy): percentile bootstrap interval of the worst group's accuracy,
    resampling within that group (the minimum over resampled groups would sit below the estimate: with many
    small groups the minimum of noisy accuracies is biased low, which ``too_small`` and ``n`` already say).
    """
    correct = np.asarray(correct, dtype=np.float64)
    if len(keys) != len(correct):
        raise ValueError(f"Got {len(keys)} group keys for {len(correct)} predictions.")
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    per_group = {k: {"accuracy": float(correct[ix].mean()), "n": len(ix), "eligible": len(ix) >= min_count}
                 for k, ix in sorted(members.items())}
    eligible = [k for k, g in per_group.items() if g["eligible"]]
    out: dict[str, Any] = {"n_groups": len(per_group), "min_count": int(min_count), "eligible": len(eligible),
                           "worst_group": None, "worst_group_accuracy": None, "ci95": None,
                           "mean_group_accuracy": None, "weighted_accuracy": None, "weighted_by": None,
                           "per_group": per_group}
    if per_group:
        out["mean_group_accuracy"] = float(np.mean([g["accuracy"] for g in per_group.values()]))
    if eligible:
        worst = min(eligible, key=lambda k: (per_group[k]["accuracy"], k))
        out["worst_group"], out["worst_group_accuracy"] = worst, per_group[worst]["accuracy"]
        if rng is not None and n_boot > 0:
            v = correct[members[worst]]
            lo, hi = np.quantile(v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1), [0.025, 0.975])
            out["ci95"] = [float(lo), float(hi)]
        out["too_small"] = too_small(out["ci95"])
    if train_counts:
        shares = {k: float(train_counts.get(k, 0)) for k in per_group}
        total = sum(shares.values())
        if total > 0:
            out["weighted_accuracy"] = float(sum(shares[k] * per_group[k]["accuracy"] for k in per_group) / total)
            out["weighted_by"] = "training"
    return out


def group_counts(keys: Sequence[str]) -> dict[str, int]:
    """``{group: count}``, sorted (what ``bgbias train`` records in the checkpoint as ``group_counts``)."""
    return dict(sorted(Counter(keys).items()))


def split_key(key: str) -> tuple[str, str]:
    """``"<class>|<background>"`` -> (class, background); the background may itself contain ``|``-free colons."""
    c, _, b = key.partition(SEP)
    return c, b
