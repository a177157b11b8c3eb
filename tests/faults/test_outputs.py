"""Output folders and run files: locked, never written through a symlink, never silently overwritten,
unwritable ones named in one sentence before the compute; empty classes keep the numbering."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import folder_dataset, image, png_bytes
from faults_helpers import build_small, cli_error, one_sentence

from bgbias.core.io import atomic_write_bytes
from bgbias.sources.readers import FolderSource
from bgbias.synth.build_worker import CACHE

# New APIs are imported inside the cases, so the suite also runs (and counts defects) on older code.


@pytest.fixture
def folder(tmp_path):
    images, masks = folder_dataset(tmp_path / "data", {"a": 3, "b": 3})
    return FolderSource(str(images), str(masks))


def test_second_build_into_a_locked_folder_is_refused(tmp_path, folder):
    from bgbias.core.lock import FolderInUse, FolderLock

    out = tmp_path / "out"
    with FolderLock(out, "bgbias build"):
        with pytest.raises(FolderInUse) as e:
            build_small(folder, out)
    one_sentence(str(e.value), str(out), f"pid {os.getpid()}")
    m = build_small(folder, out)              # free again: the build runs, and leaves no lock file
    assert m["counts"]["kept"] == 6 and not (out / ".bgbias.lock").exists()


def test_cache_files_carry_the_run_token(tmp_path, folder, monkeypatch):
    """A cache file left by another run (same chunk number) is never read as this run's."""
    import bgbias.synth.build_worker as bw

    seen = []
    real = bw._cache_file
    monkeypatch.setattr(bw, "_cache_file", lambda key: seen.append(real(key)) or seen[-1])
    build_small(folder, tmp_path / "out")
    names = {Path(p).name for p in seen}
    assert names and all(n.count(".") == 2 and n.endswith(".bin") and len(n.split(".")[1]) == 12 for n in names)


