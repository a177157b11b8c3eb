"""bgbias: how much does an image model rely on the background, and how do you make it stop?

Build background-bias benchmarks (the ImageNet-9 variants of Xiao et al.) from any labelled images,
audit any classifier on them (accuracy per variant, BG-gap, the backgrounds challenge, saliency),
and train models that ignore backgrounds (background augmentation, Mixed-Rand, adversarial
backgrounds of Cruz & Cardoso). The CLI (``bgbias --help``) is a thin shell over these calls.

Benchmarks
    build(source, out, variants="in9", ...)      write every variant, masks and a manifest
    list_sources(pattern), create_source(spec)   where images come from: digits, mnist:DIR, folder:DIR, in9:DIR, voc:, coco:
    list_variants(pattern), create_variant(name) original, only_bg_t, mixed_rand, color:red, texture:stripes, ...
    list_backgrounds(pattern), create_background(spec)
Audits (model: spec string or nn.Module; data: a build folder or the IN-9 release; return a Result)
    evaluate(model, data, ...)                   accuracy per variant with intervals, BG-gap
    challenge(model, data, ...)                  the backgrounds challenge (exact worst case over a pool)
    saliency(model, data, ...)                   attribution share on the foreground
Mitigation
    train(recipe, data, out, ...)                baseline, bg_augment, mixed_rand, adversarial, ...
    BackgroundSwap(families, p, seed)            the augmentation as a torchvision v2 transform
    compose(fg, bg, mask)                        the one kernel that mixes pixels: m*fg + (1-m)*bg
Reporting
    report(results, out)                         one self-contained HTML page + results.json
    Result                                       .to_dict(), .save(path), r["key"]

Example (runs as written; a few seconds on a CPU):

    >>> import bgbias, torch
    >>> m = bgbias.build("digits", "/tmp/bgbias-example", variants="original,only_bg_t,mixed_same,mixed_rand")
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))
    >>> r = bgbias.evaluate(net, data="/tmp/bgbias-example")
    >>> sorted(r["variants"])
    ['mixed_rand', 'mixed_same', 'only_bg_t', 'original']
"""
from __future__ import annotations

import importlib
from typing import Any

from bgbias.core.version import __version__

# name -> module that defines it; imported on first use so ``import bgbias`` stays light (no torch).
_API = {
    "build": "bgbias.api", "evaluate": "bgbias.api", "challenge": "bgbias.api", "saliency": "bgbias.api",
    "train": "bgbias.api", "report": "bgbias.api", "Result": "bgbias.api",
    "create_source": "bgbias.sources.base", "list_sources": "bgbias.sources.base",
    "create_variant": "bgbias.synth.variants", "list_variants": "bgbias.synth.variants",
    "create_background": "bgbias.synth.backgrounds", "list_backgrounds": "bgbias.synth.backgrounds",
    "BackgroundSwap": "bgbias.train.augment", "compose": "bgbias.core.compose",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bgbias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
