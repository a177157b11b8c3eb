"""Mask methods (GrabCut from boxes, threshold, segmentation models), IN-9 box rules, the mask cache, ``bgbias masks``."""
import argparse
import json

import cv2
import numpy as np
import pytest
import torch

import bgbias.masks.methods as masks
from bgbias.cli._mask_options import add_mask_arguments, source_from_args
from bgbias.core.boxes import BoxRules
from bgbias.core.sample import BadSample, Sample
from bgbias.masks.cache import MaskCache
from bgbias.masks.methods import (
    GrabCutMask,
    create_mask_method,
    grabcut_from_boxes,
    list_mask_methods,
)
from bgbias.masks.model import ModelMask
from bgbias.masks.run import quality_summary, run_masks
from bgbias.sources.masked import with_masks


def scene(seed: int, h: int = 120, w: int = 160):
    """A textured magenta ellipse on a cluttered background; returns (image, truth bool mask, tight box)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(40):
        c = tuple(int(v) for v in rng.integers(0, 200, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(5, 40)), y + int(rng.integers(5, 40))), c, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(3, 20)), c, -1)
    cx, cy = int(rng.integers(w * 0.35, w * 0.65)), int(rng.integers(h * 0.35, h * 0.65))
    ax, ay = int(rng.integers(w // 8, w // 4)), int(rng.integers(h // 8, h // 4))
    truth = np.zeros((h, w), np.uint8)
    cv2.ellipse(truth, (cx, cy), (ax, ay), float(rng.integers(0, 180)), 0, 360, 1, -1)
    tex = np.stack([rng.integers(200, 256, (h, w)), rng.integers(0, 80, (h, w)), rng.integers(150, 256, (h, w))], -1)
    tex = (tex - 40 * (np.indices((h, w)).sum(0) % 8 < 4)[..., None]).clip(0, 255).astype(np.uint8)
    fg = truth.astype(bool)
    img[fg] = tex[fg]
    ys, xs = np.nonzero(fg)
    return img, fg, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


class ListSource:
    """A duck-typed Source over generated scenes (boxes, no masks)."""

    def __init__(self, n: int = 4, spec: str = "scenes"):
        self.spec, self.classes, self.scan_dropped = spec, ["thing"], []
        self.scenes = [scene(s) for s in range(n)]

    def __len__(self):
        return len(self.scenes)

    def ids(self):
        return [f"s{i}" for i in range(len(self))]

    def labels(self):
        return [0] * len(self)

    def load(self, i):
        img, _, box = self.scenes[i]
        return Sample(img, None, 0, f"s{i}", (box,))

    def describe(self):
        return {"spec": self.spec}


@pytest.fixture
def count_grabcut(monkeypatch):
    calls = []
    real = cv2.grabCut

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(masks.cv2, "grabCut", counting)
    return calls


def test_registry_lists_every_method():
    assert list_mask_methods() == ["given", "grabcut", "grabcut_fast", "model", "threshold"]
    with pytest.raises(ValueError, match="valid: given, grabcut, grabcut_fast, model, threshold"):
        create_mask_method("grabcat")


def test_grabcut_recovers_known_object_on_clutter():
    ious, box_ious = [], []
    for s in range(8):
        img, truth, box = scene(s)
        m = grabcut_from_boxes(img, (box,))
        assert m.dtype == np.float32 and m.shape == truth.shape and set(np.unique(m)) <= {0.0, 1.0}
        ious.append(iou(m > 0.5, truth))
        box_ious.append(iou(masks._box_region((box,), *truth.shape), truth))
    assert np.mean(ious) >= 0.8
    assert np.mean(ious) > np.mean(box_ious) + 0.1   # better than taking the box itself as the mask


def test_working_resolution_grabcut_is_full_size_and_as_good():
    """GrabCut on the box's shrunk neighbourhood, brought back and refined at the boundary: full-size {0,1} masks
    close to full-resolution GrabCut's and about as close to the truth, deterministic, and a different cache key."""
    fast = create_mask_method("grabcut_fast", work_side=100)
    full, quick = [], []
    for s in range(6):
        img, truth, box = scene(s, 240, 320)
        m = fast(Sample(img, None, 0, "x", (box,)))
        assert m.dtype == np.float32 and m.shape == truth.shape and set(np.unique(m)) <= {0.0, 1.0}
        assert np.array_equal(m, fast(Sample(img, None, 0, "x", (box,))))
        quick.append(iou(m > 0.5, truth))
        reference = grabcut_from_boxes(img, (box,)) > 0.5
        full.append(iou(reference, truth))
        assert iou(m > 0.5, reference) >= 0.85                           # close to full-resolution GrabCut's mask
    assert np.mean(quick) >= np.mean(full) - 0.03 and np.mean(quick) >= 0.8
    assert fast.params() != create_mask_method("grabcut").params()
    assert "work_side" not in create_mask_method("grabcut").params()      # existing caches stay valid
    with pytest.raises(ValueError, match="work_side"):
        create_mask_method("grabcut_fast", work_side=8)


