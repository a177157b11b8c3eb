"""``bgbias build``: write the IN-9 layout (every variant, masks, manifest) for any source.

Every sample goes to split ``train`` or ``val``: the source's own split where it has one
(MNIST train/t10k, IN-9 train/val, VOC image sets, COCO train/val files), else
``--holdout F`` (a stratified fraction of each class to ``val``, ranked by ``(seed, id)``),
else ``val`` (an audit-only benchmark). Mixed variants pair only within a split, and the
``mean`` background is fitted on ``train`` when there is one, so no validation pixel reaches training.

Three passes over a fixed chunk plan (so output bytes do not depend on the
worker count, the executor or the order chunks finish in):

0. fit: dataset statistics for ``mean``/``mean_color`` (per-chunk float64
   sums, reduced in chunk order), only when those variants are asked for;
1. samples: load, resize, check, write ``fg_mask`` and every variant that
   needs no partner; record which samples were kept and why others were dropped;
2. mixed: plan partners among kept samples from ``(seed, id, variant)``, then
   paste each foreground on its partner's Only-BG-T. Pass 1 leaves each
   chunk's originals and Only-BG-T backgrounds as raw pixels in one cache file
   per chunk (OUT/.bgbias-cache, removed at the end), so pass 2 reads them
   with one seek instead of decoding PNGs; samples finished by an earlier run
   have no cache entry and are read back from their PNGs (or recomputed).

Every file is written atomically and skipped when it exists, so a killed build
rerun with the same arguments completes only what is missing; the manifest is
written last. Memory is bounded by one chunk per worker.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from concurrent.futures.process import BrokenProcessPool

from bgbias.core.executors import WorkerCrashed, check_executor, map_ordered, run_isolated
from bgbias.core.executors import progress as progress_bar
from bgbias.core.io import OutputError, read_json, write_json
from bgbias.core.layout import IN9_VARIANTS, MANIFEST, MASK_DIR, SPLITS, class_dirname, sanitize_name
from bgbias.core.lock import LOCK_NAME, FolderLock
from bgbias.core.sample import Drop
from bgbias.core.version import __version__
from bgbias.sources.base import Source, create_source
from bgbias.synth.backgrounds import MeanBackground
from bgbias.synth.build_worker import (
    CACHE,
    _fit_task,
    _init_worker,
    _mixed_task,
    _sample_task,
    crash_record,
    split_task,
)
from bgbias.synth.spurious import DEFAULT_SPURIOUS_FAMILIES, SpuriousSource
from bgbias.synth.variants import Variant, plan_pairing, resolve_variants

IMAGE_FORMATS = {"jpeg": ".JPEG", "png": ".png"}   # jpeg: the release's extension, read by its official scripts
PARTIAL = ".bgbias-build.json"   # marks an unfinished build (config to compare on resume); removed at the end
PRELOAD = "bgbias.synth.build_worker"


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the output bytes (saved in the manifest). Workers/executor are not here: they never change the output."""

    variants: tuple[str, ...] = IN9_VARIANTS
    seed: int = 0
    size: tuple[int, int] | None = None          # (H, W): shorter side resized, then centre crop; None keeps each size
    spurious: float | None = None                # rho of a SpuriousSource wrapper; None = no wrapper
    spurious_families: tuple[str, ...] = DEFAULT_SPURIOUS_FAMILIES
    spurious_groups: str | None = None           # class groups tied to one family each ("0,1/2,3"); None = per class
    chunk_size: int = 64
    png_compression: int = 1
    holdout: float | None = None                 # fraction of each class to 'val' where the source has no split
    image_format: str = "png"                    # png (lossless) | jpeg (the IN-9 release's .JPEG files)
    mask_threshold: float | None = None          # binarise masks (m >= t) for every variant and fg_mask file

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"Unknown image format {self.image_format!r}; valid: {', '.join(IMAGE_FORMATS)}.")
        if self.mask_threshold is not None and not 0 < self.mask_threshold <= 1:
            raise ValueError(f"The mask threshold must be in (0, 1], got {self.mask_threshold}.")



