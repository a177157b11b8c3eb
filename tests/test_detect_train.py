"""Detection augmentation and training: boxes travel unchanged, tiny detectors train a few steps and load for eval."""
from __future__ import annotations

import json

import pytest
import torch
from torchvision import tv_tensors

from bgbias.detect.augment import DetectionBackgroundSwap
from bgbias.detect.data import create_det_source
from bgbias.detect.models import build_detector, load_detector, read_label_map
from bgbias.detect.train import DetTrainConfig, _target, train_detector


def _sample():
    s = create_det_source("digits-det:4").load(0)
    img = tv_tensors.Image(torch.from_numpy(s.image).permute(2, 0, 1).contiguous())
    return s, img, _target(s)


def test_background_swap_moves_no_box_and_keeps_the_objects():
    s, img, tgt = _sample()
    aug = DetectionBackgroundSwap(families="color", p=1.0, seed=0)
    boxes_before, labels_before = tgt["boxes"].clone(), tgt["labels"].clone()
    version = img._version
    out, out_t = aug(img, tgt)
    assert img._version == version                                 # input not edited in place
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8
    assert isinstance(out_t["boxes"], tv_tensors.BoundingBoxes)
    assert torch.equal(out_t["boxes"], boxes_before) and torch.equal(out_t["labels"], labels_before)
    fg = torch.from_numpy(s.mask) == 1
    assert torch.equal(out[:, fg], img[:, fg])                     # objects bit-identical
    assert not torch.equal(out[:, ~fg], img[:, ~fg])               # background replaced


def test_background_swap_takes_per_instance_masks_and_is_seeded():
    s, img, tgt = _sample()
    inst = tv_tensors.Mask(torch.stack([torch.from_numpy(s.mask)] * 2))
    a = DetectionBackgroundSwap(families="color,texture", p=1.0, seed=4)(img, {"masks": inst, "boxes": tgt["boxes"]})
    b = DetectionBackgroundSwap(families="color,texture", p=1.0, seed=4)(img, {"masks": inst, "boxes": tgt["boxes"]})
    assert torch.equal(a[0], b[0])
    with pytest.raises(TypeError, match="tv_tensors.Mask"):
        DetectionBackgroundSwap()(img, tgt["boxes"])


@pytest.mark.parametrize("arch", ["tiny_centernet", "tiny_frcnn"])
def test_tiny_detector_trains_a_few_steps_and_loads_for_eval(tmp_path, arch):
    cfg = DetTrainConfig(data="digits-det:16", out=str(tmp_path / arch), recipe="bg-augment", arch=arch,
                         arch_kwargs={"width": 8}, epochs=1, batch_size=4, max_steps=3, lr=0.005,
                         families=("color", "mean", "other_sample"))
    m = train_detector(cfg)
    assert m["meta"]["steps"] == 3 and m["history"][0]["loss"] > 0
    assert "mixed_rand" in m["meta"]["families_seen"]
    det = load_detector(str(tmp_path / arch / "model.pt"))
    out = det.module([torch.rand(3, 64, 64), torch.rand(3, 48, 72)])
    assert len(out) == 2 and all({"boxes", "labels", "scores"} <= set(o) for o in out)
    assert json.loads((tmp_path / arch / "metrics.json").read_text())["kind"] == "bgbias-train-detect/1"


def test_training_is_deterministic(tmp_path):
    def run(name):
        cfg = DetTrainConfig(data="digits-det:8", out=str(tmp_path / name), arch="tiny_centernet",
                             arch_kwargs={"width": 8}, epochs=1, batch_size=4, max_steps=2, recipe="bg-augment")
        return train_detector(cfg)["history"][0]["loss"]

    assert run("a") == run("b")


def test_training_from_a_detection_build_via_cli(tmp_path):
    from bgbias.cli import main

    assert main(["build", "digits-det:8", "--task", "detection", "--out", str(tmp_path / "b"),
                 "--variants", "original", "--quiet"]) == 0
    assert main(["train", "--task", "detection", "--recipe", "baseline", "--data", str(tmp_path / "b"),
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "3", "--quiet"]) == 0
    assert (tmp_path / "run" / "model.pt").is_file()


def test_bad_detector_specs_and_label_maps_are_clear(tmp_path):
    with pytest.raises(ValueError, match="Unknown detection architecture"):
        build_detector("resnet_nope", 3)
    with pytest.raises(ValueError, match="not a detection checkpoint"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
        load_detector(str(tmp_path / "x.pt"))
    (tmp_path / "lm.json").write_text(json.dumps({"1": "cat", "2": -1, "3": 9}))
    with pytest.raises(ValueError, match="not a category"):
        read_label_map(tmp_path / "lm.json", [{"id": 1, "name": "cat"}])
    (tmp_path / "lm.json").write_text(json.dumps({"1": "cat", "2": -1}))
    assert read_label_map(tmp_path / "lm.json", [{"id": 1, "name": "cat"}]) == {1: 1}
    with pytest.raises(ValueError, match="Unknown detection recipe"):
        DetTrainConfig(data="x", out="y", recipe="mixed-rand")