def test_band_refinement_does_not_lose_iou_and_stays_in_the_boxes():
    """The full-resolution band pass only moves the boundary of the working-resolution mask: never worse on a
    synthetic object, never outside the (5%-enlarged) box, and small objects far from the image centre work."""
    plain, band = [], []
    for s in range(6):
        img, truth, box = scene(10 + s, 300, 400)
        a = grabcut_from_boxes(img, (box,), work_side=64) > 0.5
        b = grabcut_from_boxes(img, (box,), work_side=64, refine="band") > 0.5
        plain.append(iou(a, truth))
        band.append(iou(b, truth))
        assert not (b & ~masks._box_region(masks._enlarge((box,), 0.05, 300, 400), 300, 400)).any()
    assert np.mean(band) >= np.mean(plain) and np.mean(band) >= 0.8
    big = np.zeros((600, 800, 3), np.uint8)
    img, truth, (x0, y0, x1, y1) = scene(4)                                 # a 120x160 scene in a corner
    big[:] = img[0, 0]
    big[20:140, 600:760] = img
    m = grabcut_from_boxes(big, ((x0 + 600, y0 + 20, x1 + 600, y1 + 20),), work_side=100, refine="band") > 0.5
    assert iou(m[20:140, 600:760], truth) >= 0.8 and not m[:, :600].any()   # the crop keeps the object's pixels
    with pytest.raises(ValueError, match="refine 'bnad'"):
        create_mask_method("grabcut_fast", refine="bnad")


def test_guided_refinement_does_not_lose_iou():
    """refine="guided" snaps the upsampled mask to the photo's edges with OpenCV contrib's guided filter."""
    plain, guided = [], []
    for s in range(6):
        img, truth, box = scene(20 + s, 300, 400)
        plain.append(iou(grabcut_from_boxes(img, (box,), work_side=64) > 0.5, truth))
        guided.append(iou(grabcut_from_boxes(img, (box,), work_side=64, refine="guided") > 0.5, truth))
    assert np.mean(guided) >= np.mean(plain) - 0.01 and np.mean(guided) >= 0.8


