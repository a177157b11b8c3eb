"""Annotation sources: Pascal VOC, ImageNet-style XML boxes (the IN-9 recipe) and COCO (polygons, RLE); bad input."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from test_masks import iou, scene

import bgbias.masks.methods as masks
from bgbias.core.boxes import load_boxes
from bgbias.core.sample import BadSample
from bgbias.sources.annotated import ImageNetSource, VOCSource, parse_voc_xml
from bgbias.sources.base import create_source
from bgbias.sources.coco import CocoSource


def voc_xml(filename, w, h, objects):
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                   f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for n, (x0, y0, x1, y1) in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def save(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(img[:, :, ::-1]))


def palette_png(indices, path):
    """Save class/instance indices as a palette PNG like VOC's (a full palette keeps the indices as written)."""
    im = Image.fromarray(indices, mode="P")
    im.putpalette([(i * 37 + c * 91) % 256 for i in range(256) for c in range(3)])
    im.save(path)


@pytest.fixture
def voc(tmp_path):
    """VOC folder: a (boxes only, dog largest), b (SegmentationObject), c (SegmentationClass) + bad entries."""
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    img = np.full((60, 80, 3), 90, np.uint8)
    for stem in ("a", "b", "c", "noxml"):
        save(root / "JPEGImages" / f"{stem}.png", img)
    ann = root / "Annotations"
    # VOC pixels are 1-based inclusive: xmin=11..xmax=50 is x0=10, x1=50 (exclusive)
    ann.joinpath("a.xml").write_text(voc_xml("a.png", 80, 60, [("cat", (1, 1, 10, 10)), ("dog", (11, 21, 50, 40)),
                                                              ("dog", (60, 5, 200, 30))]))
    ann.joinpath("b.xml").write_text(voc_xml("b.png", 80, 60, [("person", (1, 1, 30, 30)), ("cat", (41, 11, 70, 50))]))
    ann.joinpath("c.xml").write_text(voc_xml("c.png", 80, 60, [("dog", (5, 5, 40, 40))]))
    ann.joinpath("broken.xml").write_text("<annotation><object><name>dog</name")
    ann.joinpath("badnum.xml").write_text(voc_xml("a.png", 80, 60, [("dog", ("x", 1, 2, 3))]))
    ann.joinpath("lost.xml").write_text(voc_xml("lost.jpg", 80, 60, [("dog", (1, 1, 9, 9))]))
    ann.joinpath("offside.xml").write_text(voc_xml("a.png", 80, 60, [("dog", (100, 100, 120, 120))]))
    seg = np.zeros((60, 80), np.uint8)
    seg[0:30, 0:30] = 1            # instance 1 = person
    seg[12:48, 42:68] = 2          # instance 2 = cat
    seg[11, 42:68] = 255           # void band touching the cat
    seg[55:58, 0:5] = 255          # void far from it
    (root / "SegmentationObject").mkdir()
    palette_png(seg, root / "SegmentationObject" / "b.png")
    cls = np.zeros((60, 80), np.uint8)
    cls[10:30, 10:30] = 12         # VOC index of dog
    cls[40:50, 40:50] = 8          # a cat elsewhere
    (root / "SegmentationClass").mkdir()
    palette_png(cls, root / "SegmentationClass" / "c.png")
    return root


def test_parse_voc_xml_converts_to_exclusive_zero_based(tmp_path):
    f = tmp_path / "x.xml"
    f.write_text(voc_xml("x.jpg", 80, 60, [("dog", (11, 21, 50, 40)), ("cat", ("3.5", "4.2", "9.7", "10"))]))
    a = parse_voc_xml(f)
    assert a.filename == "x.jpg" and a.size == (60, 80)
    assert [(o.name, o.box) for o in a.objects] == [("dog", (10, 20, 50, 40)), ("cat", (2, 3, 10, 10))]


