"""spurious: split from the former bgbias.sources.base."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bgbias.core.sample import BadSample
from bgbias.core.seeding import numpy_rng
from bgbias.sources.base import Source

DEFAULT_SPURIOUS_FAMILIES = ("texture:stripes", "texture:board", "texture:border", "texture:circles",
                             "texture:clock", "texture:noise", "color:red", "color:green", "color:blue",
                             "color:yellow")


class SpuriousSource(Source):
    """A training set with a background shortcut of known strength ``rho``.

    Class ``c`` is put on background family ``families[c % len(families)]``
    with probability ``rho``, else on a uniformly chosen other family; the
    image is re-composited with :func:`bgbias.core.compose.compose`. Choices come
    from ``(seed, sample id)``, so they are fixed before any decoding.
    """

    def __init__(self, base: Source, rho: float = 0.9, families: Sequence[str] | None = None, seed: int = 0):
        super().__init__()
        from bgbias.synth.backgrounds import create_background

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

    def splits(self):
        return self.base.splits()

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

    def describe(self):
        return {**self.base.describe(), "spec": self.spec, "spurious": {
            "rho": self.rho, "seed": self.seed, "families": self.families,
            "per_class": {name: self.class_family(c) for c, name in enumerate(self.classes)},
            "per_sample": dict(zip(self._ids, self._family)),
            "on_class_family": round(float(np.mean([f == self.class_family(c) for f, c in
                                                    zip(self._family, self._labels)])), 6) if self._ids else None}}