def test_symlink_at_the_cache_folder_is_refused(tmp_path, folder):
    out, target = tmp_path / "out", tmp_path / "elsewhere"
    build_small(folder, out, variants=("original",))
    (out / "manifest.json").unlink()          # an unfinished build with a planted symlink
    (out / ".bgbias-build.json").write_text(json.dumps(json.loads("{}")))
    target.mkdir()
    (target / "keep.txt").write_text("x")
    os.symlink(target, out / CACHE)
    with pytest.raises(ValueError) as e:
        build_small(folder, out, variants=("original",))
    one_sentence(str(e.value), CACHE, "symlink")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_class_with_no_kept_image_keeps_numbering_and_train_eval_challenge_work(tmp_path, capsys):
    images, masks = folder_dataset(tmp_path / "data", {"a": 3, "b": 0, "c": 3}, bad={"b/0.png": b""})
    out, run = tmp_path / "build", tmp_path / "run"
    m = build_small(FolderSource(str(images), str(masks)), out, holdout=0.34)
    assert m["empty_classes"] == ["b"] and any("b" in w for w in m["warnings"])
    for split in ("train", "val"):
        assert sorted(p.name for p in (out / "original" / split).iterdir()) == ["00_a", "01_b", "02_c"]
    from bgbias.cli import main

    assert main(["train", "--recipe", "baseline", "--data", str(out), "--out", str(run), "--epochs", "1",
                 "--batch-size", "4", "--device", "cpu", "--quiet"]) == 0
    model = ["--model", f"checkpoint:{run / 'model.pt'}", "--data", str(out), "--device", "cpu", "--no-progress"]
    assert main(["eval", *model, "--variants", "original,only_bg_t", "--out", str(tmp_path / "e.json")]) == 0
    assert main(["challenge", *model, "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["n_foregrounds"] == 2     # one val image of a and of c


def test_one_class_mixed_next_is_warned_and_never_self_paired(tmp_path):
    images, masks = folder_dataset(tmp_path / "data", {"only": 4})
    with pytest.warns(UserWarning, match="mixed_next"):
        m = build_small(FolderSource(str(images), str(masks)), tmp_path / "out", variants=("original", "mixed_next"))
    assert m["pairing"]["mixed_next"] == {} and m["variants"]["mixed_next"]["count"] == 0
    assert any("mixed_next" in w for w in m["warnings"])
    assert all(f != b for f, b in m["pairing"]["mixed_next"].items())


def test_hidden_folders_loops_and_root_symlinks_are_listed(tmp_path):
    images, masks = folder_dataset(tmp_path / "data", {"a": 2, "b": 2})
    (images / ".hidden").mkdir()
    (images / ".hidden" / "x.png").write_bytes(png_bytes(image()))
    (images / "a" / ".x.png").write_bytes(png_bytes(image()))
    os.symlink(images / "a" / "loop.png", images / "a" / "loop.png")
    os.symlink(images, images / "zz_root")
    src = FolderSource(str(images), str(masks))
    assert src.classes == ["a", "b"] and len(src) == 4
    why = {d["path"]: d["reason"] for d in src.scan_dropped}
    assert "hidden folder" in why[".hidden/"] and "hidden file" in why["a/.x.png"]
    assert why["a/loop.png"].startswith("symlink_broken") and why["zz_root/"].startswith("symlink_loop")


def test_huge_aspect_image_resize_is_bounded_by_output(monkeypatch):
    """A 1x20000 image at 224x224 never makes the 224x4,480,000 intermediate (gigabytes)."""
    import cv2

    import bgbias.synth.build_worker as bw
    from bgbias.core.sample import Sample

    sizes = []
    real = cv2.resize
    monkeypatch.setattr(bw.cv2, "resize", lambda a, wh, **k: sizes.append(wh) or real(a, wh, **k))
    img = np.random.default_rng(0).integers(0, 255, (1, 20000, 3), dtype=np.uint8)
    mask = np.zeros((1, 20000), np.float32)
    mask[:, 9000:11000] = 1
    s = bw.fit_sample(Sample(img, mask, 0, "x"), (224, 224))
    assert s.image.shape == (224, 224, 3) and s.mask.shape == (224, 224)
    assert sizes and max(w * h for w, h in sizes) <= 4 * 224 * 224 * 2, sizes
    small = Sample(img[:, :300].copy(), mask[:, :300].copy(), 0, "y")   # ordinary shapes: unchanged path
    from bgbias.synth.backgrounds import resize_crop

    assert np.array_equal(bw.fit_sample(small, (32, 32)).image, resize_crop(small.image, (32, 32)))


# ---------------------------------------------------------------- run files and checkpoints

def _bad_pt(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.pt"
    if kind == "zero_byte":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("just some notes, not weights\n")
    elif kind == "pickled_list":
        torch.save([torch.zeros(2), torch.ones(2)], p)
    elif kind == "raw_pickle":
        p.write_bytes(pickle.dumps(["a", {"b": 1}]))
    elif kind == "truncated":
        torch.save({"w": torch.zeros(100)}, p)
        p.write_bytes(p.read_bytes()[:200])
    return p


PT_CASES = {"zero_byte": "is empty", "text": "not a PyTorch file", "pickled_list": "not weights",
            "raw_pickle": "re-save it", "truncated": "Could not read"}


@pytest.mark.parametrize("kind", sorted(PT_CASES))
def test_bad_pretrained_file_is_one_sentence(tmp_path, capsys, kind):
    """``train --pretrained`` on bad files: one sentence, never advising --trust-checkpoint (train has none)."""
    p = _bad_pt(tmp_path, kind)
    err = cli_error(capsys, ["train", "--recipe", "baseline", "--data", "digits", "--out", str(tmp_path / "r"),
                             "--epochs", "1", "--pretrained", str(p), "--device", "cpu", "--quiet"],
                    str(p), PT_CASES[kind])
    assert "--trust-checkpoint" not in err


@pytest.mark.parametrize("kind", ["zero_byte", "text", "truncated"])
def test_bad_checkpoint_for_eval_is_one_sentence(tmp_path, kind):
    from bgbias.models.load import load_model

    p = _bad_pt(tmp_path, kind)
    with pytest.raises(ValueError) as e:
        load_model(f"checkpoint:{p}")
    one_sentence(str(e.value), str(p))


def test_train_refuses_an_existing_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"earlier run")
    cli_error(capsys, ["train", "--recipe", "baseline", "--data", "digits", "--out", str(run), "--epochs", "1",
                       "--quiet"], str(run), "--resume")
    assert (run / "model.pt").read_bytes() == b"earlier run"


# ---------------------------------------------------------------- unwritable outputs

def test_atomic_write_failure_names_path_and_cause(tmp_path, monkeypatch):
    import errno

    def full(fd, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("bgbias.core.io.os.fdopen", full)
    with pytest.raises(ValueError) as e:
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    one_sentence(str(e.value), str(tmp_path / "x.bin"), "ENOSPC")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["build", "eval", "challenge", "report", "train"])
def test_unwritable_output_is_one_sentence_before_compute(tmp_path, capsys, monkeypatch, command):
    """The output's folder is a file (not writable even for root): one sentence naming it, before any compute."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    import bgbias.audit.challenge as ch
    import bgbias.audit.evaluate as ev

    def no_compute(*a, **k):
        raise AssertionError("computed before checking the output")

    monkeypatch.setattr(ev, "evaluate", no_compute)
    monkeypatch.setattr(ch, "run_challenge", no_compute)
    model = ["--model", "module:_layouts:mean_colour", "--data", str(tmp_path), "--device", "cpu"]
    argv = {"build": ["build", "digits", "--out", str(blocker / "out"), "--variants", "original", "--quiet"],
            "eval": ["eval", *model, "--out", str(blocker / "e.json")],
            "challenge": ["challenge", *model, "--out", str(blocker / "c.json")],
            "report": ["report", str(_eval_json(tmp_path)), "--out", str(blocker / "r.html")],
            "train": ["train", "--recipe", "baseline", "--data", "digits", "--out", str(blocker / "run"),
                      "--epochs", "1", "--quiet"]}[command]
    cli_error(capsys, argv, str(blocker))


def _eval_json(tmp_path: Path) -> Path:
    p = tmp_path / "eval.json"
    p.write_text(json.dumps({"kind": "bgbias-eval/1", "model": "m", "classes": ["a"], "variants": {}}))
    return p


def test_check_writable_leaves_nothing(tmp_path):
    from bgbias.core.io import check_writable

    check_writable(tmp_path / "new" / "x.json")
    assert [p.name for p in (tmp_path / "new").iterdir()] == []
