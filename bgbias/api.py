"""The verbs of the public API: ``build``, ``evaluate``, ``challenge``, ``saliency``, ``train``, ``report``.

Each verb is one call over the stage that does the work, with keyword options
named like the CLI's (``--batch-size`` -> ``batch_size``), so the CLI and
Python are the same tool. The audit verbs take the model as a spec string
(``checkpoint:run/model.pt``, ``torchvision:resnet18``, ...) or as any
``nn.Module`` that maps a float batch ``[N, 3, H, W]`` to logits, and return a
:class:`Result`; they write nothing unless asked (``Result.save(path)``).
``build``, ``train`` and ``report`` write the folder or file they are given.

    >>> import bgbias
    >>> bgbias.build("digits", "bench-digits", variants="original,only_bg_t,mixed_same,mixed_rand")  # doctest: +SKIP
    >>> r = bgbias.evaluate("checkpoint:runs/base/model.pt", data="bench-digits")                    # doctest: +SKIP
    >>> r["bg_gap"]["value"], r.save("eval.json")                                                    # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Result", "build", "evaluate", "challenge", "saliency", "train", "report"]


@dataclass
class Result:
    """A result document (``eval.json``, ``challenge.json``, ``saliency.json``, ``metrics.json``, a manifest).

    Index it like the dict it wraps (``r["variants"]["original"]["accuracy"]``);
    ``to_dict()`` gives a plain dict, ``save(path)`` writes it atomically as JSON.
    """

    kind: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def keys(self):
        return self.data.keys()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON (the same bytes the CLI writes) and return its path."""
        from bgbias.core.io import write_json

        write_json(Path(path), self.data)
        return Path(path)

    def __repr__(self) -> str:
        return f"Result({self.kind!r}, keys={sorted(self.data)})"


