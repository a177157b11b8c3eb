"""The variant registry and each variant's meaning as a property of its pixels; pairing plans."""

import numpy as np
import pytest
from conftest import make_image_and_mask

from bgbias.core.layout import IN9_VARIANTS
from bgbias.core.registry import Spec
from bgbias.core.sample import Sample
from bgbias.synth.backgrounds import box_mask, only_bg_t
from bgbias.synth.variants import (
    VARIANTS,
    Variant,
    create_variant,
    list_variants,
    parse_variant_name,
    plan_pairing,
    render_variants,
    resolve_variants,
)


def _partner():
    img, m = make_image_and_mask(32, 40, 7)
    return only_bg_t(img, Sample(img, m, 1, "p").object_boxes())


def _fitted(v: Variant, sample: Sample) -> Variant:
    if v.needs_fit:
        img, m = make_image_and_mask(32, 40, 5)
        v.background.fit([sample, Sample(img, m, 1, "other")])
    return v


@pytest.mark.parametrize("name", list_variants())
def test_every_variant_renders_and_keeps_its_meaning(name, sample):
    v = _fitted(create_variant(name), sample)
    out = v.apply(sample, seed=0, partner_bg=_partner() if v.pairing else None)
    assert out.shape == sample.image.shape and out.dtype == np.uint8
    assert np.array_equal(out, v.apply(sample, seed=0, partner_bg=_partner() if v.pairing else None))
    img, m = sample.image, sample.mask
    inbox = box_mask(sample.size, sample.object_boxes()) == 1
    if v.recipe == "paste" or name in ("original", "only_fg"):
        assert np.array_equal(out[m == 1], img[m == 1]), "foreground pixels are kept exactly"
    if v.recipe == "paste":
        assert not np.array_equal(out[m == 0], img[m == 0]), "the background was replaced"
    if name == "only_fg":
        assert (out[m == 0] == 0).all()
    if name == "no_fg":
        assert (out[m == 1] == 0).all() and np.array_equal(out[m == 0], img[m == 0])
    if name == "only_bg_b":
        assert (out[inbox] == 0).all() and np.array_equal(out[~inbox], img[~inbox])
    if name == "only_bg_t":
        assert np.array_equal(out[~inbox], img[~inbox])
        assert (out[inbox] != 0).any(axis=-1).all(), "no black box"
        assert not np.array_equal(out[inbox], img[inbox])
    if name.startswith("mixed_"):
        assert np.array_equal(out[m == 0], _partner()[m == 0])


def test_render_variants_batches_to_the_same_pixels(sample):
    vs = [create_variant(n) for n in ("only_fg", "no_fg", "texture:stripes", "color:red")]
    together = render_variants(sample, vs, seed=3)
    for v in vs:
        assert np.array_equal(together[v.name], v.apply(sample, seed=3))


def test_texture_depends_on_seed_and_id_only(sample):
    v = create_variant("texture:board")
    assert np.array_equal(v.apply(sample, 1), v.apply(sample, 1))
    assert not np.array_equal(v.apply(sample, 1), v.apply(sample, 2))
    assert not np.array_equal(v.apply(sample, 1), v.apply(sample.with_(id="other"), 1))


def test_listing_subsets_and_names():
    assert list_variants("mixed_*") == ["mixed_next", "mixed_rand", "mixed_same"]
    assert sorted(list_variants(subset="in9")) == sorted(IN9_VARIANTS)
    assert "texture:noise" in list_variants(subset="texture")
    with pytest.raises(ValueError, match="Unknown variant subset 'in10'; valid: "):
        list_variants(subset="in10")
    with pytest.raises(ValueError, match="Unknown variant 'mixd_rand'; valid: .*mixed_rand"):
        create_variant("mixd_rand")


@pytest.mark.parametrize("text,spec,name,dirname", [
    ("mixed_rand", Spec("mixed_rand"), "mixed_rand", "mixed_rand"),
    ("texture:stripes", Spec("texture", ("stripes",)), "texture:stripes:8", "texture_stripes_8"),
    ("texture:noise:0.3", Spec("texture", ("noise", "0.3")), "texture:noise:0.3", "texture_noise_0.3"),
    ("color:#FF8800", Spec("color", ("#FF8800",)), "color:#ff8800", "color_ff8800"),
    ("color:red", Spec("color", ("red",)), "color:red", "color_red"),
])
def test_name_grammar(text, spec, name, dirname):
    assert parse_variant_name(text) == spec
    v = create_variant(text)
    assert (v.name, v.dirname) == (name, dirname)


