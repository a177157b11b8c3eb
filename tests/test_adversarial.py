"""Paper 002 pieces: networks, thresholds, the three stages end to end, and that the learned mask finds the digit."""
from __future__ import annotations

import pytest
import torch

from bgbias.train.adversarial import (
    AdversarialBackgrounds,
    BackgroundGenerator,
    MaskUNet,
    area_prior,
    binarize,
    mask_iou,
)
from bgbias.train.config import TrainConfig
from bgbias.train.data import TrainData, load_data
from bgbias.train.loop import train


@pytest.fixture(scope="module")
def digits() -> TrainData:
    d = load_data("digits:16")
    rows = torch.randperm(len(d.labels), generator=torch.Generator().manual_seed(0))[:600].sort().values
    return TrainData(d.images[rows], d.masks[rows], d.labels[rows], [d.ids[i] for i in rows], d.classes, [])


def test_networks_shapes_and_ranges():
    m = MaskUNet()(torch.rand(2, 3, 28, 28)).detach()
    assert m.shape == (2, 1, 28, 28) and 0 < float(m.min()) and float(m.max()) < 1
    gen = BackgroundGenerator((28, 30))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    b1, b2 = gen(torch.randn(3, 64, generator=g1), g1), gen(torch.randn(3, 64, generator=g2), g2)
    assert b1.shape == (3, 3, 28, 30) and torch.equal(b1, b2)
    assert not torch.equal(b1[0], b1[1]), "rows with different noise must differ"


def test_area_prior_and_thresholds():
    assert float(area_prior(torch.full((2, 1, 10, 10), 0.1), 0.2)) == 0.0
    assert float(area_prior(torch.full((2, 1, 10, 10), 0.5), 0.2)) == pytest.approx(0.3)
    soft = torch.rand(4, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    q = binarize(soft, "quantile", 0.2)
    assert torch.allclose(q.flatten(1).mean(1), torch.full((4,), 0.2))
    bimodal = torch.cat([torch.full((1, 1, 10, 20), 0.1), torch.full((1, 1, 10, 20), 0.9)], dim=2)
    assert torch.equal(binarize(bimodal, "otsu", 0.2), (bimodal > 0.5).float())


def test_stages_end_to_end_and_mask_beats_chance(digits, tmp_path):
    cfg = TrainConfig(recipe="adversarial", data="digits:16", out=str(tmp_path / "adv"), epochs=1, clean_epochs=3,
                      mask_epochs=3, lr=3e-3, batch_size=64, val_fraction=0.0, replay=256)
    true = digits.masks.clone()
    metrics = train(cfg, progress=False, data=digits)
    assert torch.equal(digits.masks, true), "train() must not change the caller's data"
    phases = [h["phase"] for h in metrics["history"]]
    assert phases == ["clean"] * 3 + ["adversarial"] and metrics["families_seen"][0] == "adversarial"
    assert "texture:stripes" in metrics["families_seen"], "the bank mixed in (--adv-bank) counts as seen"
    assert metrics["history"][-1]["train_accuracy"] > 0.5
    extra = torch.load(tmp_path / "adv" / "last.pt", weights_only=True)["extra"]["augment"]
    learned = extra["masks"]                                         # uint8 [N, H, W], the binarised f_m output
    assert not torch.equal(learned, true)
    area = (learned > 127).float().mean().item()
    assert area == pytest.approx(0.2, abs=0.02)
    iou = mask_iou(learned, true).mean()
    g = torch.Generator().manual_seed(0)
    random_mask = (torch.rand(true.shape, generator=g) < area).to(torch.uint8) * 255
    h, w = true.shape[-2:]
    side_h, side_w = round(h * area ** 0.5), round(w * area ** 0.5)
    centre = torch.zeros_like(true)
    centre[:, (h - side_h) // 2:(h - side_h) // 2 + side_h, (w - side_w) // 2:(w - side_w) // 2 + side_w] = 255
    iou_random, iou_centre = mask_iou(random_mask, true).mean(), mask_iou(centre, true).mean()
    assert iou > iou_random + 0.1 and iou > iou_centre + 0.05, (float(iou), float(iou_random), float(iou_centre))
    assert extra["filled"] > 0 and extra["mask_net"] is not None


def test_true_masks_and_generator_step_raises_the_loss(digits):
    """With --true-masks no mask net is trained; one generator step raises f's loss on its backgrounds."""
    cfg = TrainConfig(recipe="adversarial", true_masks=True, replay=64, brightness=None, adv_bank=0.0, gen_every=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    aug = AdversarialBackgrounds(cfg, (16, 16), lambda x: x, torch.device("cpu"))
    x = digits.images[:64].float() / 255
    m = digits.masks[:64].float().unsqueeze(1) / 255
    y = digits.labels[:64]
    from bgbias.core.compose import compose

    def loss_now() -> float:
        aug.gen.train()
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            b = aug._generate(64, g)
            return float(torch.nn.functional.cross_entropy(model(compose(x, b, m)), y))

    before = loss_now()
    for step in range(5):
        out = aug(x, m, y, torch.Generator().manual_seed(step), model)
    assert loss_now() > before
    fg = (m == 1).expand_as(x)
    assert torch.equal(out[fg], x[fg]) and aug.filled == 64


def test_bank_share_and_generator_cadence(digits):
    """--adv-bank: that share of rows gets bank backgrounds; --gen-every N: one generator step per N batches,
    on the generator's own rows only, and its output is what the classifier sees (no second generator pass)."""
    x = digits.images[:128].float() / 255
    m = (digits.masks[:128].float().unsqueeze(1) / 255 > 0.5).float()
    y = digits.labels[:128]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    cfg = TrainConfig(recipe="adversarial", true_masks=True, replay=0, adv_bank=1.0, clean_fraction=0.0,
                      families=("color:red",))
    aug = AdversarialBackgrounds(cfg, (16, 16), lambda t: t, torch.device("cpu"))
    out = aug(x, m, y, torch.Generator().manual_seed(0), model)
    bg = (m == 0).expand_as(x)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand_as(x)
    assert torch.equal(out[bg], red[bg]), "adv_bank=1 puts every row on the bank (here: red)"
    steps, rows, passes = {}, {}, {}
    for every in (1, 3):
        cfg = TrainConfig(recipe="adversarial", true_masks=True, replay=256, gen_every=every, adv_bank=0.5,
                          clean_fraction=0.2, families=("color:red",))
        aug = AdversarialBackgrounds(cfg, (16, 16), lambda t: t, torch.device("cpu"))
        calls, gens = [], []
        aug._generator_step = lambda xs, *a, _c=calls: (_c.append(len(xs)), torch.full((len(xs), 3, 16, 16), 0.25))[1]
        real_generate = aug._generate
        aug._generate = lambda k, g, _g=gens: (_g.append(k), real_generate(k, g))[1]
        for step in range(6):
            out = aug(x, m, y, torch.Generator().manual_seed(step), model)
        steps[every], rows[every], passes[every] = len(calls), calls, gens
    assert steps == {1: 6, 3: 2}
    assert all(20 <= r <= 50 for r in rows[1]), rows    # about 128 * 0.8 * 0.5 * 2/3 = 34 rows, not 128
    assert passes == {1: [], 3: []}, "replay fills the rows between generator steps: no extra generator pass"
    with pytest.raises(ValueError, match="adv-bank"):
        TrainConfig(adv_bank=1.5).validate()
