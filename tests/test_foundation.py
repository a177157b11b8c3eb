"""Sample conversion at the edge, atomic I/O, the IN-9 layout helpers, seeding, checkpoints."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import bgbias.core.io as io
import bgbias.core.layout as layout
import bgbias.core.seeding as seeding
import bgbias.models.checkpoint as checkpoint
from bgbias.core.sample import (
    BadSample,
    Sample,
    check_mask_usable,
    mask_box,
    to_mask,
    to_rgb_uint8,
)
from bgbias.models.nets import create_arch, list_archs


@pytest.mark.parametrize("mode,shape", [("L", (5, 7)), ("RGBA", (5, 7, 4)), ("P", (5, 7)), ("I;16", (5, 7)),
                                        ("RGB", (5, 7, 3)), ("1", (5, 7))])
def test_read_image_converts_every_mode_to_rgb_uint8(tmp_path, mode, shape):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        arr = (rng.integers(0, 65535, size=shape)).astype(np.uint16)
        im = Image.fromarray(arr)  # PIL picks I;16 for uint16
    elif mode == "1":
        im = Image.fromarray(rng.integers(0, 2, size=shape).astype(bool))
    else:
        arr = rng.integers(0, 255, size=shape, dtype=np.uint8)
        im = Image.fromarray(arr if mode != "P" else arr, mode="L" if mode == "P" else None)
        if mode == "P":
            im = im.convert("P")
    p = tmp_path / "x.png"
    im.save(p)
    out = io.read_image(p)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)


def test_read_image_rejects_non_image_with_reason(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("not an image")
    with pytest.raises(BadSample, match="unreadable image notes.png"):
        io.read_image(p)


def test_to_mask_scales_and_checks_size():
    assert to_mask(np.array([[0, 255]], dtype=np.uint8)).tolist() == [[0.0, 1.0]]
    assert to_mask(np.array([[0, 1]], dtype=np.uint8)).tolist() == [[0.0, 1.0]]
    assert to_mask(np.array([[False, True]])).dtype == np.float32
    with pytest.raises(BadSample, match="differs from image size"):
        to_mask(np.zeros((4, 4)), shape=(5, 5))
    with pytest.raises(BadSample, match="empty"):
        check_mask_usable(np.zeros((4, 4), np.float32))
    with pytest.raises(BadSample, match="whole image"):
        check_mask_usable(np.ones((4, 4), np.float32))


def test_to_rgb_handles_float_and_16bit():
    assert to_rgb_uint8(np.ones((2, 2), np.float32))[0, 0].tolist() == [255, 255, 255]
    assert to_rgb_uint8(np.full((2, 2), 65535, np.uint16))[0, 0, 0] == 255


def test_sample_boxes_default_to_mask_box():
    m = np.zeros((10, 10), np.float32)
    m[2:5, 3:8] = 1
    s = Sample(np.zeros((10, 10, 3), np.uint8), m, 0, "a")
    assert s.object_boxes() == ((3, 2, 8, 5),) == (mask_box(m),)
    assert s.with_(boxes=((0, 0, 1, 1),)).object_boxes() == ((0, 0, 1, 1),)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    io.write_json(tmp_path / "a" / "x.json", {"b": 1, "a": np.int64(2)})
    io.write_npy(tmp_path / "m.npy", np.eye(3, dtype=np.float32))
    io.write_png(tmp_path / "i.png", np.zeros((4, 4, 3), np.uint8))
    assert io.read_json(tmp_path / "a" / "x.json") == {"a": 2, "b": 1}
    assert io.read_mask(tmp_path / "m.npy").shape == (3, 3)
    assert io.read_image(tmp_path / "i.png").shape == (4, 4, 3)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_layout_names_and_containment(tmp_path):
    assert layout.class_dirname(3, "wheeled vehicle", 9) == "03_wheeled_vehicle"
    assert layout.class_dirname(3, "../../etc", 200) == "003_etc"
    assert layout.parse_class_dirname("08_fish") == (8, "fish")
    with pytest.raises(ValueError, match="outside the output folder"):
        layout.safe_join(tmp_path, "..", "escape.png")
    p = layout.image_path(tmp_path, "original", "00_dog", "a")
    assert tmp_path.resolve() in p.parents


def test_layout_lists_items_in_release_layout(tmp_path):
    for cls in ("00_dog", "01_bird"):
        for stem in ("b", "a"):
            io.write_png(tmp_path / "original" / "val" / cls / f"{stem}.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "fg_mask" / "val").mkdir(parents=True)
    items = layout.list_items(tmp_path, "original")
    assert [(i.label, i.id) for i in items] == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert layout.list_classes(tmp_path) == ["dog", "bird"]
    assert layout.list_variant_dirs(tmp_path) == ["original"]
    with pytest.raises(ValueError, match="Variant 'mixed_rand' is missing"):
        layout.list_items(tmp_path, "mixed_rand")


def test_seeding_is_stable_and_key_dependent():
    assert seeding.derive_seed(0, "a", "mixed_rand") == seeding.derive_seed(0, "a", "mixed_rand")
    assert seeding.derive_seed(0, "a") != seeding.derive_seed(1, "a")
    a = torch.rand(3, generator=seeding.torch_generator(0, "x"))
    b = torch.rand(3, generator=seeding.torch_generator(0, "x"))
    assert torch.equal(a, b)


class Evil:
    """Any custom class in a pickle is refused by weights_only loading."""


def test_checkpoint_round_trip_and_refusal(tmp_path):
    net = create_arch("small-cnn", num_classes=4)
    meta = {"arch": "small-cnn", "arch_kwargs": {}, "classes": list("abcd")}
    checkpoint.save_checkpoint(tmp_path / "m.pt", net.state_dict(), meta)
    ck = checkpoint.load_checkpoint(tmp_path / "m.pt")
    net2 = create_arch(ck["meta"]["arch"], num_classes=4)
    net2.load_state_dict(ck["state_dict"])
    x = torch.rand(2, 3, 28, 28)
    net.eval(), net2.eval()
    assert torch.equal(net(x), net2(x))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a bgbias checkpoint"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
        checkpoint.load_checkpoint(tmp_path / "plain.pt")


def test_arch_registry_lists_and_builds():
    assert "small_cnn" in list_archs() and "resnet18" in list_archs("resnet*")
    assert create_arch("resnet18", num_classes=3).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_cli_imports_only_the_invoked_command():
    """``bgbias report ...`` must not pay for torch (imported by other commands' options); all commands stay listed."""
    import subprocess
    import sys

    code = ("import sys\nfrom bgbias.cli import main\ntry:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: bgbias report" in out and out.strip().endswith("TORCH False")
    from bgbias.cli import build_parser

    names = build_parser()._subparsers._group_actions[0].choices
    assert {"build", "eval", "challenge", "saliency", "train", "report", "demo", "masks"} <= set(names)