def test_voc_source_labels_boxes_and_masks(voc, tmp_path):
    src = VOCSource(voc)
    assert src.classes == ["cat", "dog", "person"] and src.ids() == ["a", "b", "c", "offside"]
    assert src.labels() == [1, 0, 1, 1]       # a: the larger dog wins; b: the cat box is larger than the person
    a = src.load(0)
    assert a.mask is None and a.boxes == ((10, 20, 50, 40), (59, 4, 80, 30))   # second dog clipped to the image
    b = src.load(1)
    assert b.boxes == ((40, 10, 70, 50),)
    want = np.zeros((60, 80), bool)
    want[11:48, 42:68] = True              # the cat instance plus the void band touching it
    assert np.array_equal(b.mask > 0.5, want)
    c = src.load(2)
    assert np.array_equal(c.mask > 0.5, np.pad(np.ones((20, 20), bool), ((10, 30), (10, 50))))
    reasons = {d["path"]: d["reason"].split(":")[0] for d in src.scan_dropped}
    assert reasons == {"broken.xml": "xml_malformed", "badnum.xml": "xml_malformed", "lost.xml": "image_missing",
                       "noxml.png": "annotation_missing"}
    assert src.has_mask(1) and src.has_mask(2) and not src.has_mask(0)


def test_voc_box_outside_the_image_is_a_named_skip(voc):
    (voc / "Annotations" / "broken.xml").unlink()
    src = VOCSource(voc, classes="dog")
    i = src.ids().index("offside")
    with pytest.raises(BadSample, match="^box_zero_area"):
        src.load(i)


def test_voc_registered_source_fills_missing_masks_with_grabcut(voc, tmp_path, monkeypatch):
    img, truth, box = scene(0, 60, 80)
    save(voc / "JPEGImages" / "a.png", img)
    x0, y0, x1, y1 = box
    (voc / "Annotations" / "a.xml").write_text(voc_xml("a.png", 80, 60, [("dog", (x0 + 1, y0 + 1, x1, y1))]))
    src = create_source(f"voc:{voc}", cache=tmp_path / "cache")
    assert src.mask_method(0) == "grabcut" and src.mask_method(1) == "given"
    assert iou(src.load(0).mask > 0.5, truth) > 0.8
    assert np.array_equal(src.load(1).mask, VOCSource(voc).load(1).mask)   # segmentation PNG kept as given
    only_given = create_source(f"voc:{voc}", masks_from="given")
    with pytest.raises(BadSample, match="^mask_missing"):
        only_given.load(0)


@pytest.mark.parametrize("classes,match", [("dog,hrse", "Unknown VOC class 'hrse'; valid: .*horse"),
                                           ("dog,dog", "twice")])
def test_unknown_or_repeated_classes_are_one_clear_error(voc, classes, match):
    with pytest.raises(ValueError, match=match):
        VOCSource(voc, classes=classes)


def test_missing_voc_folders_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs Annotations/ and JPEGImages/"):
        VOCSource(tmp_path)


@pytest.fixture
def imagenet(tmp_path):
    """Class folders + XML boxes: one good image per class, one with 2 boxes, one too big, one off-centre."""
    images, boxes = tmp_path / "train", tmp_path / "boxes"
    for k, cname in enumerate(("n01", "n02")):
        for j in range(2):
            img, _, (x0, y0, x1, y1) = scene(10 * k + j, 100, 120)
            save(images / cname / f"{cname}_{j}.JPEG", img)
            (boxes / cname).mkdir(parents=True, exist_ok=True)
            (boxes / cname / f"{cname}_{j}.xml").write_text(
                voc_xml(f"{cname}_{j}", 120, 100, [(cname, (x0 + 1, y0 + 1, x1, y1))]))
    save(images / "n01" / "two.JPEG", scene(5, 100, 120)[0])
    (boxes / "two.xml").write_text(voc_xml("two", 120, 100, [("n01", (30, 30, 60, 60)), ("n01", (60, 40, 90, 70))]))
    save(images / "n02" / "big.JPEG", scene(6, 100, 120)[0])
    (boxes / "n02" / "big.xml").write_text(voc_xml("big", 120, 100, [("n02", (2, 2, 118, 99))]))
    save(images / "n02" / "edge.JPEG", scene(7, 100, 120)[0])
    (boxes / "n02" / "edge.xml").write_text(voc_xml("edge", 120, 100, [("n02", (1, 1, 18, 30))]))
    save(images / "n02" / "nobox.JPEG", scene(8, 100, 120)[0])
    return images, boxes


