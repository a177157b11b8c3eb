"""The variant registry: named recipes that turn a sample into one test image (IN-9 and beyond).

``create_variant("mixed_rand")``, ``list_variants("mixed_*")``,
``list_variants(subset="in9")``. Every variant is a triple (foreground,
background, mask) handed to the one kernel :func:`bgbias.core.compose.compose`:

- ``original``: the image. ``only_bg_b``: object box(es) blacked out.
  ``only_bg_t``: box(es) filled by :func:`bgbias.synth.backgrounds.only_bg_t`.
  ``no_fg``: mask blacked out. ``only_fg``: everything but the mask blacked out.
- ``mixed_same`` / ``mixed_rand`` / ``mixed_next``: the foreground on the
  Only-BG-T image of a partner of the same class / any other image / class
  (y+1) mod C. Partners are planned by :func:`plan_pairing`.
- ``color:<c>``, ``mean``, ``mean_color``, ``texture:<name>[:param]``,
  ``photos:DIR``: the foreground on that background family.

Adding a variant is one ``@VARIANTS.register`` function returning a :class:`Variant`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bgbias.core.compose import MaskPlan, compose_np
from bgbias.core.layout import IN9_VARIANTS, sanitize_name
from bgbias.core.registry import Registry, Spec, natural_key
from bgbias.core.sample import BadSample, Sample
from bgbias.core.seeding import numpy_rng, torch_generator
from bgbias.synth.backgrounds import (
    TEXTURES,
    Background,
    box_mask,
    create_background,
    only_bg_b,
    only_bg_t,
    resize_crop,
    texture_kind,
    tile_strip,
)

VARIANTS: Registry["Variant"] = Registry("variant")
PAIRINGS = ("same", "rand", "next")
_EXAMPLES: dict[str, tuple[str, ...]] = {}   # parametric family -> concrete names listed by list_variants


@dataclass(frozen=True, eq=False)
class Variant:
    """One named recipe.

    recipe: ``original``, ``box_black``, ``box_tiled``, ``mask_black``,
        ``fg_only`` or ``paste`` (foreground onto ``background`` or a partner's Only-BG-T).
    pairing: ``None`` or one of ``same``, ``rand``, ``next`` (needs a partner background).
    """

    name: str
    dirname: str
    recipe: str
    pairing: str | None = None
    background: Background | None = None
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def needs_fit(self) -> bool:
        return bool(self.background is not None and self.background.needs_fit)

    def layers(self, sample: Sample, seed: int = 0, partner_bg: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(fg uint8 HxWx3, bg uint8 HxWx3, mask float32 HxW) for :func:`compose`; ``None`` for ``original``.

        Raises :class:`BadSample` when the sample cannot make this variant.
        """
        img, size = sample.image, sample.size
        if self.recipe == "original":
            return None
        if self.recipe in ("box_black", "box_tiled"):
            boxes = sample.object_boxes()
            if not boxes:
                raise BadSample("no object box and no foreground to derive one from")
            fg = np.zeros_like(img) if self.recipe == "box_black" else tile_strip(img, boxes)
            return fg, img, box_mask(size, boxes)
        if sample.mask is None:
            raise BadSample(f"variant {self.name} needs a foreground mask; the sample has none")
        if self.recipe == "mask_black":
            return np.zeros_like(img), img, sample.mask
        if self.recipe == "fg_only":
            return img, np.zeros_like(img), sample.mask
        if self.pairing is not None:
            if partner_bg is None:
                raise ValueError(f"Variant {self.name!r} needs the partner's Only-BG-T image (partner_bg).")
            return img, resize_crop(partner_bg, size), sample.mask
        bg = self.background.for_sample(sample, size, torch_generator(seed, sample.id, self.name))
        return img, bg, sample.mask

    def apply(self, sample: Sample, seed: int = 0, partner_bg: np.ndarray | None = None) -> np.ndarray:
        """uint8 HxWx3 image of this variant for one sample."""
        return render_variants(sample, [self], seed, {self.name: partner_bg} if self.pairing else None)[self.name]

    def describe(self) -> dict:
        d = {"name": self.name, "dirname": self.dirname, "recipe": self.recipe, "pairing": self.pairing}
        if self.background is not None:
            d["background"] = self.background.describe()
        return d


def render_variants(sample: Sample, variants: Sequence[Variant], seed: int = 0,
                    partner_bgs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All ``variants`` of one sample -> {name: uint8 HxWx3}.

    Each variant is its :meth:`Variant.layers` composited by the one kernel, computed the short way:
    the mask is split once (:class:`bgbias.core.compose.MaskPlan`) for every variant that pastes
    through it, box variants copy or fill only their boxes, and no black layer is ever allocated.
    The bytes are :func:`bgbias.core.compose.compose` of the layers (tested).
    """
    out: dict[str, np.ndarray] = {}
    if not sample.boxes and sample.mask is not None and any(v.recipe.startswith("box_") for v in variants):
        # the mask's box, found once for all box variants
        sample = sample.with_(boxes=sample.object_boxes())
    plan: MaskPlan | None = None
    for v in variants:
        if v.recipe in ("original", "box_black", "box_tiled"):
            if v.recipe != "original" and not sample.boxes:
                raise BadSample("no object box and no foreground to derive one from")
            out[v.name] = sample.image if v.recipe == "original" else \
                only_bg_b(sample.image, sample.boxes) if v.recipe == "box_black" else only_bg_t(sample.image, sample.boxes)
            continue
        if sample.mask is None:
            raise BadSample(f"variant {v.name} needs a foreground mask; the sample has none")
        if v.recipe not in ("mask_black", "fg_only", "paste"):
            fg, bg, m = v.layers(sample, seed, (partner_bgs or {}).get(v.name))   # a recipe of a subclass
            out[v.name] = compose_np(fg, bg, m)
            continue
        if plan is None:
            plan = MaskPlan(sample.mask)
        if v.recipe == "mask_black":
            out[v.name] = plan.compose(None, sample.image)
        elif v.recipe == "fg_only":
            out[v.name] = plan.compose(sample.image, None)
        else:
            out[v.name] = plan.compose(*v.layers(sample, seed, (partner_bgs or {}).get(v.name))[:2])
    return out


# ---------------------------------------------------------------- pairing

def plan_pairing(ids: Sequence[str], labels: Sequence[int], num_classes: int, seed: int,
                 variant: str, pairing: str) -> tuple[dict[str, str], dict[str, str]]:
    """Choose a background partner per foreground, from ``(seed, fg id, variant)`` only.

    same: another image of the same class; rand: any other image; next: an
    image of class (y+1) mod C. Candidates are the given (kept) samples in
    order, so the plan is independent of workers and processing order.
    Returns ({fg id: bg id}, {fg id: reason} for foregrounds with no candidate).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"Unknown pairing {pairing!r}; valid: {', '.join(PAIRINGS)}.")
    by_class: dict[int, list[int]] = {}
    for k, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(k)
    n = len(ids)
    plan: dict[str, str] = {}
    missing: dict[str, str] = {}
    for k, (sid, y) in enumerate(zip(ids, labels)):
        if pairing == "rand":
            pool_size, pick = n - 1, None
        else:
            pool = by_class.get(int(y) if pairing == "same" else (int(y) + 1) % num_classes, [])
            pool_size = len(pool) - (1 if pairing == "same" else 0)
        if pool_size <= 0:
            what = {"same": f"no other image of class {y}", "rand": "no other image",
                    "next": f"no image of the next class {(int(y) + 1) % num_classes}"}[pairing]
            missing[sid] = f"{variant}: {what} to take a background from"
            continue
        j = int(numpy_rng(seed, sid, "pairing", variant).integers(pool_size))
        if pairing == "rand":
            pick = j + (j >= k)                              # skip the foreground itself
        elif pairing == "same":
            pos = pool.index(k)
            pick = pool[j + (j >= pos)]
        else:
            pick = pool[j]
        plan[sid] = ids[pick]
    return plan, missing


# ---------------------------------------------------------------- registry

def _register_simple(name: str, recipe: str, pairing: str | None = None, tags: Sequence[str] = ("in9",),
                     help: str = "") -> None:
    def factory() -> Variant:
        return Variant(name, name, recipe, pairing, None, frozenset(tags))

    VARIANTS.register(name, tags=tags, help=help)(factory)


_register_simple("original", "original", help="the image as it is")
_register_simple("only_bg_b", "box_black", help="object box(es) blacked out")
_register_simple("only_bg_t", "box_tiled", help="object box(es) filled by tiling the largest background strip outside")
_register_simple("no_fg", "mask_black", help="foreground mask blacked out")
_register_simple("only_fg", "fg_only", help="everything but the foreground blacked out")
_register_simple("mixed_same", "paste", "same", ("in9", "mixed"), "foreground on the Only-BG-T of another image of its class")
_register_simple("mixed_rand", "paste", "rand", ("in9", "mixed"), "foreground on the Only-BG-T of a random other image")
_register_simple("mixed_next", "paste", "next", ("in9", "mixed"), "foreground on the Only-BG-T of an image of class (y+1) mod C")


def _paste(name: str, dirname: str, background: Background, tag: str) -> Variant:
    return Variant(name, sanitize_name(dirname), "paste", None, background, frozenset({tag}))


@VARIANTS.register("color", tags=["color"], help="foreground on a solid colour: color:red, color:#RRGGBB")
def _color(color: str = "black") -> Variant:
    bg = create_background(f"color:{color}")
    return _paste(bg.name, bg.name.replace(":", "_").replace("#", ""), bg, "color")


@VARIANTS.register("mean", tags=["mean"], help="foreground on the per-pixel dataset mean of background pixels")
def _mean(fit_size: tuple[int, int] | None = None) -> Variant:
    return _paste("mean", "mean", create_background("mean", fit_size=fit_size), "mean")


@VARIANTS.register("mean_color", tags=["mean"], help="foreground on the dataset's mean background colour")
def _mean_color(fit_size: tuple[int, int] | None = None) -> Variant:
    return _paste("mean_color", "mean_color", create_background("mean_color", fit_size=fit_size), "mean")


@VARIANTS.register("texture", tags=["texture"], help="foreground on a texture: texture:NAME[:param]")
def _texture(kind: str = "stripes", param: str | None = None) -> Variant:
    bg = create_background(f"texture:{kind}" + (f":{param}" if param is not None else ""))
    return _paste(bg.name, bg.name.replace(":", "_"), bg, "texture")


@VARIANTS.register("photos", tags=["photos"], path_arg=True, help="foreground on photos from a folder: photos:DIR")
def _photos(folder: str | None = None) -> Variant:
    if not folder:
        raise ValueError("Variant 'photos' needs a folder: photos:DIR.")
    bg = create_background(f"photos:{folder}")
    return _paste(f"photos:{folder}", "photos_" + sanitize_name(Path(folder).name), bg, "photos")


_EXAMPLES["color"] = tuple(f"color:{c}" for c in ("black", "white", "gray", "red", "green", "blue"))
_EXAMPLES["texture"] = tuple(f"texture:{t}" for t in TEXTURES.names())
_EXAMPLES["photos"] = ()


def parse_variant_name(name: str) -> Spec:
    """Split ``family:arg[:param]`` (``photos:DIR`` keeps the whole path as one argument)."""
    return VARIANTS.parse(name)


def create_variant(name: str, **kwargs) -> Variant:
    """``original``, ..., ``mixed_next``, ``color:<c>``, ``mean``, ``mean_color``, ``texture:<name>[:p]``, ``photos:DIR``."""
    return VARIANTS.create(name, **kwargs)


def list_variants(pattern: str = "*", subset: str | None = None) -> list[str]:
    """Concrete variant names (parametric families expanded to their defaults) matching ``pattern`` and ``subset``.

    ``photos:DIR`` needs a folder and is therefore not listed; it is still creatable.
    """
    if subset is not None:
        tags = {t for n in VARIANTS.names() for t in VARIANTS.entry(n).tags}
        if subset not in tags:
            raise ValueError(f"Unknown variant subset {subset!r}; valid: {', '.join(sorted(tags))}.")
    names: list[str] = []
    for fam in VARIANTS.names(tag=subset):
        names.extend(_EXAMPLES.get(fam, (fam,)))
    return sorted(fnmatch.filter(names, pattern), key=natural_key)


def resolve_variants(spec: str | Sequence[str]) -> list[Variant]:
    """``all`` (every listed variant), ``in9`` or a comma list -> variants, checked for duplicate folders."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for it in (s.strip() for s in items):
        if not it:
            continue
        if it == "all":
            names += list(IN9_VARIANTS) + [n for n in list_variants() if n not in IN9_VARIANTS]
        elif it == "in9":
            names += list(IN9_VARIANTS)
        else:
            names.append(it)
    if not names:
        raise ValueError(f"No variants given in {spec!r}; valid: all, in9, or names from: {', '.join(list_variants())}.")
    out: list[Variant] = []
    seen: dict[str, str] = {}
    for v in (create_variant(n) for n in dict.fromkeys(names)):
        if v.name in (o.name for o in out):
            continue
        if v.dirname in seen or v.dirname == "fg_mask":
            raise ValueError(f"Variants {seen.get(v.dirname, 'fg_mask')!r} and {v.name!r} would share the folder {v.dirname!r}.")
        seen[v.dirname] = v.name
        out.append(v)
    return out


def describe_variants(pattern: str = "*") -> list[tuple[str, str, str]]:
    """(name, tags, one-line help) for every variant family and listed example, IN-9 first, for ``bgbias variants``."""
    rows: list[tuple[str, str, str]] = []
    for fam in list(IN9_VARIANTS) + [f for f in VARIANTS.names() if f not in IN9_VARIANTS]:
        e = VARIANTS.entry(fam)
        tags = ",".join(sorted(e.tags))
        names = _EXAMPLES.get(fam, (fam,))
        if fam == "photos":
            names = ("photos:DIR",)
        elif fam == "texture":
            names = tuple(f"texture:{t}[:{texture_kind(t).default}]" for t in TEXTURES.names())
        for n in names:
            if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(fam, pattern):
                doc = e.help
                if fam == "texture":
                    doc = (texture_kind(n.split(":")[1].split("[")[0]).fn.__doc__ or doc).strip()
                rows.append((n, tags, doc.replace("``", "")))
    return rows
