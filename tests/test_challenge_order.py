"""The challenge search's order: classes interleaved, misleading backgrounds shared across classes, full clean batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import _layouts as L
from bgbias.audit import challenge_search as CS
from bgbias.audit.challenge import ChallengeConfig, run_challenge
from bgbias.models.load import LoadedModel

torch.set_num_threads(1)


def test_queue_interleaves_classes_in_folder_order():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    q = CS.class_interleaved(labels, np.arange(9))
    assert q.tolist() == [0, 3, 5, 1, 4, 6, 2, 7, 8]
    shard = np.arange(1, 9, 3)                           # a shard's queue keeps its own members
    assert sorted(CS.class_interleaved(labels, shard).tolist()) == shard.tolist()


class _Stub:
    """Just what ``Search.fool_prior`` reads: labels, one-hot classes of the pool, the state's fresh counts."""

    def __init__(self, bg_labels: np.ndarray, n_classes: int, fresh=(3.0, 10.0)):
        self.bg_labels, self.n_classes = bg_labels, n_classes
        self.bg_onehot = np.eye(n_classes)[bg_labels]
        self.s = {"fresh": np.asarray(fresh, dtype=np.float64)}


def test_a_background_that_misleads_other_classes_ranks_first_on_a_new_class():
    """Class 3 has tried nothing: the background that fooled 10 of 10 of classes 1 and 2 must be its best guess,
    above untried backgrounds of the same class (whose rate is the fresh-background rate) and its own class's."""
    bg_labels = np.array([0, 0, 0, 1, 2, 3])
    cnt, tries = np.zeros((4, 6)), np.zeros((4, 6))
    cnt[1, 0] = tries[1, 0] = 10
    cnt[2, 0] = tries[2, 0] = 10
    tries[1, 4] = 10                                       # background 4 never fooled class 1
    prior = CS.Search.fool_prior(_Stub(bg_labels, 4), cnt, tries)
    assert prior[3, 0] > 0.8 > prior[3, 1] == pytest.approx(prior[3, 2])
    assert prior[3, 1] == pytest.approx((3 + 1) / (10 + 2), rel=0.05)     # fresh rate: (fools + 1) / (tries + 2)
    assert prior[3, 4] < prior[3, 1] and prior[3, 5] == pytest.approx(1e-3)   # own class: ~0


def test_clean_forwards_run_in_full_batches(tmp_path, monkeypatch):
    """The clean image of each foreground is scored in blocks of ``batch_size``, not a few per round."""
    root = L.random_layout(tmp_path / "d", n_per_class=7, seed=2)
    sizes = []
    real = CS.Search.score

    def spy(self, x, y, fp32=False):
        sizes.append(len(x))
        return real(self, x, y, fp32)

    monkeypatch.setattr(CS.Search, "score", spy)
    calls = []
    real_fill = CS.Search._clean_block

    def spy_fill(self, *a, **k):
        n = len(sizes)
        out = real_fill(self, *a, **k)
        calls.append(sizes[n:])
        return out

    monkeypatch.setattr(CS.Search, "_clean_block", spy_fill)
    cfg = ChallengeConfig(model="test:model", data=str(root), progress=False, device="cpu", batch_size=8, active=3)
    r = run_challenge(cfg, loaded=LoadedModel(L.MeanColour(), "test:model"))
    assert [c for call in calls for c in call] == [8, 8, 5] and r["clean_forwards"] == 21


def _search(root, batch_size: int):
    from bgbias.audit.challenge import prepare
    from bgbias.audit.challenge_state import start_state

    cfg = ChallengeConfig(model="test:model", data=str(root), progress=False, device="cpu", batch_size=batch_size)
    st = prepare(cfg, LoadedModel(L.MeanColour(), "test:model"))
    s = start_state(None, st.fp, len(st.fg_items), len(st.audit.classes), len(st.pool), 0, st.sub)
    srch = CS.Search(st.audit, st.pool, st.fg_labels, st.bg_labels, cfg, s)
    for i, (img, mask, _, _) in enumerate(st.dataset()):
        srch.add_tensors(i, CS.prep_fg(st.audit, img, mask, st.pool.shape))
    return srch


def test_forward_splits_into_equal_batches_and_hard_masks_match_compose(tmp_path, monkeypatch):
    root = L.random_layout(tmp_path / "d", n_per_class=7, seed=3)
    srch = _search(root, batch_size=16)
    n_fg, n_bg = len(srch.fg_labels), len(srch.pool)
    slots = np.repeat(np.arange(n_fg), n_bg)[:34].tolist()
    rows = np.tile(np.arange(n_bg), n_fg)[:34]
    sizes = []
    real = CS.Search.score
    monkeypatch.setattr(CS.Search, "score", lambda self, x, y, fp32=False: sizes.append(len(x)) or real(self, x, y))
    fast = srch.forward(slots, rows)
    assert sizes == [12, 12, 10] and all(srch.hard.values())
    srch.hard = {}                                        # every batch through compose
    slow = srch.forward(slots, rows)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)


def test_margin_estimate_of_an_untried_pair_is_the_backgrounds_change_on_other_classes():
    """Class 3 never met background 0, which lowered margins of classes 1 and 2 by 6; untried background 1
    gives the fresh backgrounds' mean change (-1). A class that meets background 0 must expect it to be strong."""
    bg_labels = np.array([0, 0, 1, 2, 3])
    stub = _Stub(bg_labels, 4, fresh=(0.0, 4.0))
    stub.s["fresh"] = np.array([0.0, 4.0, -4.0])                  # 4 first-time tries, margin change -1 each
    dsum, dcnt = np.zeros((4, 5)), np.zeros((4, 5), dtype=np.int64)
    dsum[1, 0], dcnt[1, 0] = -30.0, 5
    dsum[2, 0], dcnt[2, 0] = -30.0, 5
    stub.s.update(dsum=dsum, dcnt=dcnt)
    est = CS.Search.estimates(stub)
    v0 = (-60.0 + CS.SHRINK * -4.0 / 5.0) / (10 + CS.SHRINK)
    assert est[3, 0] == pytest.approx(v0) and v0 < -5
    assert est[3, 1] == pytest.approx(-0.8)                       # the fresh mean: -4 / (4 + 1)
    assert est[3, 0] < est[3, 1]