def assign_splits(source: Source, holdout: float | None, seed: int) -> list[str]:
    """``train``/``val`` per sample: the source's own split, else a stratified ``holdout`` fraction of each class
    to ``val`` (the class's samples ranked by a draw from ``(seed, id)``), else ``val``. Cheap, in this process."""
    from bgbias.core.seeding import numpy_rng

    if holdout is not None and not 0.0 < float(holdout) < 1.0:
        raise ValueError(f"--holdout must be a fraction in (0, 1), e.g. 0.25, got {holdout}.")
    ids, labels = source.ids(), source.labels()
    own = source.splits() or [None] * len(ids)
    if len(own) != len(ids):
        raise ValueError(f"Source {source.spec!r} gave {len(own)} splits for {len(ids)} samples.")
    bad = sorted({s for s in own if s not in (None, *SPLITS)})
    if bad:
        raise ValueError(f"Source {source.spec!r} gave the split {bad[0]!r}; valid: {', '.join(SPLITS)} or None.")
    out = [s or "val" for s in own]
    if holdout:
        by_class: dict[int, list[int]] = {}
        for i, s in enumerate(own):
            if s is None:
                by_class.setdefault(int(labels[i]), []).append(i)
        for members in by_class.values():
            n = len(members)
            k = round(float(holdout) * n)
            if n >= 2:
                k = min(max(k, 1), n - 1)        # both splits see the class
            ranked = sorted(members, key=lambda i: (float(numpy_rng(seed, ids[i], "holdout").random()), ids[i]))
            for r, i in enumerate(ranked):
                out[i] = "val" if r < k else "train"
    return out


def parse_size(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"224x224"`` (HxW), ``"224"`` or ``"none"`` -> (H, W) or None."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("none", "")):
        return None
    if isinstance(text, str):
        parts = text.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"Size {text!r} is not HxW (e.g. 224x224), a single number, or 'none'.")
        hw = [int(p) for p in parts] * (2 // len(parts))
    else:
        hw = [int(v) for v in text]
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"Size {text!r} must be two positive integers (H, W).")
    return hw[0], hw[1]




def _map(fn: Callable, tasks: list, state: dict, workers: int, executor: str) -> Iterator:
    """``map_ordered`` that survives a worker dying (a segfault in a C decoder, the OOM killer).

    The pool breaks for every task in flight, so the first unfinished task is rerun alone in a
    fresh process; if it crashes again, each of its samples is, and a sample that still kills its
    process becomes a named ``worker_crash`` drop. Then the pool restarts on the remaining tasks.
    """
    done = 0
    while done < len(tasks):
        try:
            for res in map_ordered(fn, tasks[done:], initializer=_init_worker, initargs=(state,), workers=workers,
                                   executor=executor, preload=PRELOAD):
                done += 1
                yield res
            return
        except BrokenProcessPool:
            yield from _isolated(fn, tasks[done], state)
            done += 1


def _isolated(fn: Callable, task, state: dict) -> Iterator:
    """``task`` in its own process; on a crash, each of its samples in its own process."""
    try:
        yield run_isolated(fn, task, initializer=_init_worker, initargs=(state,), preload=PRELOAD)
        return
    except WorkerCrashed:
        pass
    for sub, i in split_task(fn, task):
        try:
            yield run_isolated(fn, sub, initializer=_init_worker, initargs=(state,), preload=PRELOAD)
        except WorkerCrashed as e:
            yield crash_record(fn, sub, i, state, e)


# ---------------------------------------------------------------- the library call