def test_imagenet_recipe_applies_in9_rules_and_runs_grabcut_once_per_kept_image(imagenet, tmp_path, monkeypatch):
    images, boxes = imagenet
    calls = []
    real = cv2.grabCut
    monkeypatch.setattr(masks.cv2, "grabCut", lambda *a: (calls.append(1), real(*a))[1])
    src = create_source(f"imagenet:{images}", boxes=str(boxes), cache=False)
    assert src.classes == ["n01", "n02"] and len(src) == 7
    assert src.scan_dropped == [{"path": "n02/nobox.JPEG", "reason": "annotation_missing: no XML with boxes for "
                                                                     "this image"}]
    kept, why = [], {}
    for i, sid in enumerate(src.ids()):
        try:
            s = src.load(i)
            kept.append(sid)
            assert len(s.boxes) == 1 and s.mask.shape == (100, 120)
        except BadSample as e:
            why[sid] = e.reason.split(":")[0]
    assert why == {"two": "box_count", "big": "box_crop_cover", "edge": "box_in_crop"}
    assert len(kept) == 4 and len(calls) == 4     # GrabCut once per kept image, never for dropped ones
    union = create_source(f"imagenet:{images}", boxes=str(boxes), cache=False, box_mode="union", crop_rules=False)
    assert union.load(union.ids().index("two")).boxes == ((29, 29, 60, 60), (59, 39, 90, 70))


def test_imagenet_needs_boxes_and_known_classes(imagenet):
    images, boxes = imagenet
    with pytest.raises(ValueError, match="needs boxes=ANNOTATIONS_DIR"):
        ImageNetSource(images, None)
    with pytest.raises(ValueError, match="Unknown image-folder class 'n03'; valid: n01, n02"):
        ImageNetSource(images, boxes, classes="n03")


def test_boxes_file_json_and_xml_folder(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"cat/x.jpg": [[1, 2, 3, 4]], "y": [[5, 6, 7, 8], [0, 0, 1, 1]]}))
    table = load_boxes(tmp_path / "b.json")
    assert table.by_key["cat_x"] == ((1, 2, 3, 4),) and table.by_stem["y"] == ((5, 6, 7, 8), (0, 0, 1, 1))
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="is not JSON of the form"):
        load_boxes(tmp_path / "bad.json")
    (tmp_path / "xml" / "cat").mkdir(parents=True)
    (tmp_path / "xml" / "cat" / "x.xml").write_text(voc_xml("x", 10, 10, [("cat", (2, 2, 5, 5))]))
    assert load_boxes(tmp_path / "xml").table == {"cat/x": ((1, 1, 5, 5),)}


