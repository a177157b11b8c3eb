"""masked: split from the former bgbias.masks.methods."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from bgbias.core.boxes import BoxRules
from bgbias.core.sample import BadSample, Sample, check_mask_usable
from bgbias.masks.cache import MaskCache
from bgbias.masks.methods import MaskMethod, create_mask_method
from bgbias.sources.base import Source


class MaskedSource(Source):
    """A source whose samples get masks from ``method`` (after box lookup and the box rules).

    ``fill_only``: keep masks the base source already has (e.g. VOC segmentation PNGs) and
    compute the rest. Same contract as ``bgbias.sources.base.Source``.
    """

    def __init__(self, base: Any, method: MaskMethod, rules: BoxRules = BoxRules(),
                 boxes: Any = None, cache: MaskCache | None = None,
                 fill_only: bool = False):
        super().__init__()
        self.base, self.method, self.rules, self.box_table = base, method, rules, boxes
        self.cache, self.fill_only = cache, fill_only
        self.spec, self.classes = base.spec, base.classes
        self.scan_dropped = list(getattr(base, "scan_dropped", []))

    def __len__(self) -> int:
        return len(self.base)

    def ids(self) -> list[str]:
        return self.base.ids()

    def labels(self) -> list[int]:
        return self.base.labels()

    def splits(self) -> list[str | None] | None:
        return self.base.splits()

    def mask_method(self, i: int) -> str:
        """Which method makes item ``i``'s mask (``given`` where ``fill_only`` and the source has one)."""
        has = getattr(self.base, "has_mask", None)
        return "given" if self.fill_only and has is not None and has(i) else self.method.name

    def load(self, i: int) -> Sample:
        result = self.load_many([i])[0]
        if isinstance(result, BadSample):
            raise result
        return result

    def load_many(self, indices: list[int]) -> list[Sample | BadSample]:
        """Items ``indices`` with their masks (or the BadSample each raised); the uncached masks in one
        ``method.masks`` call, so a network method runs them as batches."""
        out: list[Sample | BadSample | None] = [None] * len(indices)
        todo: list[tuple[int, Sample, str | None]] = []
        for k, i in enumerate(indices):
            try:
                sample = self.base.load(i)
                if self.box_table is not None:
                    sample = sample.with_(boxes=self.box_table.lookup(sample))
                sample = self.rules.apply(sample)
            except BadSample as e:
                out[k] = e
                continue
            if self.fill_only and sample.mask is not None:
                out[k] = sample
                continue
            key = MaskCache.key(self.spec, sample, self.method) if self.cache else None
            result = self.cache.get(key) if self.cache else None
            if result is None:
                todo.append((k, sample, key))
            else:
                out[k] = result if isinstance(result, BadSample) else sample.with_(mask=result)
        for (k, sample, key), result in zip(todo, self.method.masks([s for _, s, _ in todo]) if todo else []):
            if not isinstance(result, BadSample):
                try:
                    check_mask_usable(result)
                except BadSample as e:
                    result = e
            if isinstance(result, BadSample):
                result = BadSample(_rule_reason(result.reason, self.method.name))
            if self.cache:
                self.cache.put(key, result)
            out[k] = result if isinstance(result, BadSample) else sample.with_(mask=result)
        return out  # type: ignore[return-value]

    def describe(self) -> dict:
        return {**self.base.describe(), "masks": {
            "method": self.method.name, "params": self.method.params(), "fill_only": self.fill_only,
            "rules": asdict(self.rules), "boxes_file": self.box_table is not None,
            "cache": str(self.cache.root) if self.cache else None}}


def _rule_reason(reason: str, method: str) -> str:
    """Give every mask-stage drop a rule name: ``mask_empty`` / ``mask_full`` / the method's own rule."""
    if ":" in reason.split(" ")[0]:
        return reason
    rule = "mask_empty" if "empty" in reason else "mask_full" if "whole image" in reason else method
    return f"{rule}: {method} gave a {reason}" if rule != method else f"{method}: {reason}"


def with_masks(source: Any, method: str | MaskMethod = "grabcut", *, rules: BoxRules | None = None,
               box_mode: str | None = None, crop_rules: bool | None = None,
               boxes: str | os.PathLike | dict | None = None, cache: Any = True, fill_only: bool = False,
               **params: Any) -> MaskedSource:
    """Wrap ``source`` so every sample has a mask from ``method`` (``params`` go to the method).

    ``boxes``: a JSON file ``{id: [[x0, y0, x1, y1], ...]}`` (x1/y1 exclusive), a folder of
    VOC XML files, or such a dict. ``cache``: True (default folder), a folder, or False/None.
    """
    rules = rules or BoxRules()
    if box_mode is not None or crop_rules is not None:
        rules = BoxRules(box_mode or rules.box_mode, rules.crop_rules if crop_rules is None else crop_rules)
    if boxes is not None:
        from bgbias.core.boxes import BoxTable, load_boxes
        boxes = BoxTable(boxes, "the given boxes") if isinstance(boxes, dict) else load_boxes(boxes)
    if cache is True or isinstance(cache, (str, os.PathLike)):
        cache = MaskCache(None if cache is True else cache)
    return MaskedSource(source, create_mask_method(method, **params), rules, boxes, cache or None, fill_only)
