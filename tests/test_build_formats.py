"""Builds the official IN-9 scripts read unchanged: ``.JPEG`` images named like the release, binary masks."""
from __future__ import annotations

import json

import _layouts as L
import numpy as np
import pytest
import torch

from bgbias.cli import main
from bgbias.core.io import read_image
from bgbias.core.layout import list_items
from bgbias.synth.build import BuildConfig, build

VARIANTS = ("original", "only_bg_t", "only_fg", "mixed_rand")


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def jpeg_build(tmp_path_factory, digits_source):
    out = tmp_path_factory.mktemp("jpeg") / "out"
    build(digits_source, out, BuildConfig(variants=VARIANTS, image_format="jpeg", mask_threshold=0.5),
          workers=1, progress=False)
    return out


def test_jpeg_build_has_the_release_names(jpeg_build):
    out = jpeg_build
    images = [f for f in _files(out) if f.split("/")[0] in VARIANTS]
    assert images and all(f.endswith(".JPEG") for f in images)
    # what MadryLab's challenge_eval.py does: for every fg_mask file, open original/val/<class>/<name>.JPEG
    masks = sorted((out / "fg_mask" / "val").rglob("*.npy"))
    assert masks
    for m in masks:
        assert (out / "original" / "val" / m.parent.name / (m.stem + ".JPEG")).is_file()
    assert read_image(next(iter(sorted((out / "original" / "val").rglob("*.JPEG"))))).dtype == np.uint8
    assert {it.id for it in list_items(out, "original")} == {m.stem for m in masks}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["image_format"] == "jpeg" and manifest["config"]["mask_threshold"] == 0.5


def test_binary_masks_read_the_same_as_the_official_uint8_cast(jpeg_build):
    for m in sorted((jpeg_build / "fg_mask" / "val").rglob("*.npy"))[:20]:
        mask = np.load(m)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        np.testing.assert_array_equal(mask.astype(np.uint8).astype(np.float32), mask)


def test_jpeg_builds_are_deterministic_whatever_the_workers(jpeg_build, tmp_path, digits_source):
    again = tmp_path / "w2"
    build(digits_source, again, BuildConfig(variants=VARIANTS, image_format="jpeg", mask_threshold=0.5),
          workers=2, progress=False)
    for f in _files(jpeg_build):
        if f.endswith((".JPEG", ".npy")):
            assert (again / f).read_bytes() == (jpeg_build / f).read_bytes(), f


def test_bad_format_options_fail_in_one_sentence(tmp_path, digits_source):
    with pytest.raises(ValueError, match="Unknown image format 'gif'; valid: jpeg, png"):
        BuildConfig(image_format="gif")
    with pytest.raises(ValueError, match="mask threshold must be in \\(0, 1\\]"):
        BuildConfig(mask_threshold=1.5)


def test_cli_options(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["build", "digits", "--out", str(out), "--variants", "original,only_bg_t", "--image-format",
                 "jpeg", "--binary-masks", "--quiet", "--workers", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())["config"]
    assert m["image_format"] == "jpeg" and m["mask_threshold"] == 0.5


def test_challenge_warns_when_masks_are_soft(tmp_path, capsys):
    root = L.colour_layout(tmp_path / "d")
    common = ["--model", "module:_layouts:mean_colour", "--data", str(root), "--device", "cpu", "--no-progress",
              "--fool-subset", "2"]
    assert main(["challenge", *common, "--out", str(tmp_path / "a.json")]) == 0
    assert "soft" not in capsys.readouterr().err
    assert json.loads((tmp_path / "a.json").read_text())["masks"]["soft"] == 0
    for m in (root / "fg_mask" / "val").rglob("*.npy"):
        np.save(m, np.load(m) * np.float32(0.6))
    assert main(["challenge", *common, "--out", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert "soft" in err and "--binary-masks" in err
    r = json.loads((tmp_path / "b.json").read_text())["masks"]
    assert r["soft"] == r["checked"] == 12