def test_grabcut_is_deterministic_and_uses_several_boxes():
    img, truth, box = scene(3)
    assert np.array_equal(grabcut_from_boxes(img, (box,)), grabcut_from_boxes(img, (box,)))
    x0, y0, x1, y1 = box
    halves = ((x0, y0, (x0 + x1) // 2, y1), ((x0 + x1) // 2, y0, x1, y1))
    assert iou(grabcut_from_boxes(img, halves) > 0.5, truth) >= 0.8


def test_grabcut_small_mask_is_retried_then_dropped(monkeypatch):
    calls = []

    def empty(img, mask, rect, bgd, fgd, it, mode):
        calls.append((rect, mode))
        mask[:] = cv2.GC_BGD

    monkeypatch.setattr(masks.cv2, "grabCut", empty)
    img, _, box = scene(0)
    with pytest.raises(BadSample, match=r"^grabcut_small: mask covers 0.0% of the box \(< 10%\) after 3 tries"):
        grabcut_from_boxes(img, (box,))
    assert len(calls) == 3 and calls[2][0][2] > calls[0][0][2]   # third try: enlarged rect
    with pytest.raises(BadSample):
        grabcut_from_boxes(img, (box,), retries=0)
    assert len(calls) == 4


def test_grabcut_whole_image_box_and_missing_box_are_named_drops():
    img, _, _ = scene(0)
    with pytest.raises(BadSample, match="^grabcut_error"):
        grabcut_from_boxes(img, ((0, 0, img.shape[1], img.shape[0]),))
    with pytest.raises(BadSample, match="^no_box"):
        GrabCutMask()(Sample(img, None, 0, "x"))
    with pytest.raises(ValueError, match="iterations"):
        GrabCutMask(iterations=0)


@pytest.mark.parametrize("boxes,rules,reason", [
    (((10, 10, 20, 20), (30, 30, 40, 40)), BoxRules("one"), "box_count"),
    ((), BoxRules("one"), "box_count"),
    (((0, 0, 100, 100),), BoxRules("one", crop_rules=True), "box_crop_cover"),
    (((0, 0, 12, 12),), BoxRules("one", crop_rules=True), "box_in_crop"),
    (((30, 30, 70, 70),), BoxRules("one", crop_rules=True), None),
    (((10, 10, 20, 20), (30, 30, 40, 40)), BoxRules("union"), None),
])
def test_in9_box_rules(boxes, rules, reason):
    s = Sample(np.zeros((100, 100, 3), np.uint8), None, 0, "x", boxes)
    if reason is None:
        assert rules.apply(s) is s
    else:
        with pytest.raises(BadSample, match=f"^{reason}: "):
            rules.apply(s)
    with pytest.raises(ValueError, match="valid: one, union"):
        BoxRules("some")


def test_cache_hit_skips_grabcut_and_changed_parameter_recomputes(tmp_path, count_grabcut):
    src = ListSource(3)
    first = [with_masks(src, "grabcut", cache=tmp_path).load(i).mask for i in range(3)]
    assert len(count_grabcut) == 3
    again = with_masks(src, "grabcut", cache=tmp_path)
    assert all(np.array_equal(again.load(i).mask, first[i]) for i in range(3))
    assert len(count_grabcut) == 3 and again.cache.hits == 3
    changed = with_masks(src, "grabcut", cache=tmp_path, iterations=4)
    changed.load(0)
    assert len(count_grabcut) == 4 and changed.cache.misses == 1
    with_masks(ListSource(3, spec="other"), "grabcut", cache=tmp_path).load(0)   # another source spec
    assert len(count_grabcut) == 5
    with_masks(src, "grabcut", cache=False).load(0)
    assert len(count_grabcut) == 6


def test_cache_remembers_failures(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(masks.cv2, "grabCut", lambda img, mask, *a: (calls.append(1), mask.fill(0)))
    for _ in range(2):
        with pytest.raises(BadSample, match="^grabcut_small"):
            with_masks(ListSource(1), "grabcut", cache=tmp_path).load(0)
    assert len(calls) == 3   # three tries the first time, none the second


def test_cache_default_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BGBIAS_CACHE", str(tmp_path))
    assert MaskCache().root == tmp_path / "masks"


def test_threshold_mask_finds_the_object_whatever_its_polarity():
    img, truth, _ = scene(1)
    bright = np.where(truth[..., None], 230, 25).astype(np.uint8).repeat(3, 2)
    assert iou(create_mask_method("threshold")(Sample(bright, None, 0, "a")) > 0.5, truth) == 1.0
    assert iou(create_mask_method("threshold")(Sample(255 - bright, None, 0, "b")) > 0.5, truth) == 1.0
    assert iou(create_mask_method("threshold:0.5", polarity="dark")(Sample(bright, None, 0, "c")) > 0.5, ~truth) == 1
    with pytest.raises(ValueError, match="outside"):
        create_mask_method("threshold:7")


@pytest.fixture(scope="module")
def lraspp_weights(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny inputs: extra threads only spin on a shared CPU
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights_backbone=None, num_classes=3)
    path = tmp_path_factory.mktemp("w") / "lraspp.pth"
    torch.save(net.state_dict(), path)
    yield path
    torch.set_num_threads(threads)


def test_model_masks_select_foreground_classes(lraspp_weights):
    img, _, _ = scene(2, 64, 80)
    s = Sample(img, None, 0, "m")
    every = ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, num_classes=3, size=64)
    assert every.fg_classes == (1, 2)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.nn.functional.interpolate((x - mean) / std, size=(64, 80), mode="bilinear", antialias=True)
    with torch.no_grad():
        pred = every.network()(x)["out"].argmax(1)[0].numpy()
    for classes, want in (("all", pred != 0), ("1", pred == 1), ([2], pred == 2), ("1,2", pred != 0)):
        m = ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, fg_classes=classes, num_classes=3, size=64)(s)
        assert m.shape == (64, 80) and m.dtype == np.float32
        assert np.array_equal(m > 0.5, want), classes
    assert every.params() != ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, fg_classes="1",
                                       num_classes=3).params()   # a different class set is a different cache key


