"""Own data end to end: train on a build's train split, validate on val, audit val, flag overlap; small-data training."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import ArraySource

from bgbias.cli import main
from bgbias.synth.build import BuildConfig, build
from bgbias.train.loop import TrainConfig, load_data, step_plan, train


@pytest.fixture(scope="module")
def split_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "build"
    build(ArraySource(n=24, classes=("a", "b", "c")), out, BuildConfig(variants=("original", "only_bg_t", "mixed_rand"),
                                                                    holdout=0.25), progress=False)
    return out


def test_train_on_a_build_uses_its_train_split_and_validates_on_val(split_build, tmp_path):
    m = train(TrainConfig(data=str(split_build), out=str(tmp_path / "r"), epochs=1, min_steps=4), progress=False)
    manifest = json.loads((split_build / "manifest.json").read_text())
    train_ids = sorted(i for i, s in manifest["split_of"].items() if s == "train")
    assert m["n_train"] == 18 and m["n_val"] == 6 and m["data_splits"] == {"train": "original/train", "val": "original/val"}
    ckpt = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    assert sorted(ckpt["meta"]["train_ids"]) == train_ids
    assert m["reference"]["chance_rate"] == pytest.approx(1 / 3) and m["reference"]["n"] == 6


def test_a_build_without_a_train_split_is_one_clear_sentence(tmp_path):
    build(ArraySource(n=6), tmp_path / "b", BuildConfig(variants=("original",)), progress=False)
    with pytest.raises(ValueError, match=r"no 'train' split \(present: val\)\. Rebuild it with --holdout F"):
        train(TrainConfig(data=str(tmp_path / "b"), out=str(tmp_path / "r"), epochs=1), progress=False)


def test_eval_reads_val_by_default_and_flags_training_images(split_build, tmp_path, capsys):
    run = tmp_path / "r"
    train(TrainConfig(data=str(split_build), out=str(run), epochs=1, min_steps=2), progress=False)
    model = f"checkpoint:{run / 'model.pt'}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no overlap warning on val
        assert main(["eval", "--model", model, "--data", str(split_build), "--out", str(tmp_path / "e.json"),
                     "--no-progress", "--device", "cpu"]) == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["split"] == "val" and r["overlap_with_training"] == 0 and r["variants"]["original"]["n"] == 6
    with pytest.warns(UserWarning, match="18 of the 18 images evaluated .split 'train'. were in the model's training"):
        assert main(["eval", "--model", model, "--data", str(split_build), "--out", str(tmp_path / "t.json"),
                     "--split", "train", "--no-progress", "--device", "cpu"]) == 0
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["overlap_with_training"] == 18 and r["variants"]["mixed_rand"]["n"] == 18
    assert main(["eval", "--model", model, "--data", str(split_build), "--out", str(tmp_path / "x.json"),
                 "--split", "test", "--no-progress"]) == 2
    assert "no 'test' split (present: train, val)" in capsys.readouterr().err


def test_challenge_reads_the_split_and_reports_overlap(split_build, tmp_path):
    from bgbias.audit.challenge import ChallengeConfig, run_challenge

    run = tmp_path / "r"
    train(TrainConfig(data=str(split_build), out=str(run), epochs=1, min_steps=2), progress=False)
    r = run_challenge(ChallengeConfig(model=f"checkpoint:{run / 'model.pt'}", data=str(split_build), progress=False,
                                      device="cpu"))
    assert r["split"] == "val" and r["n_foregrounds"] == 6 and r["n_backgrounds"] == 6
    assert r["overlap_with_training"] == 0


def test_step_plan_gives_small_sets_enough_steps():
    assert step_plan(254, 128, 5, 100) == (16, 2)      # was 2 steps per epoch, 10 in all
    assert step_plan(540, 64, 6, 100) == (32, 1)       # smaller batches first: same images per epoch
    assert step_plan(60000, 128, 5, 100) == (128, 1)   # large sets are unchanged
    assert step_plan(254, 128, 5, 0) == (128, 1)
    bs, passes = step_plan(20, 8, 1, 100)
    assert bs == 8 and passes * 3 >= 100


def test_default_training_learns_a_small_set_that_used_to_fail(tmp_path):
    """254 images, batch 128, 5 epochs: 10 steps left BatchNorm's running statistics unusable (val ~5%, train 99%)."""
    d = load_data("digits:16").subset(torch.arange(254))
    m = train(TrainConfig(data="digits:16", out=str(tmp_path / "r"), epochs=5, val_fraction=0.25), progress=False,
              data=d)
    assert m["final"]["val_accuracy"] > 0.8 > m["reference"]["majority_rate"], m["history"]
    assert m["steps"]["main"] == {"batch_size": 16, "passes_per_epoch": 2}


def test_warns_when_validation_is_not_above_the_majority_rate(tmp_path):
    d = load_data("digits:16").subset(torch.arange(120))
    with pytest.warns(UserWarning, match=r"not above the majority-class rate .* chance is 10.0%"):
        train(TrainConfig(data="digits:16", out=str(tmp_path / "r"), epochs=1, lr=0.0, min_steps=0, val_fraction=0.5),
              progress=False, data=d)


def test_pretrained_fine_tunes_a_torchvision_arch_from_a_local_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    weights = torchvision.models.resnet18(num_classes=1000).state_dict()     # the shape of torchvision's file
    torch.save(weights, tmp_path / "resnet18.pth")
    d = load_data("digits:16").subset(torch.arange(40))
    m = train(TrainConfig(data="digits:16", out=str(tmp_path / "r"), arch="resnet18", epochs=1, min_steps=1,
                          lr=0.0, pretrained=str(tmp_path / "resnet18.pth"), val_fraction=0.25), progress=False, data=d)
    rep = m["pretrained"]
    assert rep["not_loaded"] == ["fc.bias", "fc.weight"] and rep["loaded"] == rep["of_model"] - 2
    ckpt = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    assert torch.equal(ckpt["state_dict"]["conv1.weight"], weights["conv1.weight"]), "lr 0: the loaded weights stay"
    torch.save({"w": weights["conv1.weight"], "obj": object()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="Refused to load"):
        train(TrainConfig(data="digits:16", out=str(tmp_path / "r2"), arch="resnet18", epochs=1,
                          pretrained=str(tmp_path / "evil.pth")), progress=False, data=d)
