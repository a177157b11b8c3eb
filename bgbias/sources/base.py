"""Sources: where labelled images come from. The :class:`Source` contract, the ``SOURCES`` registry, wrappers.

A :class:`Source` indexes its data cheaply (``ids()``, ``labels()``, ``splits()``, no
decoding) and decodes one :class:`~bgbias.core.sample.Sample` per ``load(i)``,
raising :class:`~bgbias.core.sample.BadSample` for bad input. Files that are not
images at all are found while indexing and listed in ``scan_dropped``.
Wrappers here: :class:`SubsetSource` and :class:`SpuriousSource`. The families are
plugins the registry imports on first use: the built-in readers (``digits``, ``mnist:DIR``,
``folder:DIR``, ``in9:DIR``) in :mod:`bgbias.sources.readers`, the annotation formats in
:mod:`bgbias.sources.annotated`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable

from bgbias.core.layout import sanitize_name
from bgbias.core.registry import Registry
from bgbias.core.sample import Sample

# The families register themselves when the registry first needs them.
SOURCES: Registry = Registry("source", plugins=("bgbias.sources.readers", "bgbias.sources.annotated",
                                                "bgbias.sources.coco"))


class IndexedSource(ABC):
    """What every source shares: a cheap index of ids (no decoding), one item per ``load(i)``, named skips.

    :class:`Source` (labelled images) and the detection sources (``bgbias.detect.data.DetSource``, images
    with every box) build on it. Subclasses set ``spec`` and ``_ids``; ``vocabulary()`` says what their
    labels name (``classes`` or ``categories``) for ``describe()``.
    """

    spec: str = ""
    _ids: list[str]

    def __init__(self) -> None:
        self.scan_dropped: list[dict] = []

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """Stable, unique, filesystem-safe ids (cheap: no decoding)."""
        return list(self._ids)

    @abstractmethod
    def load(self, i: int):
        """Decode item ``i``; raises BadSample with a reason for a file that cannot be used."""

    def vocabulary(self) -> dict:
        """What the labels name, for ``describe()`` (``{"classes": [...]}`` or ``{"categories": [...]}``)."""
        return {}

    def describe(self) -> dict:
        """JSON-able summary for manifests."""
        return {"spec": self.spec, "type": type(self).__name__, "n": len(self), **self.vocabulary(),
                "scan_dropped": len(self.scan_dropped)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, n={len(self)})"


class Source(IndexedSource):
    """Indexed labelled images. Subclasses set ``spec``, ``classes``, ``_ids``, ``_labels``."""

    classes: list[str] = []
    _labels: list[int]

    def labels(self) -> list[int]:
        """Class index per sample (cheap: no decoding)."""
        return list(self._labels)

    def splits(self) -> list[str | None] | None:
        """The source's own split per sample (``"train"`` / ``"val"``; ``None`` where it has none), cheap.

        ``None`` (the default) means the source has no split of its own: ``build --holdout F``
        makes one, else every sample is ``val``. A build keeps a source's own split as it is.
        """
        return None

    @abstractmethod
    def load(self, i: int) -> Sample:
        """Decode sample ``i``; raises BadSample with a reason for a file that cannot be used."""

    def vocabulary(self) -> dict:
        return {"classes": list(self.classes)}


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

    def splits(self):
        own = self.base.splits()
        return None if own is None else [own[i] for i in self.indices]

    def describe(self):
        import hashlib

        digest = hashlib.sha1("\n".join(self._ids).encode()).hexdigest()[:16]
        return {**self.base.describe(), "n": len(self), "subset_of": len(self.base), "ids_sha1": digest}


def create_source(spec: str, **kwargs) -> Source:
    """``digits``, ``digits:64``, ``mnist:DIR``, ``folder:DIR`` (``masks=DIR``), ``in9:DIR``."""
    import inspect
    import os

    if isinstance(spec, str) and spec.partition(":")[0] not in SOURCES and os.path.isdir(spec):
        kind = "in9" if os.path.isdir(os.path.join(spec, "original")) else "folder"
        raise ValueError(f"Source {spec!r} is a folder, not a source spec; did you mean '{kind}:{spec}'?")
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