def _prepare_out(out: Path, identity: dict) -> None:
    """Refuse a folder holding something else; clean temp files of a killed run; mark the build as partial.

    The caller holds the folder's lock. A symlink at the cache folder is refused: the cache is
    deleted and rewritten, so following one would delete and write outside OUT.
    """
    identity = json.loads(json.dumps(identity, default=str))
    if (out / CACHE).is_symlink() or ((out / CACHE).exists() and not (out / CACHE).is_dir()):
        raise ValueError(f"{out / CACHE} is a symlink or a file, not the build's cache folder; "
                         "remove it (bgbias writes only inside the output folder).")
    previous = None
    for name in (PARTIAL, MANIFEST):
        if (out / name).is_file():
            prev = read_json(out / name)
            previous = {k: prev.get(k) for k in identity}
            break
    if previous is None and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise ValueError(f"Output folder {out} is not empty and holds no bgbias build; choose an empty or new folder.")
    if previous is not None and previous != identity:
        diff = sorted(k for k in identity if previous.get(k) != identity[k])
        raise ValueError(f"Output folder {out} holds a build with a different {', '.join(diff)}; "
                         "rerun with the same arguments to resume, or choose a new folder.")
    shutil.rmtree(out / CACHE, ignore_errors=True)
    for root, _, files in os.walk(out):
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                os.unlink(os.path.join(root, f))
    write_json(out / PARTIAL, identity)


def build(source: Source | str, out: str | os.PathLike, config: BuildConfig = BuildConfig(), *,
          workers: int = 1, executor: str = "local", progress: bool = True) -> dict:
    """Build every variant of ``source`` into ``out`` (IN-9 layout) and return the manifest.

    Output bytes depend only on the source and ``config``; ``workers`` and
    ``executor`` only change the speed. Reruns skip files that exist.
    """
    check_executor(executor)
    source = create_source(source) if isinstance(source, str) else source
    if config.spurious is not None:
        # train at rho, val group-balanced, when there is a split (the source's own, or --holdout);
        # a build without one is a correlated set throughout
        real = config.holdout or source.splits() is not None
        source = SpuriousSource(source, config.spurious, config.spurious_families, config.seed,
                                class_groups=config.spurious_groups,
                                splits=assign_splits(source, config.holdout, config.seed) if real else None)
    variants = resolve_variants(config.variants)
    out = Path(out)
    ids = source.ids()
    n = len(ids)
    if n == 0:
        raise ValueError(f"Source {source.spec!r} has no images.")
    bad = next((i for i in ids if sanitize_name(i) != i), None)
    if bad is not None or len(set(ids)) != n:
        raise ValueError(f"Source {source.spec!r} gave an unsafe or duplicate sample id {bad!r}; "
                         "ids must be unique and equal to layout.sanitize_name(id).")
    cfg_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    cfg_dict["variants"] = [v.name for v in variants]
    identity = {"tool": "bgbias", "version": __version__, "source": source.describe(), "config": cfg_dict}
    if out.exists() and not out.is_dir():
        raise ValueError(f"Output {out} exists and is not a folder.")
    with FolderLock(out, "bgbias build"):
        _prepare_out(out, identity)
        return _build(source, out, config, variants, identity, workers, executor, progress)


