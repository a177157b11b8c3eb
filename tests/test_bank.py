"""The background bank: randomised families, one spec syntax, one vocabulary across build, augment and eval."""
import numpy as np
import pytest
import torch
from PIL import Image

from bgbias.synth.backgrounds import create_background
from bgbias.synth.bank import DEFAULT_BANK, GREYS, bank_families, create_bank_background, parse_bank
from bgbias.synth.textures import TEXTURES
from bgbias.train.augment import BackgroundSwap, families_seen


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def photo_dir(tmp_path):
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(40, 60), (80, 50)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"p{k}.png")
    return tmp_path


def test_bank_holds_every_texture_randomised_noise_gradients_colours_and_partners():
    leaves = bank_families()
    assert {f"texture:{t}:*" for t in TEXTURES.names()} <= set(leaves)
    assert {"noise:smooth", "noise:fractal", "noise:pixel", "gradient:linear", "gradient:radial",
            "color:random", "other_sample"} <= set(leaves)
    assert sum(parse_bank("bank").values()) == pytest.approx(1.0)


def test_spec_weights_split_across_a_group(photo_dir):
    w = parse_bank(f"texture:*=2,noise,photos:{photo_dir}")
    assert sum(v for k, v in w.items() if k.startswith("texture:")) == pytest.approx(0.5)
    assert w[f"photos:{photo_dir}"] == pytest.approx(0.25)
    assert w["noise:fractal"] == pytest.approx(0.25 / 3)
    with pytest.raises(ValueError, match="weight"):
        parse_bank("noise=lots")
    with pytest.raises(ValueError, match="non-empty"):
        parse_bank("")


@pytest.mark.parametrize("leaf", [k for k in bank_families() if k != "other_sample" and not k.startswith("color:#")])
def test_every_leaf_renders_in_range_deterministically_and_varies(leaf):
    bg = create_bank_background(leaf)
    a = bg.render(16, (20, 28), _gen(1))
    assert a.shape == (16, 3, 20, 28) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, bg.render(16, (20, 28), _gen(1)))
    assert not torch.equal(a, bg.render(16, (20, 28), _gen(2)))
    # per image variety: the images of one batch are not copies of one another
    assert len({tuple(x.flatten()[:50].tolist()) for x in a}) > 8


def test_random_textures_draw_their_parameter_per_image():
    fixed = create_background("texture:stripes:4").render(64, (32, 32), _gen(0))
    rand = create_background("texture:stripes:*").render(64, (32, 32), _gen(0))
    # share of the second colour: fixed period and duty give ~0.5 everywhere; random duty spreads it
    def share(x):
        return (x != x[:, :, :1, :1]).any(1).float().mean((1, 2))
    assert float(share(rand).std()) > 2 * float(share(fixed).std())


def test_photo_crops_vary_per_image(photo_dir):
    bg = create_bank_background(f"photos:{photo_dir}")
    a = bg.render(8, (16, 16), _gen(0))
    assert a.shape == (8, 3, 16, 16) and torch.equal(a, bg.render(8, (16, 16), _gen(0)))
    assert len({tuple(x.flatten().tolist()) for x in a}) == 8
    with pytest.raises(ValueError, match="does not exist"):
        create_bank_background(f"photos:{photo_dir}/nope")


def test_one_vocabulary_color_means_random_colour_everywhere():
    a = create_background("color").render(32, (2, 2), _gen(0))
    assert create_background("color").name == "color:random"
    assert len(torch.unique(a[:, :, 0, 0], dim=0)) == 32
    assert create_background("color:black").render(1, (2, 2)).max() == 0
    swap = BackgroundSwap("color", p=1.0)
    assert list(swap.families) == ["color:random"] and swap.seen == ["color"]
    # augment and the background family draw the same colours from the same generator
    img, m = torch.ones(4, 3, 2, 2), torch.zeros(4, 1, 2, 2)
    g1, g2 = _gen(5), _gen(5)
    out = swap.batch(img, m, torch.zeros(4, dtype=torch.long), generator=g1)
    torch.rand(4, generator=g2); torch.multinomial(torch.ones(1, dtype=torch.float64), 4, True, generator=g2)
    assert torch.allclose(out, create_background("color:random").render(4, (2, 2), g2))


def test_families_seen_names_variants_that_eval_marks():
    from bgbias.audit.evaluate import seen_in_training

    seen = families_seen("bank")
    assert "texture:stripes" in seen and "color" in seen and "mixed_rand" in seen
    assert seen_in_training("texture:stripes:8", seen) and seen_in_training("color:red", seen)
    assert not seen_in_training("mean", seen)


def test_default_swap_is_the_bank_and_keeps_the_foreground():
    assert BackgroundSwap().families == parse_bank("bank")
    from bgbias.train.config import TrainConfig

    assert TrainConfig().families == ("bank",)
    x = torch.rand(32, 3, 16, 16)
    m = torch.zeros(32, 1, 16, 16)
    m[:, :, 4:12, 4:12] = 1
    out = BackgroundSwap(p=1.0).batch(x, m, torch.arange(32) % 3)
    assert torch.equal(out[:, :, 4:12, 4:12], x[:, :, 4:12, 4:12])
    assert (out - x).abs().amax((1, 2, 3)).gt(0.01).float().mean() > 0.8


def test_bank_background_family_is_a_mixture():
    bg = create_background("bank")
    assert set(bg.describe()["members"]) == set(bank_families()) - {"other_sample"}
    assert set(DEFAULT_BANK) >= {"texture:*", "noise"}


def test_bare_texture_means_every_kind_with_random_parameters_everywhere():
    """Issue 15 (f): ``texture`` is ``texture:*`` in the bank, BackgroundSwap and create_background alike;
    ``texture:NAME`` stays fixed; ``texture:*:PARAM`` is one clear error, not a recursion."""
    every = {f"texture:{t}:*" for t in TEXTURES.names()}
    assert parse_bank("texture") == parse_bank("texture:*") and set(parse_bank("texture")) == every
    assert set(BackgroundSwap("texture").families) == every
    assert create_background("texture").describe() == create_background("texture:*").describe()
    assert families_seen("texture") == families_seen("texture:*") == sorted(f[:-2] for f in every)
    assert parse_bank("texture:stripes") == {"texture:stripes": 1.0}
    a = create_background("texture").render(6, (16, 16), _gen(0))
    b = create_background("texture:*").render(6, (16, 16), _gen(0))
    assert torch.equal(a, b)
    for spec in ("texture:*:8", "texture:*=2,texture:*:4"):
        with pytest.raises(ValueError, match="ambiguous: a texture parameter needs one kind"):
            parse_bank(spec)
    with pytest.raises(ValueError, match="ambiguous"):
        create_background("texture:*:8")


def test_bank_draws_bright_flat_backgrounds_as_often_as_scene_photos_show_them():
    """Issue 15: random RGB colours average to mid luminance, so bright flat backgrounds (sky), where white
    strokes fade, were rare (0.5% of renders above 0.85 mean luminance); ``color:greys`` fixes that."""
    assert parse_bank("color:greys") == {f"color:{c}": pytest.approx(1 / len(GREYS)) for c in GREYS}
    assert "color:#ffffff" in bank_families()
    flat = create_background("color:#e6e6e6").render(2, (8, 8), _gen(0))
    assert torch.allclose(flat, torch.full_like(flat, 0xE6 / 255))
    luma = create_background("bank").render(4000, (16, 16), _gen(0)).mean((1, 2, 3))
    assert float((luma > 0.85).float().mean()) > 0.05
    assert float((luma < 0.3).float().mean()) > 0.05
