"""Spurious builds: a background shortcut of known strength, Waterbirds-style (Sagawa et al.).

Classes (or groups of classes, ``class_groups``, which then *are* the classes: digits 0-4 -> ``low``,
5-9 -> ``high``, as Waterbirds' landbird/waterbird) are tied to a background family each: in the
``train`` split a sample sits on its class's family with probability ``rho``, else on a uniformly
chosen other family; in every other split (``val``, ``test``) the families are *group-balanced*:
each class sees every family equally often (as in Waterbirds' val/test). A family is any background
that needs neither dataset statistics nor the sample itself: colours, textures, or a folder of scene
photos (``photos:LAND_DIR``). All choices come from ``(seed, sample id)`` and the per-sample split,
so they are fixed before any decoding and recorded per sample in the manifest.
"""
from __future__ import annotations

from typing import Mapping, Sequence

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


GROUP_NAME_FORBIDDEN = ("|", "/", ",", "=")   # "|" splits eval's group keys; the others split the option


def parse_named_groups(text: str | Sequence[Sequence[int | str]] | Mapping[str, Sequence[int | str]] | None,
                       classes: Sequence[str]) -> list[tuple[str, list[int]]] | None:
    """``"low=0,1,2,3,4/high=5,6,7,8,9"`` (class indices or names, groups split by ``/``, ``NAME=`` optional) or a
    ``{name: members}`` mapping or a list of member lists -> ``[(group class name, class indices)]``.

    Every class must be in exactly one group; group k is tied to family k and becomes class k of the build
    (Waterbirds: landbird/waterbird). An unnamed group is named by its members joined with ``+``.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, str):
        raw = [g.partition("=") if "=" in g else ("", "", g) for g in text.split("/")]
        raw = [(n.strip(), m.split(",")) for n, _, m in raw]
    elif isinstance(text, Mapping):
        raw = [(str(n), list(m)) for n, m in text.items()]
    else:
        raw = [("", list(g)) for g in text]
    index = {str(c): k for k, c in enumerate(classes)}
    named: list[tuple[str, list[int]]] = []
    for name, members in raw:
        idx = []
        for c in (str(x).strip() for x in members):
            if not c:
                continue
            if c in index:
                idx.append(index[c])
            elif c.isdigit() and int(c) < len(classes):
                idx.append(int(c))
            else:
                raise ValueError(f"Spurious group member {c!r} is neither a class name nor an index below "
                                 f"{len(classes)}; classes: {', '.join(map(str, classes))}.")
        if idx:
            named.append((name or "+".join(str(classes[c]) for c in idx), idx))
    flat = [c for _, g in named for c in g]
    dup = sorted({c for c in flat if flat.count(c) > 1})
    missing = [str(classes[c]) for c in range(len(classes)) if c not in flat]
    if dup or missing:
        what = f"class {classes[dup[0]]!r} is in two groups" if dup else f"classes {', '.join(missing)} are in no group"
        raise ValueError(f"Spurious groups {text!r} must hold every class exactly once: {what}.")
    if len(named) < 2:
        raise ValueError(f"Spurious groups {text!r} need at least 2 groups, got {len(named)}.")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"Spurious group names must be unique; got {', '.join(names)}.")
    bad = next((n for n in names if any(ch in n for ch in GROUP_NAME_FORBIDDEN)), None)
    if bad is not None:
        raise ValueError(f"Spurious group name {bad!r} may not contain any of {' '.join(GROUP_NAME_FORBIDDEN)}.")
    return named


def parse_class_groups(text: str | Sequence[Sequence[int | str]] | Mapping[str, Sequence[int | str]] | None,
                       classes: Sequence[str]) -> list[list[int]] | None:
    """The class indices of each group of :func:`parse_named_groups` (names dropped)."""
    named = parse_named_groups(text, classes)
    return None if named is None else [g for _, g in named]


class SpuriousSource(Source):
    """A dataset with a background shortcut of known strength ``rho`` (train) and group-balanced other splits.

    ``families[k]`` is the background of class group ``k`` (``class_groups``; default: class ``c`` is its
    own group, on ``families[c % len(families)]``); with groups, each sample is relabelled to its group, whose
    names are the classes (the base class stays in ``describe()``). ``splits``: the split of each sample (default: the
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
        self.base_classes, self._ids, self._base_labels = list(base.classes), base.ids(), base.labels()
        named = parse_named_groups(class_groups, self.base_classes)
        self.class_groups = None if named is None else [g for _, g in named]
        if self.class_groups is not None and len(self.class_groups) > len(families):
            raise ValueError(f"{len(self.class_groups)} spurious class groups need as many families, "
                             f"got {len(families)}: {', '.join(families)}.")
        self._group_of = {c: k for k, g in enumerate(self.class_groups or []) for c in g}
        # the groups are the classes: relabel every sample to its group (Waterbirds' landbird/waterbird)
        self.classes = self.base_classes if named is None else [n for n, _ in named]
        self._labels = (list(self._base_labels) if named is None
                        else [self._group_of[int(y)] for y in self._base_labels])
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
        """The family class ``c`` (of :attr:`classes`, a group when grouped) sits on at correlation ``rho``."""
        return self.families[c % len(self.families)]

    def _base_family(self, y: int) -> str:
        """The family base class ``y`` (before relabelling) sits on at correlation ``rho``."""
        return self.class_family(self._group_of[y] if self.class_groups is not None else y)

    def correlated(self, i: int) -> bool:
        """Whether sample ``i`` is drawn at correlation ``rho`` (train or no split) or group-balanced."""
        return self._splits[i] is None or self._splits[i] in CORRELATED_SPLITS

    def _choose(self, sample_id: str, label: int) -> str:
        rng = numpy_rng(self.seed, sample_id, "spurious")
        own = self._base_family(label)
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
        for i, (sid, y) in enumerate(zip(self._ids, self._base_labels)):   # balanced per base class: finer
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
        return s.with_(image=compose_np(s.image, bg, s.mask), label=self._labels[i])

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
        return {**self.base.describe(), "spec": self.spec, "classes": list(self.classes), "spurious": {
            "rho": self.rho, "seed": self.seed, "families": self.families,
            "class_groups": ([[self.base_classes[c] for c in g] for g in self.class_groups]
                             if self.class_groups is not None else None),
            "base_classes": self.base_classes,
            "relabel": ({name: self.classes[self._group_of[c]] for c, name in enumerate(self.base_classes)}
                        if self.class_groups is not None else None),
            "per_sample_base_class": ({sid: self.base_classes[y] for sid, y in zip(self._ids, self._base_labels)}
                                      if self.class_groups is not None else None),
            "correlated_splits": list(CORRELATED_SPLITS),
            "per_class": {name: self.class_family(c) for c, name in enumerate(self.classes)},
            "per_sample": dict(zip(self._ids, self._family)),
            "on_class_family": round(float(np.mean(on)), 6) if on else None,
            "on_class_family_by_split": {s: round(float(np.mean(v)), 6) for s, v in sorted(by_split.items())},
            "group_counts": self.group_counts()}}
