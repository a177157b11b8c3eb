"""Sources: where labelled images come from. The :class:`Source` contract, the ``SOURCES`` registry, wrappers.

A :class:`Source` indexes its data cheaply (``ids()``, ``labels()``, no
decoding) and decodes one :class:`~bgbias.sample.Sample` per ``load(i)``,
raising :class:`~bgbias.sample.BadSample` for bad input. Files that are not
images at all are found while indexing and listed in ``scan_dropped``.
Wrappers here: :class:`SubsetSource` and :class:`SpuriousSource`. The families are
plugins the registry imports on first use: the built-in readers (``digits``, ``mnist:DIR``,
``folder:DIR``, ``in9:DIR``) in :mod:`bgbias.sources_readers`, the annotation formats in
:mod:`bgbias.annotations`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import importlib.util
from typing import Iterable, Sequence

import numpy as np

from .layout import sanitize_name
from .registry import Registry
from .sample import BadSample, Sample
from .seeding import numpy_rng

_PLUGINS = ("bgbias.sources_readers",) + tuple(
    m for m in ("bgbias.annotations",) if importlib.util.find_spec(m) is not None)
SOURCES: Registry = Registry("source", plugins=_PLUGINS)


class Source(ABC):
    """Base class: indexed labelled images. Subclasses set ``spec``, ``classes``, ``_ids``, ``_labels``."""

    spec: str = ""
    classes: list[str] = []
    _ids: list[str]
    _labels: list[int]

    def __init__(self) -> None:
        self.scan_dropped: list[dict] = []

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """Stable, unique, filesystem-safe ids (cheap: no decoding)."""
        return list(self._ids)

    def labels(self) -> list[int]:
        """Class index per sample (cheap: no decoding)."""
        return list(self._labels)

    @abstractmethod
    def load(self, i: int) -> Sample:
        """Decode sample ``i``; raises BadSample with a reason for a file that cannot be used."""

    def describe(self) -> dict:
        """JSON-able summary for manifests."""
        return {"spec": self.spec, "type": type(self).__name__, "n": len(self), "classes": list(self.classes),
                "scan_dropped": len(self.scan_dropped)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, n={len(self)})"


def unique_ids(raw: Iterable[str]) -> list[str]:
    """Sanitise names into ids; later duplicates get ``_2``, ``_3``, ... (deterministic in input order)."""
    out: list[str] = []
    seen: set[str] = set()
    for r in raw:
        base = sanitize_name(r)
        cand, k = base, 2
        while cand in seen:
            cand, k = f"{base}_{k}", k + 1
        seen.add(cand)
        out.append(cand)
    return out


# ---------------------------------------------------------------- wrappers

class SubsetSource(Source):
    """The samples ``indices`` of ``base`` (e.g. a quick run or a train/test split), same classes and ids."""

    def __init__(self, base: Source, indices: Iterable[int]):
        super().__init__()
        self.base, self.indices = base, [int(i) for i in indices]
        ids, labels = base.ids(), base.labels()
        self.spec, self.classes = base.spec, base.classes
        self._ids = [ids[i] for i in self.indices]
        self._labels = [labels[i] for i in self.indices]

    def load(self, i):
        return self.base.load(self.indices[i])

    def describe(self):
        import hashlib

        digest = hashlib.sha1("\n".join(self._ids).encode()).hexdigest()[:16]
        return {**self.base.describe(), "n": len(self), "subset_of": len(self.base), "ids_sha1": digest}


# ---------------------------------------------------------------- spurious correlations

DEFAULT_SPURIOUS_FAMILIES = ("texture:stripes", "texture:board", "texture:border", "texture:circles",
                             "texture:clock", "texture:noise", "color:red", "color:green", "color:blue",
                             "color:yellow")


class SpuriousSource(Source):
    """A training set with a background shortcut of known strength ``rho``.

    Class ``c`` is put on background family ``families[c % len(families)]``
    with probability ``rho``, else on a uniformly chosen other family; the
    image is re-composited with :func:`bgbias.compose.compose`. Choices come
    from ``(seed, sample id)``, so they are fixed before any decoding.
    """

    def __init__(self, base: Source, rho: float = 0.9, families: Sequence[str] | None = None, seed: int = 0):
        super().__init__()
        from .backgrounds import create_background

        families = list(families or DEFAULT_SPURIOUS_FAMILIES)
        if not 0.0 <= float(rho) <= 1.0:
            raise ValueError(f"Spurious rho must be a probability in [0, 1], got {rho}.")
        if len(families) < 2:
            raise ValueError(f"Spurious backgrounds need at least 2 families, got {families}.")
        self.backgrounds = {f: create_background(f) for f in dict.fromkeys(families)}
        for f, b in self.backgrounds.items():
            if b.needs_fit or b.needs_sample:
                raise ValueError(f"Spurious family {f!r} needs a dataset or the sample itself; "
                                 "use colours, textures or photos.")
        self.base, self.rho, self.families, self.seed = base, float(rho), families, int(seed)
        self.spec = f"{base.spec} (spurious rho={self.rho:g})"
        self.classes, self._ids, self._labels = base.classes, base.ids(), base.labels()
        self.scan_dropped = base.scan_dropped
        self._family = [self._choose(i, c) for i, c in zip(self._ids, self._labels)]

    def class_family(self, c: int) -> str:
        return self.families[c % len(self.families)]

    def _choose(self, sample_id: str, label: int) -> str:
        rng = numpy_rng(self.seed, sample_id, "spurious")
        own = self.class_family(label)
        if rng.random() < self.rho:
            return own
        others = [f for f in dict.fromkeys(self.families) if f != own]
        return others[int(rng.integers(len(others)))]

    def family_of(self, i: int) -> str:
        return self._family[i]

    def load(self, i):
        from .compose import compose_np
        from .seeding import torch_generator

        s = self.base.load(i)
        if s.mask is None:
            raise BadSample("spurious backgrounds need a foreground mask; this sample has none", s.id)
        fam = self._family[i]
        bg = self.backgrounds[fam].for_sample(s, generator=torch_generator(self.seed, s.id, "spurious", fam))
        return s.with_(image=compose_np(s.image, bg, s.mask))

    def describe(self):
        return {**self.base.describe(), "spec": self.spec, "spurious": {
            "rho": self.rho, "seed": self.seed, "families": self.families,
            "per_class": {name: self.class_family(c) for c, name in enumerate(self.classes)},
            "per_sample": dict(zip(self._ids, self._family)),
            "on_class_family": round(float(np.mean([f == self.class_family(c) for f, c in
                                                    zip(self._family, self._labels)])), 6) if self._ids else None}}


# ---------------------------------------------------------------- registry

def create_source(spec: str, **kwargs) -> Source:
    """``digits``, ``digits:64``, ``mnist:DIR``, ``folder:DIR`` (``masks=DIR``), ``in9:DIR``."""
    import inspect

    family = SOURCES.parse(spec).family
    params = inspect.signature(SOURCES.entry(family).factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        extra = sorted(k for k, v in kwargs.items() if v is not None and k not in params)
        if extra:
            raise ValueError(f"Source {family!r} does not take option(s) {', '.join(extra)}; "
                             f"valid: {', '.join(params) or 'none'}.")
    src = SOURCES.create(spec, **kwargs)
    src.spec = spec
    return src


def list_sources(pattern: str = "*") -> list[str]:
    return SOURCES.names(pattern)
