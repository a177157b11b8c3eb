"""``--amp``: mixed precision for eval (and the challenge), with its disagreements against fp32 counted.

On the CPU, mixed precision is bfloat16 autocast, so the path runs (and is tested) without a GPU.
"""
from __future__ import annotations

import _layouts as L
import pytest
import torch
from torch import nn

from bgbias.audit.core import open_audit
from bgbias.audit.evaluate import EvalConfig, evaluate, format_table
from bgbias.models.load import LoadedModel


class NearTie(nn.Module):
    """Class 1 beats class 0 by 0.1% in fp32; bfloat16 rounds both weights to 1.0, so class 0 wins a tie."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 3, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0], [1.001], [0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.abs().mean((1, 2, 3))[:, None] + 1.0)


def _cfg(root, **kw):
    return EvalConfig(model="test:model", data=str(root), device="cpu", progress=False, n_bootstrap=20,
                      variants=("original",), **kw)


def test_amp_logits_are_autocast_and_fp32_on_request(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=2, seed=1)
    audit = open_audit(_cfg(root), LoadedModel(NearTie(), "test:model"), amp=True)
    x = torch.rand(4, 3, 12, 12)
    assert audit.amp_dtype == torch.bfloat16
    assert (audit.logits(x).argmax(1) == 0).all()            # the tie under bfloat16
    assert (audit.logits(x, fp32=True).argmax(1) == 1).all()  # fp32 keeps the 0.1%
    assert audit.logits(x).dtype == torch.float32            # results leave as float32 either way


def test_eval_amp_counts_its_disagreements_with_fp32(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=5, seed=2)
    fp32 = evaluate(_cfg(root), LoadedModel(NearTie(), "test:model"))
    amp = evaluate(_cfg(root, amp=True, amp_check=6), LoadedModel(NearTie(), "test:model"))
    assert fp32["amp"] is None
    assert fp32["variants"]["original"]["confusion"] != amp["variants"]["original"]["confusion"]  # amp's are kept
    a = amp["amp"]
    assert a["dtype"] == "bfloat16" and a["checked"] == 6 and a["differ"] == 6
    assert a["variants"]["original"] == {"checked": 6, "differ": 6, "ci95": a["variants"]["original"]["ci95"]}
    assert a["ci95"][0] > 0.5                                  # a Wilson interval on the rate of flips
    assert "differ from fp32" in format_table(amp)


def test_eval_amp_check_covers_all_images_when_asked(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=3, seed=4)
    r = evaluate(_cfg(root, amp=True, amp_check=0), LoadedModel(L.MeanColour(), "test:model"))
    n = r["variants"]["original"]["n"]
    assert r["amp"]["checked"] == n and r["amp"]["differ"] == 0   # 0 = every image; a model with no tie: no flip


def test_eval_amp_is_recorded_and_sharded_runs_agree(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=4, seed=5)
    one = evaluate(_cfg(root, amp=True), LoadedModel(NearTie(), "test:model"))
    two = evaluate(_cfg(root, amp=True, shards=2), LoadedModel(NearTie(), "test:model"))
    assert one["config"]["amp"] is True
    assert one["variants"] == two["variants"] and one["amp"] == two["amp"]


def test_amp_check_must_be_non_negative(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=2, seed=1)
    with pytest.raises(ValueError, match="amp_check"):
        evaluate(_cfg(root, amp=True, amp_check=-1), LoadedModel(NearTie(), "test:model"))


def near_tie() -> nn.Module:
    return NearTie()


def test_cli_eval_amp_reports_the_flips(tmp_path, capsys, monkeypatch):
    import json
    from pathlib import Path

    from bgbias.cli import main

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    root = L.random_layout(tmp_path / "d", n_per_class=3, seed=6)
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "module:test_amp:near_tie", "--data", str(root), "--device", "cpu", "--out",
                 str(out), "--no-progress", "--variants", "original", "--amp", "--amp-check", "4"]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["amp"] is True and r["config"]["amp_check"] == 4
    assert r["amp"]["checked"] == 4 and r["amp"]["differ"] == 4
    assert "4 of 4 re-checked predictions differ from fp32" in capsys.readouterr().out


def test_challenge_amp_rechecks_fooling_pairs_in_fp32(tmp_path):
    """Under bfloat16 the near-tie model says class 0 everywhere: class-1 foregrounds look fooled, fp32 disagrees."""
    import numpy as np

    from bgbias.audit.challenge import ChallengeConfig, run_challenge
    from bgbias.core.layout import list_items

    root = L.random_layout(tmp_path / "d", n_per_class=3, seed=7)
    labels = np.array([it.label for it in list_items(root, "original")])

    def run(amp: bool) -> dict:
        cfg = ChallengeConfig(model="test:model", data=str(root), progress=False, device="cpu", amp=amp)
        return run_challenge(cfg, loaded=LoadedModel(NearTie(), "test:model"))

    fp32, amp = run(False), run(True)
    assert fp32["amp"] is None
    assert {f["label"] for f in fp32["fooled"]} == {0, 2}          # fp32 says class 1 everywhere
    assert {f["label"] for f in amp["fooled"]} == {1, 2}           # bfloat16 says class 0 everywhere
    assert amp["amp"]["recheck_forwards"] == len(amp["fooled"])
    assert amp["amp"]["fooled_unconfirmed_fp32"] == int((labels == 1).sum())
