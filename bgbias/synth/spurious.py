"""Spurious builds: a background shortcut of known strength, Waterbirds-style (Sagawa et al.).

Classes (or groups of classes, ``class_groups``) are tied to a background family each: in the
``train`` split a sample sits on its class's family with probability ``rho``, else on a uniformly
chosen other family; in every other split (``val``, ``test``) the families are *group-balanced*:
each class sees every family equally often (as in Waterbirds' val/test). A family is any background
that needs neither dataset statistics nor the sample itself: colours, textures, or a folder of scene
photos (``photos:LAND_DIR``). All choices come from ``(seed, sample id)`` and the per-sample split,
so they are fixed before any decoding and recorded per sample in the manifest.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bgbias.core.sample import BadSample
from bgbias.core.seeding import derive_seed, numpy_rng
from bgbias.sources.base import Source

DEFAULT_SPURIOUS_FAMILIES = ("texture:stripes", "texture:board", "texture:border", "texture:circles",
                             "texture:clock", "texture:noise", "color:red", "color:green", "color:blue",
                             "color:yellow")
CORRELATED_SPLITS = ("train",)   # splits at correlation rho; every other named split is group-balanced


def parse_families(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"photos:LAND,photos:WATER"`` or a list -> family names (default: :data:`DEFAULT_SPURIOUS_FAMILIES`)."""
    if text is None:
        return DEFAULT_SPURIOUS_FAMILIES
    parts = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(p.strip() for p in parts if p and p.strip())
    return out or DEFAULT_SPURIOUS_FAMILIES