def _build(source: Source, out: Path, config: BuildConfig, variants: list[Variant], identity: dict,
           workers: int, executor: str, progress: bool) -> dict:
    classes, ids, labels = list(source.classes), source.ids(), source.labels()
    n, C = len(ids), len(classes)
    class_dirs = [class_dirname(c, name, C) for c, name in enumerate(classes)]
    splits = assign_splits(source, config.holdout, config.seed)
    state = {"source": source, "variants": variants, "config": config, "out": out.resolve(), "ids": ids,
             "labels": labels, "splits": splits, "class_dirs": class_dirs,
             "written": {v.name for v in variants if not v.pairing}, "fit_size": config.size,
             "run": uuid.uuid4().hex[:12]}
    cs = max(1, int(config.chunk_size))
    chunks = [list(range(a, min(n, a + cs))) for a in range(0, n, cs)]

    fitted = [v for v in variants if v.needs_fit]
    if fitted:   # statistics from the training split when there is one: no validation pixel reaches training
        fit_on = [i for i in range(n) if splits[i] == "train"] or list(range(n))
        fit_chunks = [fit_on[a:a + cs] for a in range(0, len(fit_on), cs)]
        if state["fit_size"] is None:
            state["fit_size"] = _first_size(source, config)
        bg = MeanBackground(True, state["fit_size"])
        for res in progress_bar(_map(_fit_task, fit_chunks, state, workers, executor), len(fit_chunks), "fit mean",
                                progress):
            if res is not None:   # None: a sample that crashed its worker (dropped by the samples pass)
                bg.add_sums(res["sums"])
        if bg.mean_image is None:
            raise ValueError(f"No usable sample in {source.spec!r} to fit the mean background on.")
        for v in fitted:
            v.background.fit_size = state["fit_size"]
            v.background.add_sums((bg.sum_rgb, bg.sum_w))

    dropped: list[dict] = []
    for d in source.scan_dropped:
        drop = Drop.from_reason(d["reason"], d.get("rule"), d.get("values") or {"file": d.get("path", d.get("id"))})
        dropped.append({"id": d.get("id", d.get("path")), **drop.to_dict(), "stage": "scan"})
    kept: list[int] = []
    tasks = [{"chunk": c, "k": k} for k, c in enumerate(chunks)]
    cache: dict[int, tuple] = {}
    for recs in progress_bar(_map(_sample_task, tasks, state, workers, executor), len(tasks), "samples", progress):
        for r in recs:
            if "reason" in r:
                dropped.append({k: r[k] for k in ("id", "rule", "reason", "values", "stage")})
            else:
                kept.append(r["i"])
                if "cache" in r:
                    cache[r["i"]] = r["cache"]

    pairing: dict[str, dict[str, str]] = {}
    partners: dict[str, dict[str, int]] = {}
    pos = {ids[i]: i for i in kept}
    warnings_: list[str] = []
    for v in (v for v in variants if v.pairing):
        pairing[v.name] = {}
        if v.pairing == "next" and C == 1:   # class (y + 1) mod 1 is y itself: images would pair with themselves
            dropped += [{"id": ids[i], "rule": "no_partner", "stage": "variant", "variant": v.name,
                         "reason": f"no_partner: {v.name}: the source has one class, so there is no next class to "
                                   "take a background from", "values": {"classes": 1}} for i in kept]
            warnings_.append(f"{v.name} is empty: the source has one class, so no image has a next-class background.")
            partners[v.name] = {}
            continue
        for split in SPLITS:                      # partners only from the same split
            mine = [i for i in kept if splits[i] == split]
            plan, missing = plan_pairing([ids[i] for i in mine], [labels[i] for i in mine], C, config.seed,
                                         v.name, v.pairing)
            pairing[v.name].update(plan)
            dropped += [{"id": sid, "rule": "no_partner", "reason": f"no_partner: {why} in the {split} split",
                         "values": {"split": split}, "stage": "variant", "variant": v.name}
                        for sid, why in missing.items()]
        partners[v.name] = {f: pos[b] for f, b in pairing[v.name].items()}
    if partners:
        kchunks = [kept[a:a + cs] for a in range(0, len(kept), cs)]
        tasks = []
        for c in kchunks:
            mine = {name: {ids[i]: p[ids[i]] for i in c if ids[i] in p} for name, p in partners.items()}
            used = set(c).union(*(m.values() for m in mine.values()))
            tasks.append({"chunk": c, "partners": mine, "cache": {i: cache[i] for i in used if i in cache}})
        for recs in progress_bar(_map(_mixed_task, tasks, state, workers, executor), len(tasks), "mixed", progress):
            for r in recs:
                dropped.append({k: r[k] for k in ("id", "rule", "reason", "values", "stage", "variant")})
                for name in r["variant"].split(","):
                    pairing[name].pop(r["id"], None)

    empty = _empty_classes(out, variants, kept, labels, splits, class_dirs, classes)
    if empty:
        warnings_.append(f"{len(empty)} class(es) kept no image ({', '.join(empty)}); their folders are empty.")
    manifest = _manifest(identity, variants, kept, ids, labels, splits, class_dirs, classes, pairing, dropped)
    manifest["empty_classes"], manifest["warnings"] = empty, warnings_
    for w in warnings_:
        warnings.warn(w, BuildWarning, stacklevel=3)
    shutil.rmtree(out / CACHE, ignore_errors=True)
    write_json(out / MANIFEST, manifest)
    (out / PARTIAL).unlink(missing_ok=True)
    _fail_loudly(manifest, source.spec, out)
    return manifest