def _split(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def _config(cls: type, fixed: dict[str, Any], options: dict[str, Any]) -> Any:
    """``cls(**fixed, **options)`` with one sentence for an option the verb does not have."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; options: "
                        f"{', '.join(sorted(names - set(fixed)))}.")
    kw = {k: v for k, v in {**fixed, **options}.items() if k in names}
    for key in ("variants", "methods", "families", "spurious_families"):
        if key in kw and isinstance(kw[key], str):
            kw[key] = _split(kw[key])
    return cls(**kw)


def _model(model: Any) -> tuple[str, Any]:
    """(spec for the result JSON, LoadedModel or None): a module is wrapped, a string is loaded by the audit."""
    if isinstance(model, (str, os.PathLike)):
        return str(model), None
    import torch

    from bgbias.models.load import LoadedModel

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a spec string or a torch.nn.Module, got {type(model).__name__}.")
    spec = f"python:{type(model).__module__}.{type(model).__qualname__}"
    return spec, LoadedModel(model.eval(), spec)


def build(source: Any, out: str | os.PathLike, *, variants: str | Sequence[str] = "in9", seed: int = 0,
          size: str | tuple[int, int] | None = None, workers: int = 1, executor: str = "local",
          progress: bool = False, **options: Any) -> Result:
    """Write the benchmark of ``source`` (a spec such as ``"digits"`` / ``"folder:DIR"``, or a Source) into ``out``.

    ``variants``: ``"in9"`` (the 8 IN-9 variants), ``"all"``, or names (``"original,color:red"``);
    other options are :class:`bgbias.synth.build.BuildConfig` fields. Returns the manifest.

        >>> m = bgbias.build("digits", "bench-digits", variants="original,mixed_rand")   # doctest: +SKIP
        >>> m["counts"]["kept"]                                                           # doctest: +SKIP
    """
    from bgbias.synth.build import BuildConfig, build as _build, parse_size
    from bgbias.synth.variants import resolve_variants

    names = tuple(v.name for v in resolve_variants(variants)) if isinstance(variants, str) else tuple(variants)
    cfg = _config(BuildConfig, {"variants": names, "seed": seed,
                                "size": parse_size(size) if isinstance(size, str) else size}, options)
    return Result("manifest", _build(source, out, cfg, workers=workers, executor=executor, progress=progress))


def evaluate(model: Any, data: str | os.PathLike, *, variants: str | Sequence[str] | None = None,
             progress: bool = False, **options: Any) -> Result:
    """Accuracy per variant with 95% intervals, BG-gap and signal groups (``eval.json``).

    ``model``: a spec (``checkpoint:FILE``, ``torchvision:resnet18`` + ``weights=``, ``torchscript:FILE``,
    ``module:pkg.mod:fn``) or an ``nn.Module`` taking normalised ``[N, 3, H, W]`` floats. ``data``: a build
    folder or the IN-9 release. Options: :class:`bgbias.audit.evaluate.EvalConfig` fields (``mean``, ``std``,
    ``size``, ``label_map``, ``device``, ``batch_size``, ...).

        >>> r = bgbias.evaluate(my_module, data="bench-digits", mean=(0.5,) * 3, std=(0.5,) * 3)  # doctest: +SKIP
        >>> r["variants"]["original"]["accuracy"]                                                 # doctest: +SKIP
    """
    from bgbias.audit.evaluate import EvalConfig, evaluate as _evaluate

    spec, loaded = _model(model)
    cfg = _config(EvalConfig, {"model": spec, "data": str(data), "variants": _split(variants),
                               "progress": progress}, options)
    return Result("eval", _evaluate(cfg, loaded=loaded))


def challenge(model: Any, data: str | os.PathLike, *, state: str | os.PathLike | None = None,
              progress: bool = False, **options: Any) -> Result:
    """The backgrounds challenge (``challenge.json``): the share of foregrounds no background of the pool fools.

    Exact (the exhaustive search's answer). Pass ``state=PATH`` to save and resume the search; otherwise
    nothing is written. Options: :class:`bgbias.audit.challenge.ChallengeConfig` fields.

        >>> r = bgbias.challenge("checkpoint:runs/base/model.pt", data="bench-digits")   # doctest: +SKIP
        >>> r["challenge_accuracy"]                                                       # doctest: +SKIP
    """
    from bgbias.audit.challenge import ChallengeConfig, run_challenge

    spec, loaded = _model(model)
    cfg = _config(ChallengeConfig, {"model": spec, "data": str(data), "progress": progress,
                                    "state": None if state is None else str(state)}, options)
    return Result("challenge", run_challenge(cfg, out=None, loaded=loaded))


def saliency(model: Any, data: str | os.PathLike, *, overlays_next_to: str | os.PathLike | None = None,
             progress: bool = False, **options: Any) -> Result:
    """Share of the attribution on the foreground per variant (``saliency.json``).

    Overlay PNGs are written only with ``overlays_next_to=PATH`` (the JSON path the overlays go beside, as the
    CLI's ``--out``). Options: :class:`bgbias.audit.saliency.SaliencyConfig` fields (``methods``, ``layer``, ...).

        >>> r = bgbias.saliency(my_module, data="bench-digits", methods="gradient")   # doctest: +SKIP
    """
    from bgbias.audit.saliency import SaliencyConfig, run_saliency

    spec, loaded = _model(model)
    fixed = {"model": spec, "data": str(data), "progress": progress}
    if overlays_next_to is None:
        fixed["overlays"] = 0
    cfg = _config(SaliencyConfig, fixed, {k: v for k, v in options.items()
                                          if not (k == "overlays" and overlays_next_to is None)})
    out = Path(overlays_next_to) if overlays_next_to is not None else Path(os.devnull)
    return Result("saliency", run_saliency(cfg, out=out, loaded=loaded))


def train(recipe: str, data: str | os.PathLike, out: str | os.PathLike, *, progress: bool = False,
          **options: Any) -> Result:
    """Train with a mitigation recipe into the run folder ``out`` (``model.pt``, ``last.pt``, ``metrics.json``).

    ``recipe``: ``baseline``, ``bg_augment``, ``mixed_rand``, ``adversarial``, ... (``bgbias list recipes``);
    ``data``: a build folder or a source spec. Options: :class:`bgbias.train.config.TrainConfig` fields.
    Returns the metrics; audit the model with ``evaluate(f"checkpoint:{out}/model.pt", ...)``.

        >>> m = bgbias.train("mixed_rand", "bench-digits", "runs/mr", epochs=3)   # doctest: +SKIP
    """
    from bgbias.train.config import TrainConfig
    from bgbias.train.loop import train as _train

    cfg = _config(TrainConfig, {"recipe": recipe, "data": str(data), "out": str(out)}, options)
    return Result("train", _train(cfg, progress=progress))


def report(results: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike = "report.html",
           **options: Any) -> Path:
    """Write one self-contained HTML page (and ``results.json`` beside it) from result JSON files.

        >>> bgbias.report(["eval.json", "challenge.json"], "report.html")   # doctest: +SKIP
    """
    from bgbias.report.write import write_report

    paths = [results] if isinstance(results, (str, os.PathLike)) else list(results)
    write_report(paths, out, **options)
    return Path(out)

