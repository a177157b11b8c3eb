"""``bgbias eval`` sharded over workers gives one process's result and resumes from finished shards."""
from __future__ import annotations

import _layouts as L
import numpy as np
import pytest

from bgbias.audit.evaluate import EvalConfig, evaluate
from bgbias.audit.evaluate_shards import predict_variant, shard_file
from bgbias.models.load import LoadedModel


def _cfg(root, cls=EvalConfig, **kw):
    return cls(model="test:model", data=str(root), device="cpu", progress=False, n_bootstrap=50, **kw)


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("seconds", "record")}     # config too: spreading is not recorded


def test_shards_equal_one_process_and_resume(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=7, seed=3)
    loaded = LoadedModel(L.MeanColour(), "test:model")
    one = evaluate(_cfg(root), loaded)
    state = tmp_path / "state"
    sharded = evaluate(_cfg(root, EvalConfig, shards=3, state=str(state)), loaded)
    assert _strip(sharded) == _strip(one)
    assert not list(state.glob("*.npz"))                     # removed once the result exists
    # a worker died after shard 1 of 'original': only the other shards are predicted again
    cfg = _cfg(root, EvalConfig, shards=3, state=str(state))
    from bgbias.audit.core import open_audit
    from bgbias.core.layout import list_items

    paths = [it.path for it in list_items(root, "original")]
    audit = open_audit(cfg, loaded)
    f1 = shard_file(cfg.state, "original", 1, 3)
    f1.parent.mkdir(parents=True, exist_ok=True)
    fake = np.full(len(paths[1::3]), 2, np.int64)              # a saved shard is trusted, not recomputed
    np.savez(f1, preds=fake, conf=np.ones(len(fake), np.float32), bad_i=np.zeros(0, np.int64),
             bad_r=np.zeros(0, dtype=str))
    preds, _, _ = predict_variant(cfg, audit, "original", paths, loaded)
    assert (preds[1::3] == 2).all()
    ref, _, _ = predict_variant(_cfg(root), audit, "original", paths, loaded)
    assert np.array_equal(preds[0::3], ref[0::3]) and np.array_equal(preds[2::3], ref[2::3])


def test_unreadable_image_keeps_its_index(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=4)
    bad = sorted((root / "original" / "val").rglob("*.png"))[5]
    bad.write_bytes(b"not a png")
    loaded = LoadedModel(L.MeanColour(), "test:model")
    one = evaluate(_cfg(root), loaded)
    sharded = evaluate(_cfg(root, EvalConfig, shards=4), loaded)
    assert sharded["skipped"] == one["skipped"] and [s["path"] for s in one["skipped"]] == [str(bad)]
    assert sharded["variants"] == one["variants"]


def test_bad_shard_count_is_one_clear_error(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=5)
    with pytest.raises(ValueError, match="executor"):
        evaluate(_cfg(root, EvalConfig, shards=2, executor="nope"), LoadedModel(L.MeanColour(), "test:model"))


@pytest.mark.slow
def test_two_local_processes_and_ray_give_one_process_result(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=6)
    loaded = LoadedModel(L.MeanColour(), "test:model")
    one = evaluate(_cfg(root), loaded)
    two = evaluate(_cfg(root, EvalConfig, devices=("cpu", "cpu")), loaded)
    assert two["variants"] == one["variants"]
    pytest.importorskip("ray")
    import torch

    from bgbias.models.nets import SmallCNN

    torch.manual_seed(6)          # a bgbias network: Ray workers import bgbias, not the tests' helpers
    cnn = LoadedModel(SmallCNN(num_classes=3, width=4).eval(), "test:model")
    on_ray = evaluate(_cfg(root, EvalConfig, shards=3, executor="ray", devices=("cpu", "cpu")), cnn)
    assert on_ray["variants"] == evaluate(_cfg(root), cnn)["variants"]
