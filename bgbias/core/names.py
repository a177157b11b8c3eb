"""Variant names, one vocabulary: the canonical name (``color:red``, ``texture:stripes:8``, ``mixed_rand``) keys
every result JSON; the folder (``color_red``) is only where the images lie.

A build's ``manifest.json`` records both for each variant (``variants`` entries with ``name`` and ``dirname``);
a folder without a manifest (the official IN-9 release) has folders named as the canonical names already.
The one "seen in training" rule lives here too, so that audits and the report (which never imports torch)
decide it alike.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

# training families that put another image's background behind the object: they mark every mixed_* variant
MIXED_FAMILIES = frozenset({"mixed", "mixed_rand", "mixed_same", "mixed_next", "other_sample", "other",
                            "rand", "same", "next"})


def variant_names(manifest: Mapping[str, Any] | None) -> dict[str, str]:
    """``{folder: canonical name}`` from a build manifest (``{}`` without one: folders are the names).

    Reads both manifest shapes: classification (``variants`` a dict by name) and detection (a list).
    """
    entries = (manifest or {}).get("variants") or {}
    if isinstance(entries, Mapping):
        entries = [{"name": k, **v} if isinstance(v, Mapping) else {"name": k} for k, v in entries.items()]
    out: dict[str, str] = {}
    for e in entries:
        if isinstance(e, Mapping) and e.get("name") is not None:
            out[str(e.get("dirname", e["name"]))] = str(e["name"])
    return out


def seen_in_training(variant: str, families: Sequence[str] | None) -> bool | None:
    """Whether a training background family produced this variant's kind of image (None when unknown).

    ``variant`` is a canonical name. A family marks itself and its parameterised names (``color`` marks
    ``color:red``, ``texture:stripes`` marks ``texture:stripes:8``; ``mean`` marks ``mean`` only, not
    ``mean_color``); another image's background (``mixed_rand``, ``other_sample``) marks every ``mixed_*``.
    """
    if families is None:
        return None
    for fam in map(str, families):
        if fam in MIXED_FAMILIES and variant.startswith("mixed_"):
            return True
        if variant == fam or variant.startswith(fam + ":"):
            return True
    return False