def test_model_mask_errors_are_one_sentence(lraspp_weights, tmp_path):
    with pytest.raises(ValueError, match="Unknown segmentation architecture 'unet'; valid: deeplabv3_"):
        ModelMask("unet", lraspp_weights)
    with pytest.raises(ValueError, match="needs a local weights file"):
        ModelMask("lraspp_mobilenet_v3_large")
    with pytest.raises(ValueError, match="does not exist"):
        ModelMask("lraspp_mobilenet_v3_large", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="Unknown model class 'dgo'; valid: .* dog"):
        ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, fg_classes="dgo")
    assert ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, fg_classes="dog,cat").fg_classes == (8, 12)
    with pytest.raises(ValueError, match="does not fit lraspp_mobilenet_v3_large with 21 classes"):
        ModelMask("lraspp_mobilenet_v3_large", lraspp_weights).network()


def test_model_masks_in_batches_equal_one_by_one(lraspp_weights):
    """Batched forwards (photos of several sizes grouped by input size) give exactly the one-by-one masks, also
    through ``run_masks`` on a masked source; ``device='auto'`` is the CPU here."""
    samples = [Sample(scene(s, *hw)[0], None, 0, f"s{s}", ()) for s, hw in enumerate([(60, 80), (60, 80), (64, 64),
                                                                                        (60, 80), (64, 64)])]
    one = ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, num_classes=3, size=48, batch_size=1)
    many = ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, num_classes=3, size=48, batch_size=2)
    assert many.device == ("cuda" if torch.cuda.is_available() else "cpu")
    singles = [one(s) for s in samples]
    assert all(np.array_equal(a, b) for a, b in zip(many.masks(samples), singles))
    assert one.params() == many.params()                                  # the batch size is not in the cache key

    class Scenes(ListSource):
        def load(self, i):
            return samples[i]

    src = Scenes(len(samples))
    calls = []
    real = many.masks
    many.masks = lambda batch: (calls.append(len(batch)), real(batch))[1]
    recs = run_masks(with_masks(src, many, cache=False), None)
    assert calls == [2, 2, 1]
    assert recs == run_masks(with_masks(src, one, cache=False), None)      # same records (kept or dropped) as one by one
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, batch_size=0)


def test_model_weight_mismatch_message_ends_on_a_whole_word(lraspp_weights):
    """The load error is shortened at a word boundary, never cut mid-word."""
    with pytest.raises(ValueError, match="does not fit") as e:
        ModelMask("lraspp_mobilenet_v3_large", lraspp_weights, num_classes=5).network()
    detail = str(e.value).split("classes: ", 1)[1]
    assert len(detail) <= 160 and (detail.endswith(" ...") or detail.endswith("."))
    import torchvision
    net = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights_backbone=None, num_classes=5)
    with pytest.raises(RuntimeError) as full:
        net.load_state_dict(torch.load(lraspp_weights))
    assert set(detail.removesuffix(" ...").split()) <= set(str(full.value).split())


def test_model_weights_with_aux_head_load(tmp_path):
    import torchvision
    net = torchvision.models.get_model("deeplabv3_mobilenet_v3_large", weights_backbone=None, num_classes=2,
                                       aux_loss=True)
    torch.save({"model": net.state_dict()}, tmp_path / "d.pth")
    assert ModelMask("deeplabv3_mobilenet_v3_large", tmp_path / "d.pth", num_classes=2).network().aux_classifier


