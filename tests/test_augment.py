"""BackgroundSwap: foreground exact, background changed, seeded, batched == per sample, torchvision v2 behaviour."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from bgbias.train.augment import (
    BackgroundSwap,
    families_seen,
    fill_foreground,
    parse_families,
    swap_kernel,
)

FAMILIES = ["color", "color:red", "mean", "mean_color", "texture", "texture:stripes", "texture:noise:0.5",
            "other_sample", "same_class", "next_class"]


def make_batch(n: int = 12, size: int = 24, seed: int = 0):
    """Discs of a per-sample foreground colour on a per-sample plain background; soft disc edges."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    cy, cx = torch.rand(n, 1, 1, generator=g) * size / 2 + size / 4, torch.rand(n, 1, 1, generator=g) * size / 2 + size / 4
    r = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
    masks = (size / 4 + 0.5 - r).clamp(0, 1).unsqueeze(1)                          # [n,1,H,W], soft rim
    fg = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, size, size)
    bg = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, size, size)
    images = (masks * fg + (1 - masks) * bg).contiguous()
    labels = torch.arange(n) % 3
    return images, masks, labels


def fitted(families, **kw) -> BackgroundSwap:
    from bgbias.core.sample import Sample

    aug = BackgroundSwap(families, **kw)
    images, masks, labels = make_batch()
    samples = [Sample((images[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(), masks[i, 0].numpy(),
                      int(labels[i]), f"s{i}") for i in range(len(labels))]
    return aug.fit(samples)


@pytest.mark.parametrize("family", FAMILIES)
def test_foreground_exact_background_changed(family):
    images, masks, labels = make_batch()
    before = images.clone()
    out = fitted({family: 1.0}, p=1.0, seed=0).batch(images, masks, labels)
    fg = (masks == 1).expand_as(images)
    assert torch.equal(out[fg], images[fg])
    bgpix = (masks == 0).expand_as(images)
    assert (out[bgpix] - images[bgpix]).abs().max() > 0.05
    changed = ((out - images).abs().amax(dim=(1, 2, 3)) > 1e-6).float().mean()
    assert changed >= 0.9
    assert torch.equal(images, before), "input edited in place"
    assert out.dtype == images.dtype and out.shape == images.shape


def test_uint8_and_3d_masks():
    images, masks, labels = make_batch()
    u8 = (images * 255).round().to(torch.uint8)
    out = BackgroundSwap({"color": 1.0}, p=1.0).batch(u8, masks[:, 0], labels)
    assert out.dtype == torch.uint8
    fg = (masks == 1).expand_as(images)
    assert torch.equal(out[fg], u8[fg])


def test_deterministic_under_seed():
    images, masks, labels = make_batch()
    fams = {"color": 0.3, "texture": 0.3, "other_sample": 0.4}
    a = BackgroundSwap(fams, p=0.8, seed=3)
    b = BackgroundSwap(fams, p=0.8, seed=3)
    c = BackgroundSwap(fams, p=0.8, seed=4)
    outs_a = [a.batch(images, masks, labels) for _ in range(3)]
    outs_b = [b.batch(images, masks, labels) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(outs_a, outs_b))
    assert not torch.equal(outs_a[0], outs_a[1]), "consecutive batches must differ"
    assert not torch.equal(outs_a[0], c.batch(images, masks, labels))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(a.batch(images, masks, labels, generator=g1), c.batch(images, masks, labels, generator=g2))


def test_batched_equals_per_sample():
    images, masks, labels = make_batch()
    aug = fitted({"color": 0.2, "mean": 0.2, "texture": 0.2, "other_sample": 0.2, "next_class": 0.2}, p=0.7)
    params = aug.make_batch_params(images, masks, labels, torch.Generator().manual_seed(0))
    assert 0 < int(params.apply.sum()) < len(labels)
    batched = swap_kernel(images, masks, params.background, params.apply)
    for i in range(len(labels)):
        single = aug.transform(tv_tensors.Image(images[i]), params.sample(i, masks[i, 0]))
        assert isinstance(single, tv_tensors.Image)
        assert torch.equal(single.as_subclass(torch.Tensor), batched[i])


def test_partners_follow_their_rule():
    images, masks, labels = make_batch(n=30)
    aug = BackgroundSwap({"same_class": 1.0}, p=1.0)
    g = torch.Generator().manual_seed(0)
    same = aug._partners("same_class", labels, g)
    assert torch.equal(labels[same], labels) and not torch.equal(same, torch.arange(30))
    nxt = BackgroundSwap({"next_class": 1.0}, num_classes=3)._partners("next_class", labels, g)
    assert torch.equal(labels[nxt], (labels + 1) % 3)
    rand = aug._partners("other_sample", labels, g)
    assert not (rand == torch.arange(30)).any()


def test_partner_background_has_no_partner_foreground():
    """other_sample fills the partner's hole from the partner's own background (no second object)."""
    images, masks, labels = make_batch(n=2)
    red, blue = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    images = masks * red + (1 - masks) * blue                      # red discs with soft rims on blue
    filled = fill_foreground(images, masks)
    assert torch.allclose(filled, torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand_as(images), atol=1e-5)
    out = BackgroundSwap({"other_sample": 1.0}, p=1.0).batch(images, masks, labels)
    where_partner_fg = (masks[[1, 0], 0] > 0) & (masks[:, 0] == 0)     # own background over partner's object
    assert where_partner_fg.any()
    assert (out[:, 0][masks[:, 0] == 0] < 1e-5).all(), "partner's red object leaked"
    assert (out[:, 2][where_partner_fg] > 1 - 1e-5).all()


def test_torchvision_v2_pair_and_pipeline():
    images, masks, labels = make_batch()
    aug = BackgroundSwap({"color": 1.0}, p=1.0, seed=0)
    img, msk = tv_tensors.Image(images[0]), tv_tensors.Mask(masks[0, 0])
    out_img, out_mask = aug(img, msk)
    assert isinstance(out_img, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    assert torch.equal(out_mask, msk)
    assert torch.equal(out_img[(msk == 1).expand(3, -1, -1)], img[(msk == 1).expand(3, -1, -1)])
    pipe = v2.Compose([v2.RandomHorizontalFlip(p=1.0), BackgroundSwap({"texture": 1.0}, p=1.0)])
    o_img, o_mask = pipe(img, msk)
    assert torch.equal(o_mask, msk.flip(-1))
    fg = (o_mask == 1).expand(3, -1, -1)
    assert torch.equal(o_img[fg], img.flip(-1)[fg])
    # per-sample partners come from a bank of earlier samples; the first call has none
    bank = BackgroundSwap({"other_sample": 1.0}, p=1.0)
    first, _ = bank(tv_tensors.Image(images[0]), tv_tensors.Mask(masks[0, 0]))
    assert torch.equal(first, images[0])
    second, _ = bank(tv_tensors.Image(images[1]), tv_tensors.Mask(masks[1, 0]))
    assert not torch.equal(second, images[1])
    same = BackgroundSwap({"same_class": 1.0}, p=1.0)
    _, _, lab = same(tv_tensors.Image(images[0]), tv_tensors.Mask(masks[0, 0]), 0)
    assert lab == 0
    other_class, _, _ = same(tv_tensors.Image(images[1]), tv_tensors.Mask(masks[1, 0]), 1)
    assert torch.equal(other_class, images[1]), "no earlier sample of class 1: no swap"
    same_class, _, _ = same(tv_tensors.Image(images[2]), tv_tensors.Mask(masks[2, 0]), 0)
    assert not torch.equal(same_class, images[2])


def test_p_zero_is_identity_and_bad_input_fails():
    images, masks, labels = make_batch()
    assert torch.equal(BackgroundSwap({"color": 1.0}, p=0.0).batch(images, masks, labels), images)
    with pytest.raises(ValueError, match="Unknown"):
        BackgroundSwap({"colour": 1.0})
    with pytest.raises(ValueError, match="p must be"):
        BackgroundSwap({"color": 1.0}, p=1.5)
    with pytest.raises(ValueError, match="batched"):
        BackgroundSwap({"color": 1.0}).batch(images[0], masks[0], labels[:1])
    with pytest.raises(ValueError, match="fitted"):
        BackgroundSwap({"mean": 1.0}, p=1.0).batch(images, masks, labels)


def test_family_parsing_and_seen():
    assert parse_families("color,mean") == {"color:random": 0.5, "mean": 0.5}   # one vocabulary: color = color:random
    fams = parse_families({"color": 3, "texture": 1})
    assert fams["color:random"] == pytest.approx(0.75) and fams["texture:clock:*"] == pytest.approx(0.25 / 6)
    seen = families_seen(["color", "texture", "other_sample"])
    assert seen[0] == "color" and "texture:clock" in seen and seen[-1] == "mixed_rand"
