"""Bad inputs: each becomes a named drop (the build goes on) or one sentence, never a crash or a traceback."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from corpus import (GOOD_POLYGON, bomb_png, coco_dataset, folder_dataset, image, lying_npy, png_bytes, square_mask,
                    voc_dataset, voc_xml)
from faults_helpers import build_small, one_sentence

from bgbias.core.boxes import parse_voc_xml
from bgbias.core.io import read_image, read_mask
from bgbias.core.sample import BadSample
from bgbias.sources.annotated import VOCSource
from bgbias.sources.coco import CocoSource
from bgbias.sources.readers import FolderSource

BAD_IMAGES = {
    "zero_byte": (b"", "unreadable image"),
    "truncated_png": (png_bytes(image(24, 24))[:60], "unreadable image"),
    "text_as_png": (b"this is not an image\n" * 4, "unreadable image"),
    "bomb_png": (bomb_png(), "unreadable image"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_a_named_drop(tmp_path, case):
    data, reason = BAD_IMAGES[case]
    images, masks = folder_dataset(tmp_path, {"a": 2, "b": 2}, bad={f"a/{case}.png": data})
    m = build_small(FolderSource(str(images), str(masks)), tmp_path / "out")
    assert any(r.startswith(reason) or r.partition(": ")[2].startswith(reason) for r in _reasons(m, f"a_{case}")), m["dropped"]
    assert m["counts"]["kept"] == 4


def _reasons(m, sid):
    return [d["reason"] for d in m["dropped"] if d["id"] == sid]


ODD_MODES = {"L": np.uint8, "LA": np.uint8, "RGBA": np.uint8, "1": bool, "I;16": np.uint16, "P": np.uint8}


@pytest.mark.parametrize("mode", sorted(ODD_MODES))
def test_odd_modes_and_bit_depths_read_as_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    shape = (9, 11, 2) if mode == "LA" else (9, 11)
    arr = rng.integers(0, 2 if mode == "1" else 255, size=shape).astype(ODD_MODES[mode])
    from PIL import Image

    im = Image.fromarray(arr) if mode not in ("P", "1") else Image.fromarray(arr.astype(np.uint8)).convert(mode)
    im.save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == (9, 11, 3)


def test_16bit_png_scaled_by_range_not_content(tmp_path):
    """The same 16-bit image with one pixel at 300 must not come out nearly black."""
    from PIL import Image

    a = np.full((6, 6), 200, np.uint16)
    b = a.copy()
    b[0, 0] = 300
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    ra, rb = read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png")
    assert np.array_equal(ra[1:, 1:], rb[1:, 1:])
    c = np.full((6, 6), 65535, np.uint16)
    Image.fromarray(c).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png").min() == 255


def test_sparse_lying_npy_mask_refused_from_header(tmp_path):
    """A 400 MB sparse .npy for a 32x32 image is refused before its data is read."""
    p = lying_npy(tmp_path / "m.npy", (10000, 10000), sparse_bytes=400_000_128)
    with pytest.raises(BadSample, match="differs from image size"):
        read_mask(p, (32, 32))
    with pytest.raises(BadSample, match="claims 40000x40000 pixels"):
        read_mask(lying_npy(tmp_path / "n.npy", (40000, 40000)))
    with pytest.raises(BadSample, match="truncated"):
        read_mask(lying_npy(tmp_path / "t.npy", (32, 32)), (32, 32))


def test_pickled_and_odd_npy_masks_are_named(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadSample, match="Python objects"):
        read_mask(tmp_path / "obj.npy")
    np.save(tmp_path / "cube.npy", np.zeros((4, 4, 7), np.float32))
    with pytest.raises(BadSample, match="unsupported shape"):
        read_mask(tmp_path / "cube.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(BadSample, match="unreadable mask"):
        read_mask(tmp_path / "junk.npy")
    np.save(tmp_path / "ok.npy", np.ones((5, 6), np.uint8))
    assert read_mask(tmp_path / "ok.npy", (5, 6)).dtype == np.float32


def test_wrong_size_mask_is_a_named_drop(tmp_path):
    images, masks = folder_dataset(tmp_path, {"a": 2, "b": 2}, bad={"a/w.png": png_bytes(image(24, 24, 9))},
                                   bad_masks={"a/w.png": png_bytes(square_mask(10, 10))})
    m = build_small(FolderSource(str(images), str(masks)), tmp_path / "out")
    assert any("differs from image size" in r for r in _reasons(m, "a_w")), m["dropped"]


VOC_CASES = {
    "box_inf": voc_xml([(2, 2, "inf", 10)]),
    "box_1e400": voc_xml([(2, 2, "1e400", 10)]),
    "box_nan": voc_xml([("nan", 2, 10, 10)]),
    "size_inf": voc_xml([(2, 2, 10, 10)], size=("inf", 24)),
    "size_1e400": voc_xml([(2, 2, 10, 10)], size=(24, "1e400")),
    "box_word": voc_xml([(2, 2, "ten", 10)]),
    "not_xml": "<annotation><size>",
}


@pytest.mark.parametrize("case", sorted(VOC_CASES))
def test_voc_non_finite_or_broken_is_xml_malformed(tmp_path, case):
    root = voc_dataset(tmp_path / "voc", {"good": voc_xml([(4, 4, 16, 16)]), case: VOC_CASES[case]})
    src = VOCSource(root)
    reasons = [d["reason"] for d in src.scan_dropped if d["path"] == f"{case}.xml"]
    assert reasons and reasons[0].startswith("xml_malformed:"), src.scan_dropped
    assert len(src) == 1
    with pytest.raises(BadSample, match="xml_malformed"):
        parse_voc_xml(root / "Annotations" / f"{case}.xml")


COCO_CASES = {
    "polygon_nan": [[4.0, 4.0, math.nan, 4.0, 16.0, 16.0, 4.0, 16.0]],
    "polygon_1e30": [[4.0, 4.0, 1e30, 4.0, 16.0, 16.0, 4.0, 16.0]],
    "polygon_inf": [[4.0, 4.0, 16.0, -math.inf, 16.0, 16.0, 4.0, 16.0]],
    "polygon_text": [[4.0, 4.0, "x", 4.0, 16.0, 16.0, 4.0, 16.0]],
    "polygon_huge_count": [[float(v % 20) for v in range(2 * 100_002)]],
    "rle_bad_sum": {"counts": [5, 5], "size": [24, 24]},
    "rle_negative": {"counts": [-5, 24 * 24 + 5], "size": [24, 24]},
    "rle_wrong_size": {"counts": "PPP", "size": [10, 10]},
}


def test_coco_bad_segmentations_are_named_drops(tmp_path):
    ann = coco_dataset(tmp_path / "coco", {"good": GOOD_POLYGON, **COCO_CASES})
    m = build_small(CocoSource(ann), tmp_path / "out")
    assert m["counts"]["kept"] == 1
    for case in COCO_CASES:
        reasons = _reasons(m, case)
        assert reasons and reasons[0].startswith("segmentation_malformed:"), (case, m["dropped"])


def test_coco_list_valued_category_id_is_one_sentence(tmp_path):
    ann = coco_dataset(tmp_path / "coco", {"good": GOOD_POLYGON}, categories=[{"id": [1], "name": "cat"}])
    with pytest.raises(ValueError) as e:
        CocoSource(ann)
    one_sentence(str(e.value), "cat", "not an integer")


def test_coco_list_valued_annotation_ids_are_named_drops(tmp_path):
    ann = coco_dataset(tmp_path / "coco", {"good": GOOD_POLYGON, "b": GOOD_POLYGON})
    data = json.loads(ann.read_text())
    data["annotations"][1]["category_id"] = [1]
    data["annotations"].append({**data["annotations"][0], "id": [7]})
    ann.write_text(json.dumps(data))
    src = CocoSource(ann)
    assert len(src) == 1
    assert sum("json_malformed" in d["reason"] for d in src.scan_dropped) == 2


def test_coco_module_imports_alone():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from bgbias.sources.coco import decode_segmentation"],
                       capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr


def test_injected_names_stay_inside_out(tmp_path):
    """Category names with path parts, newlines and NULs become safe folder names; nothing escapes OUT."""
    cats = [{"id": 1, "name": "../../evil"}, {"id": 2, "name": "a\nb\x00c"}]
    ann = coco_dataset(tmp_path / "coco", {"x": GOOD_POLYGON, "y": GOOD_POLYGON}, categories=cats)
    data = json.loads(ann.read_text())
    data["annotations"][1]["category_id"] = 2
    ann.write_text(json.dumps(data))
    out = tmp_path / "sub" / "out"
    build_small(CocoSource(ann), out)
    outside = [p for p in tmp_path.rglob("*") if "out" not in p.relative_to(tmp_path).parts
               and "coco" not in p.relative_to(tmp_path).parts and p.is_file()]
    assert not outside, outside
    assert all("\n" not in p.name and ".." not in p.name for p in out.rglob("*"))