@pytest.fixture
def coco(tmp_path):
    """3 images: dog (polygon) + small cat (compressed RLE) + person crowd (uncompressed RLE); tiny cat; missing file."""
    h, w = 60, 80
    (tmp_path / "img").mkdir()
    for name in ("one.jpg", "two.jpg"):
        save(tmp_path / "img" / name, np.full((h, w, 3), 120, np.uint8))
    dog, cat, crowd, tiny = (np.zeros((h, w), bool) for _ in range(4))
    dog[10:40, 10:40] = True
    cat[45:55, 60:75] = True
    crowd[0:5, 50:80] = True
    tiny[1:4, 1:4] = True
    rle = mask_utils.encode(np.asfortranarray(cat.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    flat = crowd.T.reshape(-1).astype(int)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    data = {"images": [{"id": 1, "file_name": "one.jpg", "height": h, "width": w},
                       {"id": 2, "file_name": "two.jpg", "height": h, "width": w},
                       {"id": 3, "file_name": "gone.jpg", "height": h, "width": w}, {"id": 4}],
            "categories": [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 18, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0,
                 "segmentation": [[10, 10, 40, 10, 40, 40, 10, 40]]},
                {"id": 11, "image_id": 1, "category_id": 17, "bbox": [60, 45, 15, 10], "area": 150, "iscrowd": 0,
                 "segmentation": rle},
                {"id": 12, "image_id": 1, "category_id": 1, "bbox": [50, 0, 30, 5], "area": 150, "iscrowd": 1,
                 "segmentation": {"size": [h, w], "counts": counts}},
                {"id": 13, "image_id": 2, "category_id": 17, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0,
                 "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
                {"id": 14, "image_id": 3, "category_id": 18, "bbox": [1, 1, 30, 30], "area": 900, "iscrowd": 0,
                 "segmentation": [[10, 10, 40, 10, 40, 40, 10, 40]]},
                {"id": 15, "image_id": 99, "category_id": 18, "bbox": [1, 1, 3, 3], "segmentation": []},
                {"id": 16, "image_id": 1, "category_id": 18, "bbox": "oops"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path, data, {"dog": dog, "cat": cat, "crowd": crowd}


def test_coco_label_is_largest_instance_and_masks_decode_polygons_and_rle(coco):
    root, _, truth = coco
    src = CocoSource(root / "ann.json", root / "img")
    assert src.classes == ["person", "cat", "dog"] and src.ids() == ["one", "two"] and src.labels() == [2, 1]
    one = src.load(0)
    assert one.boxes == ((10, 10, 40, 40),) and np.array_equal(one.mask > 0.5, truth["dog"])
    cats = CocoSource(root / "ann.json", root / "img", classes="cat,person")
    s = cats.load(0)                        # the crowd is not a candidate; the cat (RLE) is the label
    assert s.label == 0 and np.array_equal(s.mask > 0.5, truth["cat"])
    everything = CocoSource(root / "ann.json", root / "img", classes="cat", foreground="all").load(0)
    assert np.array_equal(everything.mask > 0.5, truth["dog"] | truth["cat"] | truth["crowd"])
    assert len(everything.boxes) == 3
    reasons = sorted(d["reason"].split(":")[0] for d in src.scan_dropped)
    assert reasons == ["image_missing", "image_missing", "json_malformed", "json_malformed"]


def test_coco_min_area_and_spec_parsing(coco):
    root, _, _ = coco
    src = create_source(f"coco:{root / 'ann.json'}:{root / 'img'}", min_area=100)
    assert src.ids() == ["one"]
    assert any(d["reason"].startswith("min_area: largest instance has 9 px") for d in src.scan_dropped)


def test_coco_malformed_inputs(coco):
    root, data, _ = coco
    (root / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CocoSource(root / "bad.json", root / "img")
    (root / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="lacks the 'images', 'annotations' and 'categories'"):
        CocoSource(root / "list.json", root / "img")
    with pytest.raises(ValueError, match="Unknown COCO class 'dgo'; valid: cat, dog, person"):
        CocoSource(root / "ann.json", root / "img", classes="dgo")
    data["annotations"][0]["segmentation"] = [[1, 2, 3]]
    data["images"][1]["height"] = 61
    (root / "ann.json").write_text(json.dumps(data))
    src = CocoSource(root / "ann.json", root / "img")
    with pytest.raises(BadSample, match="^segmentation_malformed: annotation 10"):
        src.load(0)
    with pytest.raises(BadSample, match="^size_mismatch"):
        src.load(1)


def test_options_a_family_does_not_use_are_one_clear_error(voc):
    with pytest.raises(ValueError, match="Source 'voc' does not take option.*foreground"):
        create_source(f"voc:{voc}", foreground="all")
    with pytest.raises(ValueError, match="Unknown mask method 'grabcat'; valid: given, grabcut, grabcut_fast, model, threshold. Did you mean 'grabcut'"):
        create_source(f"voc:{voc}", masks_from="grabcat")