def parse_class_groups(text: str | Sequence[Sequence[int | str]] | None,
                       classes: Sequence[str]) -> list[list[int]] | None:
    """``"0,1,2/3,4"`` (class indices or names, groups split by ``/``) -> class indices per group.

    Every class must be in exactly one group; group k is tied to family k.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    raw = [g.split(",") for g in text.split("/")] if isinstance(text, str) else [list(g) for g in text]
    names = {str(c): k for k, c in enumerate(classes)}
    groups: list[list[int]] = []
    for g in raw:
        idx = []
        for c in (str(x).strip() for x in g):
            if not c:
                continue
            if c in names:
                idx.append(names[c])
            elif c.isdigit() and int(c) < len(classes):
                idx.append(int(c))
            else:
                raise ValueError(f"Spurious group member {c!r} is neither a class name nor an index below "
                                 f"{len(classes)}; classes: {', '.join(map(str, classes))}.")
        if idx:
            groups.append(idx)
    flat = [c for g in groups for c in g]
    dup = sorted({c for c in flat if flat.count(c) > 1})
    missing = [str(classes[c]) for c in range(len(classes)) if c not in flat]
    if dup or missing:
        what = f"class {classes[dup[0]]!r} is in two groups" if dup else f"classes {', '.join(missing)} are in no group"
        raise ValueError(f"Spurious groups {text!r} must hold every class exactly once: {what}.")
    if len(groups) < 2:
        raise ValueError(f"Spurious groups {text!r} need at least 2 groups, got {len(groups)}.")
    return groups


class SpuriousSource(Source):
    """A dataset with a background shortcut of known strength ``rho`` (train) and group-balanced other splits.

    ``families[k]`` is the background of class group ``k`` (``class_groups``; default: class ``c`` is its
    own group, on ``families[c % len(families)]``). ``splits``: the split of each sample (default: the
    base source's own, when it has one); ``"train"`` or no split -> correlated at ``rho``, any other
    split -> balanced (within each class, the families in turn, in an order drawn from the seed).
    The image is re-composited with :func:`bgbias.core.compose.compose_np`.
    """

    def __init__(self, base: Source, rho: float = 0.9, families: Sequence[str] | None = None, seed: int = 0,
                 class_groups: Sequence[Sequence[int | str]] | str | None = None,
                 splits: Sequence[str | None] | None = None):
        super().__init__()
        from bgbias.synth.backgrounds import create_background

        families = list(parse_families(families))
        if not 0.0 <= float(rho) <= 1.0:
            raise ValueError(f"Spurious rho must be a probability in [0, 1], got {rho}.")
        if len(set(families)) < 2:
            raise ValueError(f"Spurious backgrounds need at least 2 different families, got {families}.")
        self.backgrounds = {f: create_background(f) for f in dict.fromkeys(families)}
        for f, b in self.backgrounds.items():
            if b.needs_fit or b.needs_sample:
                raise ValueError(f"Spurious family {f!r} needs a dataset or the sample itself; "
                                 "use colours, textures or photos.")
        self.base, self.rho, self.families, self.seed = base, float(rho), families, int(seed)
        self.classes, self._ids, self._labels = base.classes, base.ids(), base.labels()
        self.class_groups = parse_class_groups(class_groups, self.classes)
        if self.class_groups is not None and len(self.class_groups) > len(families):
            raise ValueError(f"{len(self.class_groups)} spurious class groups need as many families, "
                             f"got {len(families)}: {', '.join(families)}.")
        self._group_of = {c: k for k, g in enumerate(self.class_groups or []) for c in g}
        if splits is None:
            own = getattr(base, "splits", None)
            splits = own() if callable(own) else None
        if splits is not None and len(splits) != len(self._ids):
            raise ValueError(f"Got {len(splits)} splits for the {len(self._ids)} samples of {base.spec!r}.")
        self._splits = list(splits) if splits is not None else [None] * len(self._ids)
        self.spec = f"{base.spec} (spurious rho={self.rho:g})"
        self.scan_dropped = base.scan_dropped
        self._family = self._plan()

    def splits(self) -> list[str | None] | None:
        own = getattr(self.base, "splits", None)
        return own() if callable(own) else None

    def class_family(self, c: int) -> str:
        """The family class ``c`` sits on at correlation ``rho``."""
        if self.class_groups is not None:
            return self.families[self._group_of[c]]
        return self.families[c % len(self.families)]

    def correlated(self, i: int) -> bool:
        """Whether sample ``i`` is drawn at correlation ``rho`` (train or no split) or group-balanced."""
        return self._splits[i] is None or self._splits[i] in CORRELATED_SPLITS

    def _choose(self, sample_id: str, label: int) -> str:
        rng = numpy_rng(self.seed, sample_id, "spurious")
        own = self.class_family(label)
        if rng.random() < self.rho:
            return own
        others = [f for f in dict.fromkeys(self.families) if f != own]
        return others[int(rng.integers(len(others)))]

    def _plan(self) -> list[str]:
        """Correlated samples draw from ``(seed, id)``; balanced ones take the families in turn per (split, class),
        in an order of ids keyed by ``(seed, id)``, starting at a family drawn from ``(seed, split, class)``."""
        fams = list(dict.fromkeys(self.families))
        out: list[str] = [""] * len(self._ids)
        cells: dict[tuple[str, int], list[int]] = {}
        for i, (sid, y) in enumerate(zip(self._ids, self._labels)):
            if self.correlated(i):
                out[i] = self._choose(sid, y)
            else:
                cells.setdefault((str(self._splits[i]), int(y)), []).append(i)
        for (split, y), rows in sorted(cells.items()):
            rows.sort(key=lambda i: (derive_seed(self.seed, self._ids[i], "balanced"), self._ids[i]))
            start = int(numpy_rng(self.seed, split, y, "balanced").integers(len(fams)))
            for k, i in enumerate(rows):
                out[i] = fams[(start + k) % len(fams)]
        return out

    def family_of(self, i: int) -> str:
        return self._family[i]

    def load(self, i):
        from bgbias.core.compose import compose_np
        from bgbias.core.seeding import torch_generator

        s = self.base.load(i)
        if s.mask is None:
            raise BadSample("spurious backgrounds need a foreground mask; this sample has none", s.id)
        fam = self._family[i]
        bg = self.backgrounds[fam].for_sample(s, generator=torch_generator(self.seed, s.id, "spurious", fam))
        return s.with_(image=compose_np(s.image, bg, s.mask))

    def group_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"<class>|<family>": count}}`` (split ``"all"`` when samples have none)."""
        out: dict[str, dict[str, int]] = {}
        for i, (y, f) in enumerate(zip(self._labels, self._family)):
            cell = out.setdefault(str(self._splits[i] or "all"), {})
            key = f"{self.classes[y]}|{f}"
            cell[key] = cell.get(key, 0) + 1
        return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}

    def describe(self):
        on = [f == self.class_family(c) for f, c in zip(self._family, self._labels)]
        by_split: dict[str, list[bool]] = {}
        for i, o in enumerate(on):
            by_split.setdefault(str(self._splits[i] or "all"), []).append(o)
        return {**self.base.describe(), "spec": self.spec, "spurious": {
            "rho": self.rho, "seed": self.seed, "families": self.families,
            "class_groups": ([[self.classes[c] for c in g] for g in self.class_groups]
                             if self.class_groups is not None else None),
            "correlated_splits": list(CORRELATED_SPLITS),
            "per_class": {name: self.class_family(c) for c, name in enumerate(self.classes)},
            "per_sample": dict(zip(self._ids, self._family)),
            "on_class_family": round(float(np.mean(on)), 6) if on else None,
            "on_class_family_by_split": {s: round(float(np.mean(v)), 6) for s, v in sorted(by_split.items())},
            "group_counts": self.group_counts()}}
