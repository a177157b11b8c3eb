"""A detection build writes the same bytes for any worker count (and resumes to the same bytes)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from bgbias.detect.build import CHUNK, DetBuildConfig, build_detection
from bgbias.detect.data import create_det_source

VARIANTS = ("original", "color:red", "mean", "texture:stripes", "only_bg", "only_bg_b", "mixed_rand")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("detw") / "serial"
    build_detection(create_det_source("digits-det:40"), out, DetBuildConfig(VARIANTS, seed=1))
    return out


def test_same_bytes_for_any_worker_count(serial, tmp_path):
    src = create_det_source("digits-det:40")
    assert len(src) > CHUNK, "several tasks, so workers really split the work"
    want = _digest(serial)
    assert any(k.startswith("mixed_rand/") and k.endswith(".png") for k in want)
    out = tmp_path / "two"
    build_detection(src, out, DetBuildConfig(VARIANTS, seed=1), workers=2)
    assert _digest(out) == want


def test_resumed_parallel_build_matches(serial, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(serial, out)
    for p in list((out / "color_red").rglob("*.png"))[::2] + list((out / "mixed_rand").rglob("*.png"))[::3]:
        p.unlink()
    (out / "manifest.json").unlink()
    build_detection(create_det_source("digits-det:40"), out, DetBuildConfig(VARIANTS, seed=1), workers=2)
    assert _digest(out) == _digest(serial)


def test_unknown_executor_is_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="Unknown executor 'spark'"):
        build_detection(create_det_source("digits-det:8"), tmp_path / "x", DetBuildConfig(("original",)),
                        executor="spark")
