"""``bgbias build``: layout, manifest, variant meanings on disk, pairing, determinism, resume, bad input."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ArraySource, make_image_and_mask

from bgbias.cli import main
from bgbias.core.sample import Sample
from bgbias.synth.build import PARTIAL, BuildConfig, build, parse_size
from bgbias.synth.build_worker import fit_sample

VARIANTS = ("in9", "texture:stripes", "color:red", "mean")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory, digits_source):
    out = tmp_path_factory.mktemp("build") / "out"
    cfg = BuildConfig(variants=VARIANTS, seed=0, chunk_size=16)
    manifest = build(digits_source, out, cfg, workers=1, progress=False)
    return out, manifest, cfg


def test_layout_and_manifest(built):
    out, m, _ = built
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == sorted(["color_red", "fg_mask", "manifest.json", "mean", "mixed_next", "mixed_rand", "mixed_same",
                           "no_fg", "only_bg_b", "only_bg_t", "only_fg", "original", "texture_stripes_8"])
    assert m == json.loads((out / "manifest.json").read_text())
    assert m["counts"] == {"total": 60, "kept": 60, "dropped": 0, "missing_variant_images": 0, "by_reason": {}}
    assert m["splits"] == {"val": 60} and set(m["split_of"].values()) == {"val"}, "no --holdout: all val, as before"
    assert m["tool"] == "bgbias" and m["seed"] == 0 and m["config"]["variants"][-1] == "mean"
    assert m["classes"][3] == "three" and m["source"]["n"] == 60
    for name, v in m["variants"].items():
        files = list((out / v["dirname"] / "val").glob("*/*.png"))
        assert len(files) == v["count"] == 60, name
    assert len(list((out / "fg_mask" / "val" / "03_three").glob("*.npy"))) == 6
    assert not (out / PARTIAL).exists()


def _load(out, sid, m, variant="original"):
    s = next(x for x in m["samples"] if x["id"] == sid)
    img = _png(out / variant / "val" / s["class_dir"] / f"{sid}.png")
    mask = np.load(out / "fg_mask" / "val" / s["class_dir"] / f"{sid}.npy")
    return img, mask, s["label"]


@pytest.mark.parametrize("variant,rule", [("mixed_same", lambda y, yb: yb == y),
                                          ("mixed_next", lambda y, yb: yb == (y + 1) % 10),
                                          ("mixed_rand", lambda y, yb: True)])
def test_mixed_pairing_through_the_manifest(built, variant, rule):
    out, m, _ = built
    pairs = m["pairing"][variant]
    assert len(pairs) == 60
    for fg, bg in list(pairs.items())[::7]:
        assert fg != bg
        img, mask, y = _load(out, fg, m)
        mixed, _, _ = _load(out, fg, m, variant)
        partner_bg, _, yb = _load(out, bg, m, "only_bg_t")
        assert rule(y, yb)
        assert np.array_equal(mixed[mask == 1], img[mask == 1])
        assert np.array_equal(mixed[mask == 0], partner_bg[mask == 0])
    rand_classes = {next(s["label"] for s in m["samples"] if s["id"] == b) for b in m["pairing"]["mixed_rand"].values()}
    assert len(rand_classes) > 3, "mixed_rand draws from many classes"


def test_written_variants_keep_their_meaning(built):
    out, m, _ = built
    for s in m["samples"][::9]:
        img, mask, _ = _load(out, s["id"], m)
        only_fg = _load(out, s["id"], m, "only_fg")[0]
        no_fg = _load(out, s["id"], m, "no_fg")[0]
        assert (only_fg[mask == 0] == 0).all() and np.array_equal(only_fg[mask == 1], img[mask == 1])
        assert (no_fg[mask == 1] == 0).all() and np.array_equal(no_fg[mask == 0], img[mask == 0])
        for v in ("texture_stripes_8", "color_red", "mean"):
            other = _load(out, s["id"], m, v)[0]
            assert np.array_equal(other[mask == 1], img[mask == 1]), v
        assert (_load(out, s["id"], m, "color_red")[0][mask == 0] == (255, 0, 0)).all()


def test_workers_give_byte_identical_output(built, tmp_path, digits_source):
    out, _, cfg = built
    build(digits_source, tmp_path / "w2", cfg, workers=2, progress=False)
    assert _tree(tmp_path / "w2") == _tree(out)


def test_ray_executor_gives_byte_identical_output(built, tmp_path, digits_source):
    """Runs where the optional extra is installed (pip install 'bgbias[ray]'); a local Ray cluster of 2."""
    ray = pytest.importorskip("ray")
    out, _, cfg = built
    try:
        build(digits_source, tmp_path / "ray", cfg, workers=2, executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert _tree(tmp_path / "ray") == _tree(out)


def test_resume_completes_only_missing_files_byte_identically(built, tmp_path, digits_source):
    out, _, cfg = built
    part = tmp_path / "part"
    shutil.copytree(out, part)
    files = sorted(p for p in part.rglob("*.png"))
    gone = files[::5]
    for p in gone:
        p.unlink()
    (part / "manifest.json").rename(part / PARTIAL)        # as if killed before the manifest was written
    (part / "original" / "val" / "00_zero" / ".digits_00000.png.abc123.tmp").write_bytes(b"half a file")
    keep = files[1]
    before = keep.stat().st_mtime_ns
    build(digits_source, part, cfg, workers=1, progress=False)
    assert _tree(part) == _tree(out)
    assert keep.stat().st_mtime_ns == before, "existing files are not rewritten"


def test_a_different_build_in_the_same_folder_is_refused(built, digits_source, tmp_path):
    out, _, cfg = built
    with pytest.raises(ValueError, match="different config"):
        build(digits_source, out, BuildConfig(variants=VARIANTS, seed=1), progress=False)
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        build(digits_source, tmp_path, cfg, progress=False)


def test_bad_inputs_are_skipped_counted_and_named(bad_folder, tmp_path):
    images, masks = bad_folder
    from bgbias.sources.base import create_source

    m = build(create_source(f"folder:{images}", masks=str(masks)), tmp_path / "o",
              BuildConfig(variants=("in9",)), progress=False)
    why = {d["id"]: (d["stage"], d["rule"]) for d in m["dropped"]}
    assert why["cat/notes.txt"] == ("scan", "not_an_image")
    assert why["cat_corrupt"] == ("load", "image_unreadable") and "unreadable image" in _reason(m, "cat_corrupt")
    assert why["dog_wrong_size"] == ("load", "mask_size") and "differs from image size" in _reason(m, "dog_wrong_size")
    assert why["dog_empty_mask"] == ("mask", "mask_empty")
    assert why["bird_full_mask"] == ("mask", "mask_full")
    assert why["bird_no_mask"] == ("load", "mask_missing")
    # every reason carries its real values, never a placeholder
    assert "bird/no_mask.png" in _reason(m, "bird_no_mask") and str(masks) in _reason(m, "bird_no_mask")
    assert _values(m, "bird_no_mask")["file"] == "bird/no_mask.png"
    assert _values(m, "dog_empty_mask") == {"fraction": 0.0, "size": "44x36"}
    assert _values(m, "bird_full_mask")["fraction"] == 1.0
    assert not any("<" in d["reason"] for d in m["dropped"])
    assert m["counts"]["by_reason"]["mask_missing"] == 1
    kept = {s["id"] for s in m["samples"]}
    assert {"cat_mode_L", "cat_mode_RGBA", "cat_mode_P", "cat_mode_16bit"} <= kept
    assert m["counts"]["kept"] == 16 and m["counts"]["dropped"] == 6 and sum(m["counts"]["by_reason"].values()) == 6
    assert _png(tmp_path / "o" / "original" / "val" / "01_cat" / "cat_mode_16bit.png").shape == (36, 44, 3)


def _reason(m, sid):
    return next(d["reason"] for d in m["dropped"] if d["id"] == sid)


def _values(m, sid):
    return next(d["values"] for d in m["dropped"] if d["id"] == sid)


def test_hostile_class_names_never_escape_out(tmp_path):
    src = ArraySource(n=9, classes=("../evil", "a/b", ".."), bad={4: 0.0})
    out = tmp_path / "o"
    m = build(src, out, BuildConfig(variants=("in9",)), progress=False)
    assert sorted(p.name for p in (out / "original" / "val").iterdir()) == ["00_evil", "01_a_b", "02_unnamed"]
    assert all(out.resolve() in p.resolve().parents for p in tmp_path.rglob("*") if p.is_file())
    assert m["counts"]["dropped"] == 1 and m["dropped"][0]["id"] == "gen_004"
    assert "gen_004" not in m["pairing"]["mixed_rand"].values()


def test_size_none_keeps_each_size_and_fits_partner_backgrounds(tmp_path):
    class Varied(ArraySource):
        def load(self, i):
            img, mask = make_image_and_mask(24 + 4 * (i % 3), 30 + 2 * i, i)
            return Sample(img, mask, self._labels[i], self._ids[i])

    m = build(Varied(n=6), tmp_path / "o", BuildConfig(variants=("original", "mixed_rand", "mean")), progress=False)
    for s in m["samples"]:
        o = _png(tmp_path / "o" / "original" / "val" / s["class_dir"] / f"{s['id']}.png")
        for v in ("mixed_rand", "mean"):
            assert _png(tmp_path / "o" / v / "val" / s["class_dir"] / f"{s['id']}.png").shape == o.shape


def test_size_resizes_image_mask_and_boxes_together(image_folder, tmp_path):
    img, mask = make_image_and_mask(40, 80, 0)
    s = fit_sample(Sample(img, mask, 0, "x", boxes=((20, 10, 60, 30),)), (20, 20))
    assert s.image.shape == (20, 20, 3) and s.mask.shape == (20, 20) and s.boxes == ((0, 5, 20, 15),)
    assert parse_size("224x160") == (224, 160) and parse_size("none") is None and parse_size("32") == (32, 32)
    with pytest.raises(ValueError, match="HxW"):
        parse_size("big")
    images, masks = image_folder
    rc = main(["build", f"folder:{images}", "--masks", str(masks), "--out", str(tmp_path / "o"), "--size", "16x16",
               "--variants", "original,only_fg", "--workers", "1", "--quiet"])
    assert rc == 0
    for p in (tmp_path / "o").rglob("*.png"):
        assert _png(p).shape == (16, 16, 3)
    assert all(np.load(p).shape == (16, 16) for p in (tmp_path / "o" / "fg_mask").rglob("*.npy"))


def test_cli_spurious_build_is_recorded(image_folder, tmp_path, capsys):
    images, masks = image_folder
    out = tmp_path / "o"
    rc = main(["build", f"folder:{images}", "--masks", str(masks), "--out", str(out), "--variants", "original",
               "--spurious", "1", "--spurious-families", "color:red,color:blue", "--workers", "1", "--quiet"])
    assert rc == 0 and "wrote 1 variants of 12 images" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    sp = m["source"]["spurious"]
    assert sp["rho"] == 1.0 and sp["per_class"] == {"bird": "color:red", "cat": "color:blue", "dog": "color:red"}
    s = m["samples"][0]
    img = _png(out / "original" / "val" / s["class_dir"] / f"{s['id']}.png")
    mask = np.load(out / "fg_mask" / "val" / s["class_dir"] / f"{s['id']}.npy")
    assert (img[mask == 0] == (255, 0, 0)).all()


def test_cli_errors_are_one_sentence(tmp_path, capsys):
    assert main(["build", "digitz", "--out", str(tmp_path / "a")]) == 2
    assert "Unknown source 'digitz'; valid:" in capsys.readouterr().err
    assert main(["build", "digits", "--out", str(tmp_path / "b"), "--variants", "mixd_rand"]) == 2
    assert "Unknown variant 'mixd_rand'; valid:" in capsys.readouterr().err
    try:
        import ray  # noqa: F401
    except ImportError:
        assert main(["build", "digits", "--out", str(tmp_path / "c"), "--executor", "ray", "--quiet"]) == 2
        assert "pip install 'bgbias[ray]'" in capsys.readouterr().err
        assert not (tmp_path / "c").exists(), "a refused build leaves nothing behind"
