"""bgbias saliency: foreground share of Grad-CAM / input gradients against hand-computed values, overlays, errors."""
from __future__ import annotations

import json

import _layouts as L
import pytest
import torch
from torch import nn

from bgbias.audit.saliency import SaliencyConfig, run_saliency
from bgbias.cli import main
from bgbias.models.load import LoadedModel

torch.set_num_threads(1)


class CentreNet(nn.Module):
    """A 1x1 identity conv, then logits = mean of each channel over the 4x4 centre (the foreground square)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x):
        return self.conv(x)[:, :, 2:6, 2:6].mean((2, 3))


@pytest.fixture
def colour(tmp_path):
    return L.colour_layout(tmp_path / "d", bg_levels=(0.5, 0.0, 0.5, 0.0))


def run(root, model, out, **kw):
    cfg = SaliencyConfig(model="t", data=str(root), progress=False, device="cpu", **kw)
    return run_saliency(cfg, out=out, loaded=LoadedModel(model, "t"))


def test_shares_by_hand(colour, tmp_path):
    r = run(colour, CentreNet(), tmp_path / "s.json", variants=("original", "only_fg"))
    grad, cam = r["methods"]["input_grad"], r["methods"]["gradcam"]
    # input gradients exist only where the model looks: the foreground square
    assert grad["original"]["fg_share"] == pytest.approx(1.0) and grad["original"]["fg_area"] == 0.25
    # Grad-CAM = ReLU(alpha_c * A_c): proportional to the class channel, which the background also lights up:
    # 16 / (16 + 48 * 128/255) on 0.5 backgrounds, 1 on black ones
    share = 16 / (16 + 48 * 128 / 255)
    assert cam["original"]["fg_share"] == pytest.approx((share + 1) / 2, abs=1e-4)
    assert cam["original"]["per_class"]["green"] == pytest.approx((share + 1) / 2, abs=1e-4)
    assert cam["only_fg"]["fg_share"] == pytest.approx(1.0) and cam["only_fg"]["n"] == 12
    assert r["layer"] == "conv"


def test_uniform_model_gets_share_equal_to_area(colour, tmp_path):
    r = run(colour, L.MeanColour(), tmp_path / "s.json", methods=("input_grad",), variants=("mixed_rand",))
    s = r["methods"]["input_grad"]["mixed_rand"]
    assert s["fg_share"] == pytest.approx(0.25) and s["share_over_area"] == pytest.approx(1.0)


def test_overlays_written_next_to_json(colour, tmp_path):
    out = tmp_path / "res" / "sal.json"
    r = run(colour, CentreNet(), out, variants=("original", "mixed_rand"), overlays=2, max_images=5)
    assert len(r["overlays"]) == 2 * 2 * 2
    for o in r["overlays"]:
        assert (out.parent / o["path"]).is_file() and o["path"].startswith("sal_overlays/")
    assert r["methods"]["gradcam"]["original"]["n"] == 5
    ids = {o["id"] for o in r["overlays"] if o["variant"] == "original"}
    assert ids == {o["id"] for o in r["overlays"] if o["variant"] == "mixed_rand"}


def test_bad_inputs(colour, tmp_path):
    with pytest.raises(ValueError, match="Unknown layer 'fc'; valid conv layers: conv"):
        run(colour, CentreNet(), tmp_path / "s.json", layer="fc")
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        run(colour, L.MeanColour(), tmp_path / "s.json")
    with pytest.raises(ValueError, match="valid: gradcam, input_grad"):
        run(colour, CentreNet(), tmp_path / "s.json", methods=("lime",))
    (colour / "fg_mask" / "val" / "00_red" / "c0_s1.npy").rename(colour / "fg_mask" / "val" / "00_red" / "x.npy")
    with pytest.raises(ValueError, match="has no mask c0_s1.npy"):
        run(colour, CentreNet(), tmp_path / "s.json")


def test_cli(colour, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    out = tmp_path / "s.json"
    assert main(["saliency", "--model", "module:_layouts:mean_colour", "--data", str(colour), "--out", str(out),
                 "--methods", "input_grad", "--variants", "original", "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["kind"] == "bgbias-saliency/1" and set(r["methods"]) == {"input_grad"}
    assert "on foreground" in capsys.readouterr().out