MASK_HINT = ("give masks with --masks DIR (the same relative paths as the images, .png or .npy) or compute them "
             "with --masks-from grabcut")


def _fail_loudly(manifest: dict, spec: str, out: Path) -> None:
    """No image kept: one clear error with the top reason and a hint; more than half dropped: a warning."""
    c, top = manifest["counts"], manifest["drop_summary"][:1]
    if not top:
        return
    rule, count, example = top[0]["rule"], top[0]["count"], top[0]["example"]
    why = f"{count} for {rule} (e.g. {example})"
    if c["kept"] == 0:
        hint = MASK_HINT if rule in ("no_mask", "mask_missing", "mask_empty", "mask_unreadable", "mask_size") \
            else "see the reasons in " + str(out / MANIFEST)
        raise ValueError(f"The build of {spec!r} kept 0 of {c['total']} images: {why}; {hint}.")
    if c["dropped"] * 2 > c["total"]:
        warnings.warn(f"{c['dropped']} of {c['total']} images were dropped, most {why}; "
                      f"the benchmark holds only {c['kept']}.", stacklevel=3)


class BuildWarning(UserWarning):
    """A build that completed but whose output lacks something a user may expect (also in ``manifest['warnings']``)."""


def _empty_classes(out: Path, variants: list[Variant], kept: list[int], labels: list[int], splits: list[str],
                   class_dirs: list[str], classes: list[str]) -> list[str]:
    """Create the folders of classes with no kept image (in every split the build has), so class folders stay
    numbered 0..C-1 everywhere; their names."""
    have = {labels[i] for i in kept}
    empty = [c for c in range(len(classes)) if c not in have]
    try:
        for c in empty:
            for split in sorted(set(splits)) or ["val"]:
                for d in [v.dirname for v in variants] + [MASK_DIR]:
                    (out / d / split / class_dirs[c]).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError.of(out, e) from None
    return [classes[c] for c in empty]


def _first_size(source: Source, config: BuildConfig) -> tuple[int, int]:
    """Fit size for ``mean`` when images keep their own size: the first loadable sample's size."""
    for i in range(len(source)):
        try:
            return source.load(i).size
        except Exception:
            continue
    raise ValueError(f"No loadable sample in {source.spec!r}.")


def _manifest(identity: dict, variants: list[Variant], kept: list[int], ids: list[str], labels: list[int],
              splits: list[str], class_dirs: list[str], classes: list[str], pairing: dict, dropped: list[dict]) -> dict:
    by_rule: dict[str, list[dict]] = {}
    dropped = sorted(dropped, key=lambda d: (d["stage"], str(d["id"]), d.get("variant", "")))
    for d in dropped:
        by_rule.setdefault(d["rule"], []).append(d)
    summary = sorted(({"rule": r, "count": len(ds), "example": f"{ds[0]['id']}: {ds[0]['reason']}"}
                      for r, ds in by_rule.items()), key=lambda x: (-x["count"], x["rule"]))
    per_split = {sp: sum(1 for i in kept if splits[i] == sp) for sp in SPLITS}
    return {**identity, "seed": identity["config"]["seed"], "classes": classes,
            "variants": {v.name: {**v.describe(), "count": len(pairing[v.name]) if v.pairing else len(kept)}
                         for v in variants},
            "samples": [{"id": ids[i], "label": labels[i], "class_dir": class_dirs[labels[i]], "split": splits[i]}
                        for i in kept],
            "splits": {sp: k for sp, k in per_split.items() if k},
            "split_of": dict(zip(ids, splits)),
            "pairing": {k: dict(sorted(p.items())) for k, p in pairing.items()},
            "dropped": dropped,
            "drop_summary": summary,
            "counts": {"total": len(ids), "kept": len(kept),
                       "dropped": sum(1 for d in dropped if "variant" not in d),
                       "missing_variant_images": sum(1 for d in dropped if "variant" in d),
                       "by_reason": {r: len(ds) for r, ds in sorted(by_rule.items())}}}
