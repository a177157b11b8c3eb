"""``bgbias build --task detection``: every background variant of a detection set, every box unchanged.

Layout (COCO tools read each variant folder directly)::

    OUT/<variant>/<split>/images/<id>.png
    OUT/<variant>/<split>/annotations.json   # COCO: same image ids, annotation ids, boxes, categories
    OUT/fg_mask/<split>/<id>.npy             # float32 union of the non-crowd instances
    OUT/manifest.json                        # written last

Variants: ``original``; the foreground (all instances) pasted on a background family of
:mod:`bgbias.synth.backgrounds` (``color:<c>``, ``mean``, ``mean_color``, ``texture:<name>[:p]``,
``photos:DIR``; crowd regions are not foreground, so they get the new background too);
``only_bg`` (every annotated box, crowds included, filled from the surrounding background by
push-pull inpainting, :func:`bgbias.detect.build_worker.remove_objects`; no ground truth);
``only_bg_b`` (every box blacked out; no ground truth); ``mixed_rand`` (the objects on the
``only_bg`` image of a partner drawn from ``(seed, id)`` among the split's other images,
resized to cover and centre-cropped). The pixels are mixed only by :func:`bgbias.core.compose.compose`.
A rerun skips images that exist, so a killed build resumes. ``workers``/``executor`` render
chunks of images in other processes (:mod:`bgbias.detect.build_worker`); the bytes stay the same.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bgbias.core.executors import check_executor, map_ordered
from bgbias.core.executors import progress as progress_bar
from bgbias.core.io import read_json, write_json
from bgbias.core.layout import MANIFEST, MASK_DIR, sanitize_name
from bgbias.core.sample import BadSample
from bgbias.core.version import __version__
from bgbias.detect.build_worker import image_task, init_worker, mixed_task, remove_objects
from bgbias.detect.data import CocoDetSource, DetSample, DetSource
from bgbias.synth.variants import Variant, create_variant, plan_pairing

KIND = "bgbias-detection-build/1"
NO_GT = ("only_bg", "only_bg_b")
SPECIAL = ("original", "only_bg", "only_bg_b", "mixed_rand")
REPORT000 = ("original", "color:red", "color:green", "color:blue", "color:black", "mean")
PRELOAD = "bgbias.detect.build_worker"
CHUNK = 16          # images per task: a few ms each, so tasks travel in chunks
__all__ = ["DetBuildConfig", "DetVariant", "build_detection", "open_build", "remove_objects",
           "resolve_detection_variants"]


@dataclass(frozen=True)
class DetBuildConfig:
    """Everything that decides the output bytes (saved in the manifest)."""

    variants: tuple[str, ...] = REPORT000 + ("only_bg", "mixed_rand")
    seed: int = 0


@dataclass(frozen=True)
class DetVariant:
    name: str
    dirname: str
    paste: Variant | None = None      # the background family for pasted variants

    @property
    def has_gt(self) -> bool:
        return self.name not in NO_GT


def resolve_detection_variants(names: Sequence[str] | str) -> list[DetVariant]:
    """Names -> variants; the classification-only recipes (Only-BG-T, No-FG, Mixed-Same/Next, ...) are refused."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise ValueError("No detection variants given; e.g. original,color:red,mean,only_bg,mixed_rand.")
    out: list[DetVariant] = []
    for n in dict.fromkeys(items):
        if n in SPECIAL:
            out.append(DetVariant(n, n))
            continue
        v = create_variant(n)
        if v.recipe != "paste" or v.pairing is not None:
            raise ValueError(f"Variant {n!r} has no detection form; valid: {', '.join(SPECIAL)}, color:<c>, mean, "
                             "mean_color, texture:<name>[:p], photos:DIR.")
        out.append(DetVariant(v.name, v.dirname, v))
    dirs = [v.dirname for v in out]
    if len(set(dirs)) != len(dirs) or MASK_DIR in dirs:
        raise ValueError(f"Detection variants {items} would share a folder.")
    return out


def _coco_json(variant: DetVariant, split: str, images: list[dict], anns: list[dict], categories: list[dict]) -> dict:
    return {"info": {"description": f"bgbias detection build, variant {variant.name}", "variant": variant.name,
                     "split": split, "bgbias": __version__},
            "images": images, "annotations": anns if variant.has_gt else [], "categories": categories}


def _chunks(items: list, size: int) -> list[list]:
    return [items[k:k + size] for k in range(0, len(items), size)]


