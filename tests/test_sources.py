"""Sources: digits, mnist IDX, folder (+ masks), in9 layout, spurious wrapper; stable ids; bad input at the edge."""
import gzip
import struct

import numpy as np
import pytest
from conftest import make_image_and_mask

from bgbias.core.sample import BadSample
from bgbias.sources.base import SubsetSource, create_source, list_sources, unique_ids
from bgbias.synth.spurious import SpuriousSource


def test_digits_source_is_cheap_stable_and_well_formed():
    src = create_source("digits")
    assert len(src) == 1797 and len(set(src.ids())) == 1797
    assert src.ids()[42] == "digits_00042" and src.labels()[:3] == [0, 1, 2]
    s = src.load(42)
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert s.mask.dtype == np.float32 and s.mask.min() >= 0 and s.mask.max() == 1
    assert (s.image[s.mask == 1] == 255).all(), "stroke core is pure white"
    bg = s.image[s.mask == 0]
    assert (bg == bg[0]).all() and (bg[0] < 200).all(), "background is one plain colour"
    assert s.id == "digits_00042" and s.label == src.labels()[42]
    assert np.array_equal(s.image, src.load(42).image)
    assert create_source("digits:64").load(0).image.shape == (64, 64, 3)
    assert (create_source("digits", background="black").load(0).image[0, 0] == 0).all()


def _write_idx(path, arr, gz):
    data = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = (rng.random((5, 28, 28)) > 0.7).astype(np.uint8) * 255
    ext = ".gz" if gz else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", imgs, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", np.array([3, 1, 4, 1, 5], np.uint8), gz)
    src = create_source(f"mnist:{tmp_path}")
    assert len(src) == 5 and src.labels() == [3, 1, 4, 1, 5] and src.ids()[2] == "mnist_t10k_00002"
    s = src.load(2)
    assert s.image.shape == (28, 28, 3) and np.array_equal(s.mask, (imgs[2] > 0).astype(np.float32))


def test_mnist_missing_files_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="No MNIST files"):
        create_source(f"mnist:{tmp_path}")


def test_folder_source_with_masks(image_folder):
    images, masks = image_folder
    src = create_source(f"folder:{images}", masks=str(masks))
    assert src.classes == ["bird", "cat", "dog"] and len(src) == 12
    assert src.ids()[0] == "bird_img_0" and src.scan_dropped == []
    s = src.load(0)
    assert s.label == 0 and s.image.shape == (36, 44, 3) and set(np.unique(s.mask)) <= {0.0, 1.0}
    nomask = create_source(f"folder:{images}").load(0)
    assert nomask.mask is None


def test_folder_bad_inputs_are_converted_or_explained(bad_folder):
    images, masks = bad_folder
    src = create_source(f"folder:{images}", masks=str(masks))
    assert {d["path"]: (d["rule"], d["reason"]) for d in src.scan_dropped} == {
        "cat/notes.txt": ("not_an_image", "not an image file (.txt)")}
    reasons = {}
    for i, sid in enumerate(src.ids()):
        try:
            s = src.load(i)
            assert s.image.dtype == np.uint8 and s.image.shape[2] == 3 and s.mask.shape == s.image.shape[:2]
        except BadSample as e:
            assert e.sample_id == sid
            reasons[sid] = e.reason
    assert set(reasons) == {"cat_corrupt", "dog_wrong_size", "bird_no_mask"}
    assert "unreadable image corrupt.png" in reasons["cat_corrupt"]
    assert "differs from image size" in reasons["dog_wrong_size"]
    assert "no mask file" in reasons["bird_no_mask"]


def test_in9_layout_source(tmp_path):
    from PIL import Image

    for c, name in enumerate(("dog", "bird")):
        for k in range(2):
            img, m = make_image_and_mask(24, 24, c * 2 + k)
            d = tmp_path / "original" / "val" / f"0{c}_{name}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"n0{c}_{k}.JPEG")
            md = tmp_path / "fg_mask" / "val" / f"0{c}_{name}"
            md.mkdir(parents=True, exist_ok=True)
            np.save(md / f"n0{c}_{k}.npy", m.astype(np.uint8))
    src = create_source(f"in9:{tmp_path}")
    assert src.classes == ["dog", "bird"] and src.labels() == [0, 0, 1, 1] and src.ids()[3] == "n01_1"
    assert src.load(3).mask.shape == (24, 24)
    with pytest.raises(ValueError, match="not an IN-9 folder"):
        create_source(f"in9:{tmp_path / 'nope'}")


def test_unique_ids_sanitise_and_deduplicate():
    assert unique_ids(["a/b c", "a_b_c", "../x", ""]) == ["a_b_c", "a_b_c_2", "x", "unnamed"]


def test_unknown_source_and_wrong_option_errors_list_valid_names():
    assert {"digits", "mnist", "folder", "in9"} <= set(list_sources())
    with pytest.raises(ValueError, match="Unknown source 'digit'; valid: .*digits"):
        create_source("digit")
    with pytest.raises(ValueError, match="does not take option.*masks"):
        create_source("digits", masks="x")


def test_builtin_readers_load_in_a_fresh_process_that_imports_them_first():
    """A pool worker unpickles a reader before anything imported bgbias.sources.base (the plugin has no import cycle)."""
    import pickle
    import subprocess
    import sys

    code = "import pickle, sys; s = pickle.load(sys.stdin.buffer); print(s.load(3).id, sorted(s.describe()))"
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(create_source("digits")),
                         capture_output=True, check=True).stdout.decode()
    assert out.startswith("digits_00003 ") and "'background'" in out


def test_spurious_source_follows_rho(digits_source):
    fams = ["color:red", "color:green", "color:blue"]
    always = SpuriousSource(digits_source, rho=1.0, families=fams, seed=0)
    for i in range(0, len(always), 7):
        s, base = always.load(i), digits_source.load(i)
        want = {"color:red": (255, 0, 0), "color:green": (0, 255, 0), "color:blue": (0, 0, 255)}[fams[s.label % 3]]
        assert (s.image[base.mask == 0] == want).all()
        assert np.array_equal(s.image[base.mask == 1], base.image[base.mask == 1])
    half = SpuriousSource(create_source("digits"), rho=0.5, families=fams, seed=1)
    d = half.describe()["spurious"]
    assert d["per_class"]["zero"] == "color:red" and 0.4 < d["on_class_family"] < 0.6
    with pytest.raises(ValueError, match="rho"):
        SpuriousSource(digits_source, rho=1.5)
    with pytest.raises(ValueError, match="needs a dataset"):
        SpuriousSource(digits_source, families=["mean", "color:red"])


def test_subset_source_keeps_ids_and_labels(digits_source):
    assert isinstance(digits_source, SubsetSource) and len(digits_source) == 60
    assert digits_source.labels().count(3) == 6


def test_detection_and_classification_sources_share_one_index_base():
    from bgbias.detect.data import DetSource, create_det_source
    from bgbias.sources.base import IndexedSource, Source, create_source

    assert issubclass(Source, IndexedSource) and issubclass(DetSource, IndexedSource)
    assert not issubclass(DetSource, Source)            # no labels(): a detection image has many objects
    det, cls = create_det_source("digits-det:6:64"), create_source("digits")
    assert len(det) == len(det.ids()) == 6 and det.scan_dropped == []
    assert list(det.describe())[:5] == ["spec", "type", "n", "categories", "scan_dropped"]
    assert list(cls.describe())[:5] == ["spec", "type", "n", "classes", "scan_dropped"]
    assert det.describe()["categories"] == det.categories and repr(det) == "DigitsDetSource('digits-det:6:64', n=6)"
