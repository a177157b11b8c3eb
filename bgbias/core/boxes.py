"""Boxes: the box type's helpers, IN-9's box rules, and the one reader of box files (CSV/JSON tables, VOC XML).

Boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive. Imports nothing above ``core``.
"""
from __future__ import annotations

import json
import math
import os
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bgbias.core.layout import sanitize_name
from bgbias.core.sample import BadSample, Box, Sample


@dataclass(frozen=True)
class VocObject:
    name: str
    box: Box            # 0-based, x1/y1 exclusive (VOC's 1-based inclusive xmax == exclusive 0-based x1)
    difficult: bool = False


@dataclass(frozen=True)
class VocAnnotation:
    filename: str
    size: tuple[int, int] | None       # (H, W) as written in the XML
    objects: tuple[VocObject, ...]


MAX_COORD = 1e7   # pixels; a VOC size or box coordinate beyond this (or inf, NaN, 1e400) is malformed


def _number(text: str | None, what: str) -> float:
    """A finite XML number within +-MAX_COORD (``float('1e400')`` is inf, which ``int`` cannot take)."""
    v = float(text)  # type: ignore[arg-type]
    if not math.isfinite(v) or abs(v) > MAX_COORD:
        raise ValueError(f"{what} {text.strip()!r} is not a finite pixel value within {MAX_COORD:.0e}")  # type: ignore[union-attr]
    return v


def parse_voc_xml(path: str | os.PathLike) -> VocAnnotation:
    """Parse one VOC/ImageNet XML file; raises ``BadSample('xml_malformed: ...')`` for broken files."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
        size = root.find("size")
        hw = None
        if size is not None and size.findtext("height") and size.findtext("width"):
            hw = (int(_number(size.findtext("height"), "height")), int(_number(size.findtext("width"), "width")))
        objects = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None:
                continue
            x0, y0, x1, y1 = (_number(bb.findtext(k), k) for k in ("xmin", "ymin", "xmax", "ymax"))
            box = (int(math.floor(x0)) - 1, int(math.floor(y0)) - 1, int(math.ceil(x1)), int(math.ceil(y1)))
            objects.append(VocObject((obj.findtext("name") or "").strip(), box, obj.findtext("difficult") == "1"))
    except (ET.ParseError, OSError, TypeError, ValueError, OverflowError) as e:
        detail = textwrap.shorten(str(e), 100, placeholder=" ...")
        raise BadSample(f"xml_malformed: {p.name} ({type(e).__name__}: {detail})") from None
    return VocAnnotation((root.findtext("filename") or "").strip(), hw, tuple(objects))

def _area(b: Box) -> int:
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])


def clip_boxes(boxes: tuple[Box, ...], h: int, w: int) -> tuple[Box, ...]:
    """Clip to the image; boxes with zero area after clipping are removed."""
    out = []
    for x0, y0, x1, y1 in boxes:
        b = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
        if b[2] > b[0] and b[3] > b[1]:
            out.append(b)
    return tuple(out)


def fit_boxes(boxes: tuple[Box, ...], written: tuple[int, int] | None, h: int, w: int) -> tuple[Box, ...]:
    """Scale boxes written for another image size, then clip; no box left -> ``BadSample('box_zero_area: ...')``."""
    if written and written != (h, w) and written[0] > 0 and written[1] > 0:
        sy, sx = h / written[0], w / written[1]
        boxes = tuple((int(x0 * sx), int(y0 * sy), int(math.ceil(x1 * sx)), int(math.ceil(y1 * sy)))
                      for x0, y0, x1, y1 in boxes)
    kept = clip_boxes(boxes, h, w)
    if boxes and not kept:
        raise BadSample(f"box_zero_area: {len(boxes)} box(es), none with area inside the {w}x{h} image")
    return kept


class BoxTable:
    """Boxes by key, looked up by sample id, by sanitised path key (``cat/x.jpg`` -> ``cat_x``) or by unique file stem."""

    def __init__(self, table: dict[str, tuple[Box, ...]], origin: str = "the boxes file"):
        self.table, self.origin = dict(table), origin
        self.by_key: dict[str, tuple[Box, ...]] = {}
        stems: dict[str, list] = {}
        for k, v in self.table.items():
            p = Path(k)
            self.by_key.setdefault(sanitize_name(p.with_suffix("").as_posix() if p.suffix else k), v)
            stems.setdefault(sanitize_name(p.stem), []).append(v)
        self.by_stem = {s: v[0] for s, v in stems.items() if len(v) == 1}

    def __len__(self) -> int:
        return len(self.table)

    def lookup(self, sample: Sample) -> tuple[Box, ...]:
        """The sample's boxes, clipped to its image; none -> ``BadSample('annotation_missing: ...')``."""
        boxes = self.table.get(sample.id, self.by_key.get(sample.id))
        parts = sample.id.split("_")
        for j in range(len(parts)):
            if boxes is not None:
                break
            boxes = self.by_stem.get("_".join(parts[j:]))
        if boxes is None:
            raise BadSample(f"annotation_missing: no boxes for {sample.id!r} in {self.origin}")
        return fit_boxes(boxes, None, *sample.size)