def build_detection(source: DetSource, out: str | Path, config: DetBuildConfig = DetBuildConfig(),
                    progress: bool = False, workers: int = 1, executor: str = "local") -> dict:
    """Write every variant of ``source`` under ``out``; returns the manifest (also ``out/manifest.json``).

    ``workers`` processes (``executor`` local or ray, :mod:`bgbias.core.executors`) render chunks of
    images; results come back in image order, so the bytes written never depend on either.
    """
    check_executor(executor)
    out = Path(out)
    variants = resolve_detection_variants(config.variants)
    ids, splits = source.ids(), source.splits()
    for v in variants:
        if v.paste is not None and v.paste.needs_fit:
            v.paste.background.fit(_samples(source, range(len(source)), {}))
    state = {"source": source, "out": str(out), "variants": variants, "seed": config.seed}
    dropped: dict[str, str] = {}
    kept: list[int] = []
    info: dict[int, dict] = {}
    notes: dict[str, list[str]] = {}
    missing: dict[str, dict[str, str]] = {}
    tasks = _chunks(list(range(len(source))), CHUNK)
    results = map_ordered(image_task, tasks, initializer=init_worker, initargs=(state,), workers=workers,
                          executor=executor, preload=PRELOAD)
    for recs in progress_bar(results, len(tasks), "detection build", progress, unit="chunk"):
        for r in recs:
            i = r["index"]
            if "dropped" in r:
                dropped[ids[i]] = r["dropped"]
                continue
            kept.append(i)
            info[i] = r["info"]
            if r["notes"]:
                notes[r["id"]] = r["notes"]
            for name, reason in r["missing"].items():
                missing.setdefault(name, {})[ids[i]] = reason
    pairing: dict[str, str] = {}
    if any(v.name == "mixed_rand" for v in variants):
        pairing, miss = _mixed_rand(source, kept, config.seed, state, workers, executor, progress)
        missing.setdefault("mixed_rand", {}).update(miss)
    for v in variants:
        for split in sorted({splits[i] for i in kept}):
            rows = [i for i in kept if splits[i] == split and ids[i] not in missing.get(v.name, {})]
            images = [{k: info[i][k] for k in ("id", "file_name", "height", "width")} for i in rows]
            anns = [a for i in rows for a in info[i]["annotations"]]
            write_json(out / v.dirname / split / "annotations.json",
                       _coco_json(v, split, images, anns, source.categories))
    reasons: dict[str, int] = {}
    for r in dropped.values():
        key = r.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    manifest = {
        "kind": KIND, "task": "detection", "version": __version__, "config": {**asdict(config),
                                                                                "variants": list(config.variants)},
        "source": source.describe(), "categories": source.categories,
        "variants": [{"name": v.name, "dirname": v.dirname, "has_gt": v.has_gt,
                      **({"background": v.paste.background.describe()} if v.paste is not None else {})}
                     for v in variants],
        "counts": {"kept": len(kept), "dropped": len(dropped), "by_reason": reasons,
                   "per_split": {sp: sum(1 for i in kept if splits[i] == sp) for sp in sorted(set(splits))},
                   "annotations": sum(len(info[i]["annotations"]) for i in kept),
                   "missing_variant_images": sum(len(m) for m in missing.values())},
        "dropped": [{"id": k, "reason": r} for k, r in dropped.items()] + list(source.scan_dropped),
        "missing": missing, "pairing": {"mixed_rand": pairing} if pairing else {}, "notes": notes,
        "ids": {ids[i]: {"split": splits[i], "image_id": info[i]["id"]} for i in kept},
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def _samples(source: DetSource, indices, dropped: dict[str, str]):
    for i in indices:
        try:
            yield source.load(i).as_sample()
        except BadSample as e:
            dropped[source.ids()[i]] = e.reason


def _mixed_rand(source: DetSource, kept: list[int], seed: int, state: dict, workers: int, executor: str,
                progress: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Objects of each image on the ``only_bg`` image of a partner from the same split (plan here, pixels in workers)."""
    ids, splits = source.ids(), source.splits()
    plan, missing = {}, {}
    for split in sorted({splits[i] for i in kept}):
        rows = [i for i in kept if splits[i] == split]
        p, m = plan_pairing([ids[i] for i in rows], [0] * len(rows), 1, seed, "mixed_rand", "rand")
        plan.update(p)
        missing.update(m)
    index = {ids[i]: i for i in kept}
    tasks = _chunks([(i, index[plan[ids[i]]]) for i in kept if ids[i] in plan], CHUNK)
    results = map_ordered(mixed_task, tasks, initializer=init_worker, initargs=(state,), workers=workers,
                          executor=executor, preload=PRELOAD)
    for miss in progress_bar(results, len(tasks), "mixed_rand", progress, unit="chunk"):
        missing.update(dict(miss))
    return plan, missing


class BuildDetSource(CocoDetSource):
    """One variant of a detection build read back (masks from ``fg_mask``, never recomputed)."""

    def __init__(self, root: str | Path, variant: str = "original", split: str = "val"):
        root = Path(root)
        folder = root / sanitize_name(variant) / split
        if not (folder / "annotations.json").is_file():
            dirs = {v["name"]: v["dirname"] for v in read_json(root / MANIFEST).get("variants", [])} \
                if (root / MANIFEST).is_file() else {}
            if variant in dirs and (root / dirs[variant] / split / "annotations.json").is_file():
                folder = root / dirs[variant] / split
            else:
                raise FileNotFoundError(f"{root} has no detection variant {variant!r} with split {split!r} "
                                        f"(no {folder / 'annotations.json'}).")
        super().__init__(folder / "annotations.json", folder / "images", split=split)
        self.mask_root = root / MASK_DIR / split
        self.spec = f"build:{root}:{variant}:{split}"

    def load(self, i: int) -> DetSample:
        from bgbias.core.io import read_image

        image_id, im, anns = self._items[i]
        image = read_image(self.root / im["file"])
        mask_file = self.mask_root / f"{Path(im['file']).stem}.npy"
        mask = np.load(mask_file, allow_pickle=False) if mask_file.is_file() else None
        if mask is None:
            return super().load(i)
        h, w = image.shape[:2]
        crowd = np.zeros((h, w), bool)
        return DetSample(image, mask.astype(np.float32), crowd, self._ids[i], image_id, tuple(anns), self._splits[i])


def open_build(root: str | Path, variant: str = "original", split: str = "val") -> BuildDetSource:
    return BuildDetSource(root, variant, split)
