"""Detection builds: every variant keeps every box, category and id; COCO tools load the output; crowds, empty images, VOC."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bgbias.detect.build import DetBuildConfig, build_detection, open_build, resolve_detection_variants
from bgbias.detect.data import create_det_source

VARIANTS = ("original", "color:red", "mean", "texture:stripes", "only_bg", "only_bg_b", "mixed_rand")


@pytest.fixture(scope="module")
def digits_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "build"
    manifest = build_detection(create_det_source("digits-det:12"), out, DetBuildConfig(VARIANTS, seed=3))
    return out, manifest


def _load(out, dirname, split="val"):
    return json.loads((out / dirname / split / "annotations.json").read_text())


def test_boxes_ids_and_categories_identical_across_variants(digits_build):
    out, manifest = digits_build
    ref = _load(out, "original")
    assert ref["annotations"], "the synthetic set has objects"
    for v in manifest["variants"]:
        d = _load(out, v["dirname"])
        assert [im["id"] for im in d["images"]] == [im["id"] for im in ref["images"]]
        assert d["categories"] == ref["categories"]
        if v["has_gt"]:
            assert d["annotations"] == ref["annotations"]
        else:
            assert d["annotations"] == []
        for im in d["images"]:
            assert (out / v["dirname"] / "val" / "images" / im["file_name"]).is_file()


def test_variants_load_with_pycocotools(digits_build):
    out, manifest = digits_build
    for v in manifest["variants"]:
        coco = COCO(str(out / v["dirname"] / "val" / "annotations.json"))
        img = coco.loadImgs(coco.getImgIds()[0])[0]
        with Image.open(out / v["dirname"] / "val" / "images" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])


def test_only_bg_removes_objects_and_pasted_variants_keep_them(digits_build):
    out, _ = digits_build
    ref = _load(out, "original")
    im = ref["images"][0]
    mask = np.load(out / "fg_mask" / "val" / (im["file_name"][:-4] + ".npy")) > 0.5
    orig = np.asarray(Image.open(out / "original" / "val" / "images" / im["file_name"]))
    red = np.asarray(Image.open(out / "color_red" / "val" / "images" / im["file_name"]))
    only = np.asarray(Image.open(out / "only_bg" / "val" / "images" / im["file_name"]))
    assert np.array_equal(red[mask], orig[mask])                     # objects untouched
    assert (red[~mask] == [255, 0, 0]).all()                          # background replaced
    bright = orig[mask].mean()
    assert only[mask].mean() < bright - 40                             # the light digits are gone


def test_build_is_deterministic(digits_build, tmp_path):
    out, _ = digits_build
    again = tmp_path / "again"
    build_detection(create_det_source("digits-det:12"), again, DetBuildConfig(VARIANTS, seed=3))
    for f in sorted(out.rglob("*.png")):
        rel = f.relative_to(out)
        assert hashlib.sha1(f.read_bytes()).digest() == hashlib.sha1((again / rel).read_bytes()).digest(), rel


def test_classification_only_variants_are_refused():
    with pytest.raises(ValueError, match="no detection form"):
        resolve_detection_variants("original,mixed_same")


def _coco_fixture(tmp_path):
    """Two images: one with a polygon person, an RLE crowd and a box-only object; one with no annotations."""
    h, w = 48, 64
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "empty.png"):
        Image.fromarray(rng.integers(0, 120, (h, w, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name)
    crowd = np.zeros((h, w), np.uint8)
    crowd[30:44, 40:60] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    anns = [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 20], "area": 320, "iscrowd": 0,
         "segmentation": [[4, 4, 20, 4, 20, 24, 4, 24]]},
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [40, 30, 20, 14], "area": 280, "iscrowd": 1,
         "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}},
        {"id": 9, "image_id": 1, "category_id": 2, "bbox": [26, 6, 10, 10], "area": 100, "iscrowd": 0},
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w},
                       {"id": 2, "file_name": "empty.png", "height": h, "width": w}],
            "annotations": anns, "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "ball"}]}
    (tmp_path / "inst.json").write_text(json.dumps(data))
    return tmp_path / "inst.json", tmp_path / "imgs"


def test_coco_crowd_regions_stay_crowd_and_are_not_foreground(tmp_path):
    ann, imgs = _coco_fixture(tmp_path)
    out = tmp_path / "out"
    build_detection(create_det_source(f"coco:{ann}:{imgs}"), out, DetBuildConfig(("original", "color:green")))
    d = _load(out, "color_green")
    crowd = [a for a in d["annotations"] if a["iscrowd"]]
    assert [a["id"] for a in crowd] == [8]
    mask = np.load(out / "fg_mask" / "val" / "a.npy")
    assert mask[30:44, 40:60].max() == 0                      # crowd is not foreground
    assert mask[5:23, 5:19].min() == 1                        # the polygon instance is
    assert mask[6:16, 26:36].mean() > 0                       # box-only instance: GrabCut (or its box)
    green = np.asarray(Image.open(out / "color_green" / "val" / "images" / "a.png"))
    assert (green[31:43, 41:59] == [0, 255, 0]).all()         # the crowd region gets the new background


def test_image_without_annotations_is_kept_in_every_variant(tmp_path):
    ann, imgs = _coco_fixture(tmp_path)
    out = tmp_path / "out"
    m = build_detection(create_det_source(f"coco:{ann}:{imgs}"), out, DetBuildConfig(("original", "color:red",
                                                                                       "only_bg", "mixed_rand")))
    assert m["counts"]["kept"] == 2
    for v in m["variants"]:
        d = _load(out, v["dirname"])
        assert 2 in [im["id"] for im in d["images"]]
        assert not [a for a in d["annotations"] if a["image_id"] == 2]
    red = np.asarray(Image.open(out / "color_red" / "val" / "images" / "empty.png"))
    assert (red == [255, 0, 0]).all()
    back = open_build(out, "color:red", "val")
    assert len(back) == 2 and len(back.load(1).annotations) == 0


def test_voc_without_segmentation_uses_grabcut_per_box(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    img = np.full((60, 80, 3), 30, np.uint8)
    img[10:40, 10:40] = (220, 200, 40)
    img[20:50, 50:70] = (40, 200, 220)
    Image.fromarray(img).save(root / "JPEGImages" / "x1.jpg", quality=95)
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in
                   (("cat", 6, 6, 44, 44), ("dog", 46, 16, 74, 54)))
    (root / "Annotations" / "x1.xml").write_text(f"<annotation><filename>x1.jpg</filename><size><width>80</width>"
                                                 f"<height>60</height></size>{objs}</annotation>")
    out = tmp_path / "out"
    m = build_detection(create_det_source(f"voc:{root}"), out, DetBuildConfig(("original", "color:black")))
    d = _load(out, "color_black")
    assert [a["category_id"] for a in d["annotations"]] == [1, 2]
    assert [c["name"] for c in d["categories"]] == ["cat", "dog"]
    assert d["annotations"][0]["bbox"] == [5.0, 5.0, 39.0, 39.0]   # VOC 1-based inclusive -> COCO x, y, w, h
    mask = np.load(out / "fg_mask" / "val" / "x1.npy")
    assert mask[15:35, 15:35].mean() > 0.9 and mask[0:4, :].max() == 0
    assert m["counts"]["kept"] == 1


def test_cli_detection_build(tmp_path, capsys):
    from bgbias.cli import main

    rc = main(["build", "digits-det:8", "--task", "detection", "--out", str(tmp_path / "b"),
               "--variants", "original,color:blue", "--quiet"])
    assert rc == 0
    assert "detection variants of 8 images" in capsys.readouterr().out
    assert (tmp_path / "b" / "color_blue" / "train" / "annotations.json").is_file()
    assert main(["build", "digits-det:8", "--task", "detection", "--out", str(tmp_path / "c"),
                 "--variants", "only_fg", "--quiet"]) == 2