def test_photos_keeps_a_path_with_colons(tmp_path):
    assert parse_variant_name("photos:C:/data/x") == Spec("photos", ("C:/data/x",))


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        VARIANTS.register("mixed_rand")(lambda: None)


def test_resolve_variants_expands_and_rejects_shared_folders():
    assert [v.name for v in resolve_variants("in9")] == list(IN9_VARIANTS)
    assert len(resolve_variants("all")) == len(list_variants())
    assert [v.name for v in resolve_variants("texture:stripes,texture:stripes:8")] == ["texture:stripes:8"]
    with pytest.raises(ValueError, match="No variants"):
        resolve_variants(" , ")


def test_pairing_meanings_and_independence_from_order():
    ids = [f"x{i:02d}" for i in range(30)]
    labels = [i % 3 for i in range(30)]
    lab = dict(zip(ids, labels))
    same, _ = plan_pairing(ids, labels, 3, 0, "mixed_same", "same")
    rand, _ = plan_pairing(ids, labels, 3, 0, "mixed_rand", "rand")
    nxt, _ = plan_pairing(ids, labels, 3, 0, "mixed_next", "next")
    assert all(b != f and lab[b] == lab[f] for f, b in same.items()) and len(same) == 30
    assert all(b != f for f, b in rand.items()) and len({lab[b] for b in rand.values()}) == 3
    assert all(lab[b] == (lab[f] + 1) % 3 for f, b in nxt.items())
    assert plan_pairing(ids, labels, 3, 1, "mixed_rand", "rand")[0] != rand
    assert plan_pairing(ids, labels, 3, 0, "mixed_rand", "rand")[0] == rand


def test_pairing_reports_foregrounds_without_candidates():
    plan, missing = plan_pairing(["a", "b", "c"], [0, 0, 1], 3, 0, "mixed_same", "same")
    assert set(plan) == {"a", "b"} and "no other image of class 1" in missing["c"]
    plan, missing = plan_pairing(["a", "b"], [0, 1], 3, 0, "mixed_next", "next")
    assert plan == {"a": "b"} and "next class 2" in missing["b"]


def _samples_for_kernel() -> list[Sample]:
    """Soft-edged masks (as a resize leaves them), hard ones, several boxes (one past the frame), tall and wide."""
    import cv2

    out = []
    for k, (h, w) in enumerate([(32, 40), (57, 23), (24, 61)]):
        img, m = make_image_and_mask(h, w, k)
        soft = np.clip(cv2.GaussianBlur(m, (5, 5), 1.2), 0, 1)
        out += [Sample(img, soft, 0, f"soft{k}"), Sample(img, m, 0, f"hard{k}"),
                Sample(img, soft, 0, f"boxes{k}", ((1, 2, w // 3, h // 2), (w // 2, h // 3, w + 5, h - 2)))]
    return out


@pytest.mark.parametrize("sample", _samples_for_kernel(), ids=lambda s: s.id)
def test_render_variants_gives_the_kernel_bytes_of_each_variants_layers(sample):
    """The build's short way (MaskPlan, box-only fills) equals each variant's (fg, bg, mask) layers through
    the torch kernel, byte for byte, for every listed variant."""
    import torch

    from bgbias.core.compose import compose

    torch.set_num_threads(1)
    partner = _partner()
    partner = np.ascontiguousarray(np.resize(partner, (*sample.size, 3))) if partner.shape[:2] != sample.size else partner
    variants = [_fitted(create_variant(n), sample) for n in list_variants()]
    got = render_variants(sample, variants, 3, {v.name: partner for v in variants if v.pairing})
    boxed = sample.with_(boxes=sample.object_boxes())
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # noqa: E731
    for v in variants:
        lay = v.layers(boxed, 3, partner if v.pairing else None)
        want = sample.image if lay is None else \
            compose(t(lay[0]), t(lay[1]), torch.from_numpy(np.ascontiguousarray(lay[2]))).permute(1, 2, 0).numpy()
        assert got[v.name].dtype == np.uint8 and np.array_equal(got[v.name], want), v.name
