"""Saliency beyond CNNs: localisation metrics on hand-made maps, token-grid Grad-CAM on ViT/Swin/CLIP towers."""
from __future__ import annotations

import json
import math

import _layouts as L
import pytest
import torch
from torch import nn

from bgbias.audit.saliency import SaliencyConfig, run_saliency
from bgbias.audit.saliency_methods import SALIENCY_METHODS, find_target, gradcam, to_grid
from bgbias.audit.saliency_metrics import localisation
from bgbias.cli import main
from bgbias.models.load import LoadedModel, Preprocess

torch.set_num_threads(1)


def test_metrics_on_hand_made_maps():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1                                   # 4 of 16 pixels
    a = torch.zeros(1, 4, 4)
    a[0, 0, 0], a[0, 0, 1], a[0, 3, 3], a[0, 3, 2] = 5.0, 3.0, 4.0, 1.0     # ranks: (0,0) (3,3) (0,1) (3,2)
    r = {k: v[0].item() for k, v in localisation(a, mask, top_percent=25).items()}
    assert r["fg_share"] == pytest.approx(8 / 13)
    assert r["pointing_game"] == 1.0                     # the maximum (0,0) is on the mask
    assert r["relevance_rank_accuracy"] == pytest.approx(2 / 4)   # top K=4: (0,0) (3,3) (0,1) (3,2) -> 2 hits
    assert r["iou_top"] == pytest.approx(2 / (4 + 4 - 2))          # top 25% = 4 pixels, 2 in the mask
    assert r["area"] == 0.25 and r["iou_top_chance"] == pytest.approx(0.25 * 0.25 / (0.25 + 0.25 - 0.0625))
    b = a.clone()
    b[0, 3, 3] = 9.0                                      # maximum off the mask: pointing game misses
    assert localisation(b, mask)["pointing_game"][0].item() == 0.0
    # ties at the maximum: any maximal pixel on the mask counts (Quantus); an all-zero map is undefined
    tie = torch.zeros(1, 4, 4)
    tie[0, 0, 0] = tie[0, 3, 3] = 1.0
    assert localisation(tie, mask)["pointing_game"][0].item() == 1.0
    assert math.isnan(localisation(torch.zeros(1, 4, 4), mask)["relevance_rank_accuracy"][0].item())
    assert math.isnan(localisation(a, torch.zeros(1, 4, 4))["pointing_game"][0].item())
    with pytest.raises(ValueError, match="top_percent"):
        localisation(a, mask, top_percent=0)


def test_perfect_and_inverted_maps():
    mask = torch.zeros(2, 6, 6)
    mask[:, 1:4, 2:5] = 1.0
    inv = 1.0 - mask
    r = localisation(torch.stack([mask[0], inv[0]]), mask)
    assert r["relevance_rank_accuracy"].tolist() == [1.0, 0.0] and r["pointing_game"].tolist() == [1.0, 0.0]
    assert r["fg_share"].tolist() == [1.0, 0.0]


def test_token_grid_reshape():
    grid = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 5, 3, 4)        # [N, D, h, w]
    tokens = grid.flatten(2).transpose(1, 2)                                            # [N, 12, D]
    with_cls = torch.cat([torch.full((2, 1, 5), -1.0), tokens], 1)
    for t, prefix in ((tokens, None), (with_cls, None), (with_cls, 1)):
        torch.testing.assert_close(to_grid(t, 2, (30, 40), prefix=prefix), grid)
    torch.testing.assert_close(to_grid(with_cls.transpose(0, 1), 2, (30, 40)), grid)   # sequence-first [L, N, D]
    nhwc = grid.permute(0, 2, 3, 1)
    torch.testing.assert_close(to_grid(nhwc, 2, (30, 40), channels=5), grid)
    torch.testing.assert_close(to_grid(grid, 2, (30, 40), channels=5), grid)            # already NCHW: kept
    with pytest.raises(ValueError, match="Cannot reshape 7 tokens"):
        to_grid(torch.zeros(2, 7, 5), 2, (30, 40), prefix=0)