def test_quality_summary_counts_methods_areas_and_rules():
    recs = [{"id": "a", "method": "grabcut", "area": 0.2}, {"id": "b", "method": "given", "area": 0.4},
            {"id": "c", "reason": "box_count: 2 boxes"}, {"id": "d", "reason": "box_count: 0 boxes"},
            {"id": "e", "reason": "grabcut_small: mask covers 1%"}]
    s = quality_summary(recs)
    assert s["masks"] == 2 and s["dropped"] == 3 and s["mean_area_fraction"] == pytest.approx(0.3)
    assert s["by_method"]["grabcut"] == {"masks": 1, "mean_area_fraction": 0.2}
    assert s["drops_by_rule"] == {"box_count": 2, "grabcut_small": 1}


def test_run_masks_same_records_with_one_or_two_workers(tmp_path):
    src = with_masks(ListSource(4), "grabcut", cache=False)
    one, two = run_masks(src, tmp_path / "a", 1), run_masks(src, tmp_path / "b", 2)
    assert one == two and [r["id"] for r in one] == ["s0", "s1", "s2", "s3"]
    assert run_masks.__module__ == "bgbias.masks.run"
    saved = np.load(tmp_path / "a" / "fg_mask" / "val" / "00_thing" / "s0.npy")
    assert saved.dtype == np.float32 and np.array_equal(saved, src.load(0).mask)


def _folder_with_boxes(tmp_path):
    for i in range(2):
        img, _, box = scene(i)
        (tmp_path / "imgs" / "thing").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "imgs" / "thing" / f"p{i}.png"), img[:, :, ::-1])
    boxes = {"thing/p0.png": [list(scene(0)[2])], "p1": [list(scene(1)[2])]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    return tmp_path / "imgs", tmp_path / "boxes.json"


def test_source_from_args_wraps_a_folder_with_boxes_and_grabcut(tmp_path):
    pytest.importorskip("bgbias.sources.base")
    imgs, boxes = _folder_with_boxes(tmp_path)
    p = argparse.ArgumentParser()
    p.add_argument("source")
    add_mask_arguments(p)
    args = p.parse_args([f"folder:{imgs}", "--masks-from", "grabcut", "--boxes", str(boxes),
                         "--mask-cache", str(tmp_path / "cache")])
    src = source_from_args(args)
    for i in range(2):
        s = src.load(i)
        assert s.boxes == (scene(i)[2],) and iou(s.mask > 0.5, scene(i)[1]) > 0.8
    with pytest.raises(ValueError, match="classes"):
        source_from_args(p.parse_args([f"folder:{imgs}", "--classes", "dog"]))
    with pytest.raises(ValueError, match="apply only to --masks-from model:ARCH"):
        source_from_args(p.parse_args([f"folder:{imgs}", "--masks-from", "grabcut", "--boxes", str(boxes),
                                       "--mask-device", "cpu"]))


def test_mask_device_and_batch_size_reach_the_model_method(tmp_path, lraspp_weights):
    pytest.importorskip("bgbias.sources.base")
    imgs, _ = _folder_with_boxes(tmp_path)
    p = argparse.ArgumentParser()
    p.add_argument("source")
    add_mask_arguments(p)
    src = source_from_args(p.parse_args([f"folder:{imgs}", "--masks-from", "model:lraspp_mobilenet_v3_large",
                                         "--weights", str(lraspp_weights), "--mask-device", "cpu",
                                         "--mask-batch-size", "3", "--mask-cache", "none"]))
    assert (src.method.device, src.method.batch_size) == ("cpu", 3)


def test_masks_command_writes_masks_and_summary(tmp_path, capsys):
    pytest.importorskip("bgbias.sources.base")
    from bgbias.cli import main
    imgs, boxes = _folder_with_boxes(tmp_path)
    rc = main(["masks", f"folder:{imgs}", "--out", str(tmp_path / "out"), "--masks-from", "grabcut",
               "--boxes", str(boxes), "--mask-cache", "none"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "masks.json").read_text())
    assert report["summary"]["masks"] == 2 and report["summary"]["by_method"]["grabcut"]["masks"] == 2
    assert (tmp_path / "out" / "fg_mask" / "val" / "00_thing" / "thing_p1.npy").is_file()
    assert "2 kept" in capsys.readouterr().out