def load_boxes(path: str | os.PathLike) -> BoxTable:
    """Boxes for ``--boxes``: JSON ``{key: [[x0,y0,x1,y1], ...]}`` or a folder of VOC XML (key = file path stem)."""
    p = Path(path)
    table: dict[str, tuple[Box, ...]] = {}
    if p.is_dir():
        for f in sorted(p.rglob("*.xml")):
            try:
                table[f.relative_to(p).with_suffix("").as_posix()] = tuple(o.box for o in parse_voc_xml(f).objects)
            except BadSample:
                continue   # a broken XML leaves its image without boxes: a named skip at load time
        return BoxTable(table, str(p))
    try:
        raw = json.loads(p.read_bytes())
        for k, v in raw.items():
            table[str(k)] = tuple(tuple(int(round(_number(str(c), "coordinate"))) for c in b[:4])
                                  for b in v if len(b) >= 4)
    except FileNotFoundError:
        raise ValueError(f"Boxes file {p} does not exist.") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as e:
        raise ValueError(f"Boxes file {p} is not JSON of the form {{id: [[x0, y0, x1, y1], ...]}} "
                         f"({type(e).__name__}).") from None
    return BoxTable(table, str(p))


BOX_MODES = ("one", "union")


@dataclass(frozen=True)
class BoxRules:
    """IN-9's image selection, applied before any mask is computed (so GrabCut runs only on kept images).

    box_mode 'one': exactly one box, else drop (rule ``box_count``); 'union': use every box.
    crop_rules: drop boxes covering > ``max_crop_cover`` of the centre crop (``box_crop_cover``)
    or with < ``min_in_crop`` of their area inside it (``box_in_crop``). The crop is ImageNet's
    evaluation crop: resize the short side to ``resize``, take the centre ``crop`` square.
    """

    box_mode: str = "union"
    crop_rules: bool = False
    max_crop_cover: float = 0.9
    min_in_crop: float = 0.5
    resize: int = 256
    crop: int = 224

    def __post_init__(self) -> None:
        if self.box_mode not in BOX_MODES:
            raise ValueError(f"Unknown box mode {self.box_mode!r}; valid: {', '.join(BOX_MODES)}.")

    def apply(self, sample: Sample) -> Sample:
        """Return the sample unchanged or raise ``BadSample('<rule>: ...')``."""
        boxes = sample.boxes
        if self.box_mode == "one" and len(boxes) != 1:
            raise BadSample(f"box_count: {len(boxes)} boxes (the IN-9 recipe keeps images with exactly one)")
        if self.crop_rules and boxes:
            h, w = sample.size
            side = min(h, w) * self.crop / self.resize
            cx0, cy0 = (w - side) / 2, (h - side) / 2
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
            inter = max(0.0, min(x1, cx0 + side) - max(x0, cx0)) * max(0.0, min(y1, cy0 + side) - max(y0, cy0))
            if inter / (side * side) > self.max_crop_cover:
                raise BadSample(f"box_crop_cover: box covers {inter / side ** 2:.0%} of the centre crop "
                                f"(> {self.max_crop_cover:.0%})")
            if inter / max(1, (x1 - x0) * (y1 - y0)) < self.min_in_crop:
                raise BadSample(f"box_in_crop: {inter / ((x1 - x0) * (y1 - y0)):.0%} of the box is inside the "
                                f"centre crop (< {self.min_in_crop:.0%})")
        return sample


IN9_RULES = BoxRules(box_mode="one", crop_rules=True)