class TokenNet(nn.Module):
    """A hand-made 'transformer': 4x4 patches -> tokens, a class token in front, one block (norm, 'attention');
    class c reads channel c of patch 0 only."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 3, 4, stride=4, bias=False)
        with torch.no_grad():
            self.embed.weight.zero_()
            for c in range(3):
                self.embed.weight[c, c] = 1 / 16
        self.blocks = nn.ModuleList([Block()])

    def tokens(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)                        # [N, 4, 3] for 8x8 inputs
        return torch.cat([torch.zeros_like(t[:, :1]), t], 1)              # a class token in front

    def forward(self, x):
        t = self.tokens(x)
        for b in self.blocks:
            t = b(t)
        return t[:, 1, :]                                                  # logits = patch 0's channels


class Attention(nn.Module):
    def forward(self, t):
        return t


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(3, elementwise_affine=False)
        self.attn = Attention()

    def forward(self, t):
        return self.attn(self.norm1(t)) + 10


def test_gradcam_on_tokens_by_hand():
    """d logit_k / d A = 1 at (patch 0, channel k): weights w_c = [c == k] / 4 (the grid mean), so the map is
    ReLU(A_k) / 4 on the 2x2 patch grid (class token dropped), upsampled bilinearly."""
    net = TokenNet().eval()
    target = find_target(net, None)
    assert target.name == "blocks.0.norm1"
    x = torch.rand(2, 3, 8, 8)
    k = torch.tensor([0, 2])
    cam = gradcam(net, x, k, target)
    a = net.blocks[0].norm1(net.tokens(x))[:, 1:].detach()               # [N, 4, 3] patch tokens
    grid = a[torch.arange(2), :, k].reshape(2, 1, 2, 2).clamp_min(0) / 4
    expect = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bilinear")[:, 0]
    torch.testing.assert_close(cam, expect)


def test_registry_lists_methods_and_input_gradients_work_for_any_model():
    assert {"gradcam", "input_grad", "grad_x_input", "integrated_gradients"} <= set(SALIENCY_METHODS.names())
    net = TokenNet().eval()
    x = torch.rand(2, 3, 8, 8)
    for m in ("input_grad", "grad_x_input", "integrated_gradients"):
        a = SALIENCY_METHODS.entry(m).factory(net, x, torch.tensor([0, 1]), None)
        assert a.shape == (2, 8, 8) and (a >= 0).all()
        assert a[:, 4:, 4:].sum() == 0 and a[:, :4, :4].sum() > 0      # only patch 0 matters


def test_targets_for_timm_swin_deit_and_clip_towers():
    timm = pytest.importorskip("timm")
    sw = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, depths=(1, 1), num_heads=(1, 2),
                           embed_dim=16, num_classes=3).eval()
    assert find_target(sw, None).name == "layers.1.blocks.0.norm1"
    assert gradcam(sw, torch.randn(2, 3, 56, 56), torch.tensor([0, 1]), find_target(sw, None)).shape == (2, 56, 56)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=2, num_classes=3).eval()
    assert find_target(deit, None).name == "blocks.1.norm1"
    assert gradcam(deit, torch.randn(1, 3, 32, 32), torch.tensor([2]), find_target(deit, None)).shape == (1, 32, 32)
    assert find_target(timm.create_model("test_resnet"), None).name == "layer4.0.conv2"   # not the shortcut conv
    open_clip = pytest.importorskip("open_clip")
    clip = open_clip.CLIP(16, {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
                          {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}).eval()
    t = find_target(clip.visual, None)
    assert t.name == "transformer.resblocks.1.ln_1"
    assert gradcam(clip.visual.float(), torch.randn(2, 3, 32, 32), torch.tensor([0, 3]), t).shape == (2, 32, 32)


def test_saliency_runs_on_a_tiny_vit_from_the_cli(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    root = L.random_layout(tmp_path / "d", n_per_class=2, size=48)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = timm.create_model("test_vit", num_classes=3)
    torch.save(net.state_dict(), tmp_path / "vit.pth")
    out = tmp_path / "s.json"
    rc = main(["saliency", "--model", "timm:test_vit", "--weights", str(tmp_path / "vit.pth"), "--data", str(root),
               "--device", "cpu", "--no-progress", "--variants", "original,only_bg_t", "--overlays", "1",
               "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["layer"] == "blocks.5.norm1" and r["preprocess"]["size"] == [160, 160]
    g = r["methods"]["gradcam"]["original"]
    assert g["n"] + g["n_zero"] == 6
    for key in ("relevance_rank_accuracy", "pointing_game", "iou_top"):
        assert key in g and key in g["chance"] and key in g["ci95"]
    assert set(g["per_class_metrics"]) <= set(r["classes"])
    assert "pointing game" in capsys.readouterr().out


def test_saliency_metrics_per_variant_on_the_hand_computed_model(tmp_path):
    from test_saliency import CentreNet

    root = L.colour_layout(tmp_path / "d", bg_levels=(0.5, 0.0, 0.5, 0.0))
    cfg = SaliencyConfig(model="t", data=str(root), progress=False, device="cpu", variants=("original",),
                         methods=("input_grad",), top_percent=25)
    r = run_saliency(cfg, out=tmp_path / "s.json", loaded=LoadedModel(CentreNet(), "t", preprocess=Preprocess()))
    g = r["methods"]["input_grad"]["original"]
    # input gradients exist only on the 4x4 centre, which is each image's foreground square (area 1/4)
    assert g["pointing_game"] == 1.0 and g["relevance_rank_accuracy"] == pytest.approx(1.0)
    assert g["iou_top"] == pytest.approx(1.0) and g["chance"]["pointing_game"] == pytest.approx(0.25)
    assert all(v["pointing_game"] == 1.0 for v in g["per_class_metrics"].values())
