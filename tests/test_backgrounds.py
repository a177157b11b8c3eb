"""Background families: shapes, ranges, determinism from the generator, any size; Only-BG-T tiling; dataset mean."""
import numpy as np
import pytest
import torch
from PIL import Image

from bgbias.core.sample import BadSample, Sample
from bgbias.synth.backgrounds import (
    create_background,
    list_backgrounds,
    only_bg_t,
    parse_color,
    resize_crop,
)
from bgbias.synth.textures import TEXTURES, register_texture


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def photo_dir(tmp_path):
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(30, 50), (60, 40), (25, 25)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"p{k}.png")
    return tmp_path


def _renderable(photo_dir):
    specs = [n for n in list_backgrounds() if n not in ("tiled", "photos", "mean", "mean_color")]
    return specs + ["color:#ff8800", "texture:noise:0.5", "texture:stripes:3", f"photos:{photo_dir}"]


@pytest.mark.parametrize("size", [(32, 32), (17, 45)])
def test_render_shape_range_and_determinism(photo_dir, size):
    for spec in _renderable(photo_dir):
        bg = create_background(spec)
        a = bg.render(3, size, _gen(1))
        assert a.shape == (3, 3, *size) and a.dtype == torch.float32, spec
        assert float(a.min()) >= 0 and float(a.max()) <= 1, spec
        assert torch.equal(a, bg.render(3, size, _gen(1))), f"{spec} is not deterministic"
        one = bg.for_sample(Sample(np.zeros((*size, 3), np.uint8), None, 0, "x"), generator=_gen(1))
        assert one.dtype == np.uint8 and one.shape == (*size, 3)


@pytest.mark.parametrize("name", TEXTURES.names())
def test_textures_vary_with_the_generator_and_have_two_tones(name):
    bg = create_background(f"texture:{name}")
    a, b = bg.render(2, (40, 40), _gen(1)), bg.render(2, (40, 40), _gen(2))
    assert not torch.equal(a, b)
    flat = a[0].reshape(3, -1).T
    assert len(torch.unique(flat, dim=0)) == 2, "a texture is a two-colour pattern"


def test_noise_rate_follows_parameter():
    for p in (0.05, 0.5):
        x = create_background(f"texture:noise:{p}").render(1, (200, 200), _gen(0))[0]
        second = (x != x[:, :1, :1].expand_as(x)).any(0).float().mean()
        share = min(float(second), 1 - float(second))
        assert abs(share - p) < 0.02 or abs((1 - share) - p) < 0.02


def test_border_is_a_frame_of_the_given_width():
    x = create_background("texture:border:3").render(1, (20, 30), _gen(0))[0]
    edge, inner = x[:, 0, 0], x[:, 10, 15]
    assert not torch.equal(edge, inner)
    assert torch.equal(x[:, 2, 15], edge) and torch.equal(x[:, 3, 15], inner)


def test_solid_colours_and_errors():
    assert parse_color("red") == (255, 0, 0) and parse_color("#FF8800") == (255, 136, 0)
    x = create_background("color:#ff8800").render(2, (4, 5))
    assert torch.allclose(x[:, :, 0, 0], torch.tensor([1.0, 136 / 255, 0.0]).expand(2, 3))
    assert create_background("color:#FF8800").name == "color:#ff8800"
    with pytest.raises(ValueError, match="Unknown colour 'redd'; valid: black"):
        create_background("color:redd")
    with pytest.raises(ValueError, match="Unknown texture 'strips'; valid: "):
        create_background("texture:strips")
    with pytest.raises(ValueError, match="rate in"):
        create_background("texture:noise:2")
    with pytest.raises(ValueError, match="Unknown background 'colour'; valid: .*color"):
        create_background("colour:red")


def test_duplicate_texture_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_texture("stripes", 8)(lambda *a: None)


def test_mean_background_is_the_mean_of_background_pixels():
    h, w = 4, 6
    imgs = [np.full((h, w, 3), v, np.uint8) for v in (0, 100, 200)]
    masks = [np.zeros((h, w), np.float32) for _ in range(3)]
    masks[2][:, :3] = 1.0                      # image 3's left half is foreground: not counted there
    samples = [Sample(i, m, 0, f"m{k}") for k, (i, m) in enumerate(zip(imgs, masks))]
    bg = create_background("mean").fit(samples)
    x = bg.render(1, (h, w))[0]
    assert torch.allclose(x[:, 0, 0], torch.full((3,), 50 / 255), atol=1e-6)     # (0 + 100) / 2
    assert torch.allclose(x[:, 0, 5], torch.full((3,), 100 / 255), atol=1e-6)    # (0 + 100 + 200) / 3
    col = create_background("mean_color").fit(samples).render(1, (2, 2))[0]
    want = (0 * 24 + 100 * 24 + 200 * 12) / 60 / 255
    assert torch.allclose(col, torch.full_like(col, want), atol=1e-6)
    with pytest.raises(ValueError, match="fitted"):
        create_background("mean").render(1, (2, 2))


def test_only_bg_t_tiles_the_largest_strip_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 256, (20, 40, 3), dtype=np.uint8)
    box = (5, 4, 15, 16)                         # right margin (25 px wide) is the largest strip
    out = only_bg_t(img, [box])
    outside = np.ones((20, 40), bool)
    outside[4:16, 5:15] = False
    assert np.array_equal(out[outside], img[outside])
    strip = img[:, 15:]
    cols = (np.arange(5, 15) - 5) % strip.shape[1]
    assert np.array_equal(out[4:16, 5:15], strip[4:16][:, cols])
    assert (out[4:16, 5:15] != 0).any(axis=-1).all(), "no black box"
    tall = only_bg_t(img[:, :12], [(0, 0, 12, 6)])   # only a bottom margin exists
    assert np.array_equal(tall[:6], img[6:12, :12])


def test_only_bg_t_without_margin_is_a_bad_sample():
    with pytest.raises(BadSample, match="whole image"):
        only_bg_t(np.ones((5, 5, 3), np.uint8), [(0, 0, 5, 5)])


def test_resize_crop_covers_then_centre_crops():
    img = np.arange(40 * 80 * 3, dtype=np.uint8).reshape(40, 80, 3)
    out = resize_crop(img, (20, 20))
    assert out.shape == (20, 20, 3)
    mask = np.zeros((40, 80), np.float32)
    mask[:, 40:] = 1
    m = resize_crop(mask, (20, 20))
    assert m.shape == (20, 20) and m[:, :10].max() == 0 and m[:, 10:].min() == 1


def test_photos_pick_deterministically_and_fit_any_size(photo_dir):
    bg = create_background(f"photos:{photo_dir}")
    a = bg.render(6, (16, 24), _gen(3))
    assert torch.equal(a, bg.render(6, (16, 24), _gen(3)))
    with pytest.raises(ValueError, match="does not exist"):
        create_background(f"photos:{photo_dir}/nope")
