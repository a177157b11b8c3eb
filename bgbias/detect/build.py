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
push-pull inpainting, :func:`bgbias.train.augment.fill_foreground`; no ground truth);
``only_bg_b`` (every box blacked out; no ground truth); ``mixed_rand`` (the objects on the
``only_bg`` image of a partner drawn from ``(seed, id)`` among the split's other images,
resized to cover and centre-cropped). The pixels are mixed only by :func:`bgbias.core.compose.compose`.
A rerun skips images that exist, so a killed build resumes.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bgbias.core.compose import compose_np
from bgbias.core.executors import progress as progress_bar
from bgbias.core.io import read_json, write_json, write_npy, write_png
from bgbias.core.layout import MANIFEST, MASK_DIR, sanitize_name
from bgbias.core.sample import BadSample
from bgbias.core.version import __version__
from bgbias.detect.data import CocoDetSource, DetSample, DetSource
from bgbias.synth.backgrounds import box_mask, resize_crop
from bgbias.synth.variants import Variant, create_variant, plan_pairing, render_variants
from bgbias.train.augment import fill_foreground

KIND = "bgbias-detection-build/1"
NO_GT = ("only_bg", "only_bg_b")
SPECIAL = ("original", "only_bg", "only_bg_b", "mixed_rand")
REPORT000 = ("original", "color:red", "color:green", "color:blue", "color:black", "mean")


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


def remove_objects(sample: DetSample) -> np.ndarray:
    """uint8 HxWx3: every annotated box (crowds too) and any leftover mask pixel filled from the background."""
    h, w = sample.size
    region = box_mask((h, w), sample.boxes()) > 0
    region |= (sample.mask > 0) | sample.crowd
    if not region.any():
        return sample.image.copy()
    if region.all():
        raise BadSample("boxes cover the whole image (no background to fill Only-BG from)")
    x = torch.from_numpy(sample.image).permute(2, 0, 1)[None].float() / 255.0
    filled = fill_foreground(x, torch.from_numpy(region)[None, None].float())[0]
    out = filled.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return compose_np(out, sample.image, region)   # exactly the original outside the region


def _coco_json(variant: DetVariant, split: str, images: list[dict], anns: list[dict], categories: list[dict]) -> dict:
    return {"info": {"description": f"bgbias detection build, variant {variant.name}", "variant": variant.name,
                     "split": split, "bgbias": __version__},
            "images": images, "annotations": anns if variant.has_gt else [], "categories": categories}


def build_detection(source: DetSource, out: str | Path, config: DetBuildConfig = DetBuildConfig(),
                    progress: bool = False) -> dict:
    """Write every variant of ``source`` under ``out``; returns the manifest (also ``out/manifest.json``)."""
    out = Path(out)
    variants = resolve_detection_variants(config.variants)
    ids, splits = source.ids(), source.splits()
    for v in variants:
        if v.paste is not None and v.paste.needs_fit:
            v.paste.background.fit(_samples(source, range(len(source)), {}))
    dropped: dict[str, str] = {}
    kept: list[int] = []
    info: dict[int, dict] = {}
    notes: dict[str, list[str]] = {}
    missing: dict[str, dict[str, str]] = {}
    simple = [v for v in variants if v.name != "mixed_rand"]
    bar = progress_bar(range(len(source)), len(source), "detection build", progress, unit="img")
    for i in bar:
        try:
            s = source.load(i)
        except BadSample as e:
            dropped[ids[i]] = e.reason
            continue
        kept.append(i)
        info[i] = {"id": s.image_id, "file_name": f"{s.id}.png", "height": s.size[0], "width": s.size[1],
                   "annotations": [copy.deepcopy(a) for a in s.annotations]}
        if s.notes:
            notes[s.id] = list(s.notes)
        mask_path = out / MASK_DIR / s.split / f"{s.id}.npy"
        if not mask_path.exists():
            write_npy(mask_path, s.mask.astype(np.float32))
        todo = [v for v in simple if not (out / v.dirname / s.split / "images" / f"{s.id}.png").exists()]
        if not todo:
            continue
        pasted = render_variants(s.as_sample(), [v.paste for v in todo if v.paste is not None], config.seed) \
            if any(v.paste is not None for v in todo) else {}
        for v in todo:
            try:
                if v.name == "original":
                    img = s.image
                elif v.name == "only_bg":
                    img = remove_objects(s)
                elif v.name == "only_bg_b":
                    img = compose_np(np.zeros_like(s.image), s.image, box_mask(s.size, s.boxes()) > 0)
                else:
                    img = pasted[v.paste.name]
            except BadSample as e:
                missing.setdefault(v.name, {})[s.id] = e.reason
                continue
            write_png(out / v.dirname / s.split / "images" / f"{s.id}.png", img)
    pairing: dict[str, str] = {}
    if any(v.name == "mixed_rand" for v in variants):
        pairing, miss = _mixed_rand(source, out, kept, config.seed, progress)
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


def _mixed_rand(source: DetSource, out: Path, kept: list[int], seed: int, progress: bool
                ) -> tuple[dict[str, str], dict[str, str]]:
    """Objects of each image on the ``only_bg`` image of a partner from the same split."""
    ids, splits = source.ids(), source.splits()
    plan, missing = {}, {}
    for split in sorted({splits[i] for i in kept}):
        rows = [i for i in kept if splits[i] == split]
        p, m = plan_pairing([ids[i] for i in rows], [0] * len(rows), 1, seed, "mixed_rand", "rand")
        plan.update(p)
        missing.update(m)
    index = {ids[i]: i for i in kept}
    for i in progress_bar(kept, len(kept), "mixed_rand", progress, unit="img"):
        sid = ids[i]
        path = out / "mixed_rand" / splits[i] / "images" / f"{sid}.png"
        if sid not in plan or path.exists():
            continue
        s, partner = source.load(i), source.load(index[plan[sid]])
        try:
            bg = resize_crop(remove_objects(partner), s.size)
        except BadSample as e:
            missing[sid] = f"mixed_rand: partner {partner.id}: {e.reason}"
            continue
        write_png(path, compose_np(s.image, bg, s.mask))
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
