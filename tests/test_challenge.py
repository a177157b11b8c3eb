"""The backgrounds challenge equals a plain exhaustive search, resumes identically, and rejects bad data."""
from __future__ import annotations

import os
from pathlib import Path

import _layouts as L
import numpy as np
import pytest
import torch

from bgbias.audit.challenge import ChallengeConfig, run_challenge
from bgbias.core.io import read_image, read_mask
from bgbias.core.layout import find_mask, list_items
from bgbias.models.load import LoadedModel
from bgbias.models.nets import SmallCNN

torch.set_num_threads(1)


def exhaustive(root: Path, model: torch.nn.Module) -> dict[str, bool]:
    """Every foreground x every background, fixed order, plain loops: fooled iff any wrong prediction."""
    bgs = [torch.from_numpy(read_image(b.path).copy()).permute(2, 0, 1).float() / 255
           for b in list_items(root, "only_bg_t")]
    out = {}
    with torch.no_grad():
        for it in list_items(root, "original"):
            img = torch.from_numpy(read_image(it.path).copy()).permute(2, 0, 1).float() / 255
            m = torch.from_numpy(read_mask(find_mask(root, it)))
            out[it.id] = any(int(model((bg * (1 - m) + img * m)[None]).argmax(1)) != it.label for bg in bgs)
    return out


def random_cnn(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = SmallCNN(num_classes=3, width=4)
        for p in net.parameters():
            p.data.mul_(3.0)
    return net.eval()


def run(root: Path, model: torch.nn.Module, out=None, **kw) -> dict:
    cfg = ChallengeConfig(model="test:model", data=str(root), progress=False, device="cpu", **kw)
    return run_challenge(cfg, out=out, loaded=LoadedModel(model, "test:model"))


def verdicts(result: dict, root: Path) -> dict[str, bool]:
    fooled = {f["id"] for f in result["fooled"]}
    return {it.id: it.id in fooled for it in list_items(root, "original")}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("net", ["mean_colour", "cnn"])
def test_equals_exhaustive_search(tmp_path, seed, net):
    root = L.random_layout(tmp_path / "d", n_per_class=7, seed=seed)
    model = L.MeanColour() if net == "mean_colour" else random_cnn(seed)
    truth = exhaustive(root, model)
    r = run(root, model, active=5, max_step=4, batch_size=16)
    assert verdicts(r, root) == truth
    assert 0 < sum(truth.values()) < len(truth) or net == "cnn"
    assert r["challenge_accuracy"] == pytest.approx(1 - np.mean(list(truth.values())))
    assert r["exhaustive"] is True and r["n_backgrounds"] == r["n_foregrounds"] == 21
    assert r["forwards"] <= r["exhaustive_forwards"]


def test_fooling_background_really_fools(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=3)
    model = L.MeanColour()
    r = run(root, model)
    bgs = {b.id: b for b in list_items(root, "only_bg_t")}
    fgs = {f.id: f for f in list_items(root, "original")}
    for f in r["fooled"]:
        fg, bg = fgs[f["id"]], bgs[f["background"]]
        img = torch.from_numpy(read_image(fg.path).copy()).permute(2, 0, 1).float() / 255
        b = torch.from_numpy(read_image(bg.path).copy()).permute(2, 0, 1).float() / 255
        m = torch.from_numpy(read_mask(find_mask(root, fg)))
        pred = int(model((b * (1 - m) + img * m)[None]).argmax(1))
        assert pred == f["predicted"] != f["label"] and f["background_class"] == bg.label


@pytest.mark.parametrize("kw", [dict(active=1, max_step=1, batch_size=1), dict(active=64, max_step=64, batch_size=7),
                                dict(active=3, max_step=2, batch_size=5, pool_bytes=0)])
def test_settings_do_not_change_verdicts(tmp_path, kw):
    root = L.random_layout(tmp_path / "d", seed=4)
    base = run(root, L.MeanColour())
    other = run(root, L.MeanColour(), **kw)
    assert verdicts(other, root) == verdicts(base, root)


def test_early_exit_and_reordering_save_forwards(tmp_path):
    # a colour-only model on full-colour backgrounds: almost every background fools, so few forwards are needed
    root = L.colour_layout(tmp_path / "d", fg_side=(2, 2, 2, 2), bg_levels=(0.9, 0.9, 0.9, 0.9))
    r = run(root, L.MeanColour(), active=4)
    assert r["challenge_accuracy"] == 0.0
    assert r["forwards"] <= 2 * r["n_foregrounds"] < r["exhaustive_forwards"] / 4


def test_resume_after_interruption_gives_identical_answer(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=8, seed=5)
    model = random_cnn(5)
    full = run(root, model, out=tmp_path / "a.json", active=3, max_step=2, save_every=1)
    out = tmp_path / "b.json"
    calls = []

    def stop(progress):
        calls.append(progress)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cfg = ChallengeConfig(model="test:model", data=str(root), progress=False, device="cpu", active=3, max_step=2,
                              save_every=1)
        run_challenge(cfg, out=out, loaded=LoadedModel(model, "test:model"), on_save=stop)
    state = Path(str(out) + ".state")
    assert state.is_file() and 0 < calls[-1]["done"] < 24
    resumed = run(root, model, out=out, active=3, max_step=2, save_every=1)
    assert not state.exists()
    for key in ("fooled", "per_class", "challenge_accuracy", "forwards", "top_fooling"):
        assert resumed[key] == full[key], key


def test_state_from_other_settings_is_refused(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=6)
    out = tmp_path / "c.json"

    def stop(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_challenge(ChallengeConfig(model="test:model", data=str(root), progress=False, active=2, save_every=1),
                      out=out, loaded=LoadedModel(L.MeanColour(), "test:model"), on_save=stop)
    with pytest.raises(ValueError, match="different model, data or settings"):
        run(root, L.MeanColour(), out=out, active=2, max_step=3)


def test_max_backgrounds_is_a_labelled_estimate(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=7)
    r = run(root, L.MeanColour(), max_backgrounds=5)
    assert r["exhaustive"] is False and r["n_backgrounds"] == 5
    assert r["challenge_accuracy"] >= run(root, L.MeanColour())["challenge_accuracy"]


def test_top_fooling_rates_on_fixed_subset(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=8)
    r = run(root, L.MeanColour(), top_k=2, fool_subset=9)
    for name, tops in r["top_fooling"].items():
        assert len(tops) == 2 and tops[0]["fool_rate"] >= tops[1]["fool_rate"]
        assert all(0 < t["n_tested"] <= 9 for t in tops)


def test_missing_mask_is_one_clear_error(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=9)
    os.remove(next((root / "fg_mask" / "val").rglob("*.npy")))
    with pytest.raises(ValueError, match="have no mask"):
        run(root, L.MeanColour())


def test_missing_pool_variant_is_one_clear_error(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=9)
    for p in sorted((root / "only_bg_t").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "only_bg_t").rmdir()
    with pytest.raises(ValueError, match="only_bg_t"):
        run(root, L.MeanColour())


def test_unreadable_foreground_is_skipped_and_named(tmp_path):
    root = L.random_layout(tmp_path / "d", seed=10)
    bad = sorted((root / "original" / "val").rglob("*.png"))[4]
    bad.write_bytes(b"not a png")
    r = run(root, L.MeanColour())
    assert r["n_foregrounds"] == 17
    assert [s["path"] for s in r["skipped"]] == [str(bad)]


class KeyModel(torch.nn.Module):
    """Reads only the 4x4 centre, except: a blue centre with the key value in the top-left pixel is called red."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, :, 2:6, 2:6].mean((2, 3))
        key = ((x[:, 0, 0, 0] - 200 / 255).abs() < 0.5 / 255) & (centre.argmax(1) == 2)
        return centre + torch.stack([10.0 * key, 0 * centre[:, 1], 0 * centre[:, 2]], 1)


def needle_layout(root: Path) -> Path:
    """Blue foregrounds are fooled by exactly one background (n2: dim red with a key pixel) among 13 red/green ones.

    No red/green foreground is ever fooled, so the search has no counts to go by and must try them all.
    """
    size, samples = 8, []
    for j, (c, level) in enumerate([(0, 0.9), (0, 0.9), (0, 0.3)] + [(0, 0.8)] * 4 + [(1, 0.9)] * 6
                                   + [(2, 0.9)] * 3):
        m = L.square_mask(size, 4)
        bg = L.solid(c, level, size)
        if j == 2:
            bg[0, 0, 0] = 200
        samples.append({"label": c, "id": f"n{j}", "mask": m,
                        "variants": {"original": L.paste(L.solid(c, 1.0, size), bg, m), "only_bg_t": bg}})
    return L.write_layout(root, L.CLASSES, samples)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("kw", [dict(active=1, max_step=1), dict(active=2, max_step=8), dict()])
def test_late_single_fooling_background_is_found(tmp_path, kw, seed):
    root = needle_layout(tmp_path / "d")
    truth = exhaustive(root, KeyModel())
    assert truth == {f"n{j}": j >= 13 for j in range(16)}
    r = run(root, KeyModel(), seed=seed, **kw)
    assert verdicts(r, root) == truth
    assert {f["background"] for f in r["fooled"]} == {"n2"}


@pytest.mark.parametrize("size", [None, (16, 16)])
def test_normalised_and_resized_pipeline_equals_exhaustive(tmp_path, size):
    """With IN-9 normalisation (and a resize to the model input), verdicts still match a plain search.

    Documented semantics: image, background and mask are each resized to the model input, then composited.
    """
    import torch.nn.functional as F

    from bgbias.models.load import IN9_MEAN, IN9_STD

    root = L.random_layout(tmp_path / "d", seed=11)
    model = random_cnn(11)
    mean, std = torch.tensor(IN9_MEAN).view(3, 1, 1), torch.tensor(IN9_STD).view(3, 1, 1)

    def prep(t):
        if size is not None:
            t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        return t

    def load(p):
        return prep(torch.from_numpy(read_image(p).copy()).permute(2, 0, 1).float() / 255)

    bgs = [load(b.path) for b in list_items(root, "only_bg_t")]
    truth = {}
    with torch.no_grad():
        for it in list_items(root, "original"):
            img = load(it.path)
            m = prep(torch.from_numpy(read_mask(find_mask(root, it)))[None]).clamp(0, 1)
            truth[it.id] = any(int(model(((bg * (1 - m) + img * m - mean) / std)[None]).argmax(1)) != it.label
                               for bg in bgs)
    r = run(root, model, preprocess="in9", size=size, active=4, pool_bytes=0 if size else 1 << 30)
    assert verdicts(r, root) == truth


@pytest.mark.parametrize("seed", [0, 3])
def test_top_fooling_rates_are_exact_on_the_subset(tmp_path, seed):
    """Rates reused from the search plus measured pairs equal a brute-force count on the same subset."""
    from bgbias.audit.challenge import ChallengeConfig as Cfg, prepare

    root = L.random_layout(tmp_path / "d", n_per_class=7, seed=seed)
    model = random_cnn(seed)
    r = run(root, model, top_k=3, fool_subset=12, active=4)
    sub = prepare(Cfg(model="test:model", data=str(root), device="cpu", progress=False, top_k=3, fool_subset=12),
                  LoadedModel(model, "test:model")).sub
    fgs = list_items(root, "original")
    bgs = {b.id: b for b in list_items(root, "only_bg_t")}
    load = lambda p: torch.from_numpy(read_image(p).copy()).permute(2, 0, 1).float() / 255  # noqa: E731
    assert r["top_fooling"]
    for name, tops in r["top_fooling"].items():
        c = r["classes"].index(name)
        others = [fgs[i] for i in sub if fgs[i].label != c]
        for t in tops:
            b = load(bgs[t["background"]].path)
            with torch.no_grad():
                wrong = [int(model((b * (1 - m) + load(f.path) * m)[None]).argmax(1)) != f.label
                         for f in others for m in [torch.from_numpy(read_mask(find_mask(root, f)))]]
            assert t["n_tested"] == len(others) and t["fool_rate"] == pytest.approx(np.mean(wrong))
    assert r["analysis_forwards"] <= r["analysis_forwards_bound"]
    assert r["lower_bound_forwards"] <= r["forwards"] <= r["exhaustive_forwards"]


def test_shards_give_the_single_process_verdicts_and_resume(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=7, seed=12)
    model = random_cnn(12)
    one = run(root, model, active=4)
    out = tmp_path / "s.json"
    sharded = run(root, model, out=out, active=4, shards=3)
    assert verdicts(sharded, root) == verdicts(one, root)
    assert sharded["per_class"] == one["per_class"]
    assert not list(tmp_path.glob("s.json.state*"))
    # a worker that died after finishing shard 0: its saved state is reused, the others are searched again
    from bgbias.audit.challenge import prepare, search
    from bgbias.audit.challenge_shards import _init, _shard, shard_paths

    cfg = ChallengeConfig(model="test:model", data=str(root), progress=False, device="cpu", active=4, shards=3)
    st = prepare(cfg, LoadedModel(model, "test:model"))
    path = shard_paths(Path(str(out) + ".state"), 3)[0]
    _init(LoadedModel(model, "test:model"), st.pool.decoded, prepare, search)
    done = _shard((cfg, 0, 3, path, f"{st.fp}/shard0of3"))
    assert path.is_file() and done["done"]
    again = run(root, model, out=out, active=4, shards=3)
    assert verdicts(again, root) == verdicts(one, root) and not path.exists()


@pytest.mark.slow
def test_two_local_processes_and_ray_give_identical_verdicts(tmp_path):
    root = L.random_layout(tmp_path / "d", n_per_class=5, seed=13)
    model = random_cnn(13)
    one = verdicts(run(root, model), root)
    assert verdicts(run(root, model, devices=("cpu", "cpu")), root) == one
    pytest.importorskip("ray")
    assert verdicts(run(root, model, executor="ray", devices=("cpu", "cpu")), root) == one


def regime_layout(root: Path, sides: tuple[int, ...], n_bg_levels: int = 6) -> Path:
    """Per class, one foreground square per ``sides`` entry on an 8x8 image, and backgrounds of every strength.

    For the mean-colour model a side-2 square is fooled by almost any other-class background, a side-4 one
    only by strong ones, a side-6 one by none: the mix of sides sets how often the model is fooled.
    """
    size, samples = 8, []
    levels = np.linspace(0.1, 0.9, n_bg_levels)
    for c in range(len(L.CLASSES)):
        for j, side in enumerate(sides):
            m = L.square_mask(size, side, x0=j % (size - side + 1), y0=(2 * j) % (size - side + 1))
            bg = L.solid(c, float(levels[j % n_bg_levels]), size)
            samples.append({"label": c, "id": f"c{c}_r{j}", "mask": m,
                            "variants": {"original": L.paste(L.solid(c, 1.0, size), bg, m), "only_bg_t": bg}})
    return L.write_layout(root, L.CLASSES, samples)


@pytest.mark.parametrize("regime, sides", [("always", (2,) * 8), ("mostly", (2, 2, 4, 4, 2, 4, 2, 6)),
                                           ("half", (2, 6, 4, 6, 2, 6, 4, 6))])
def test_each_regime_equals_exhaustive_near_lower_bound(tmp_path, regime, sides):
    """Fooled always, mostly, about half: verdicts of the plain loop, forwards near the exact lower bound."""
    root = regime_layout(tmp_path / "d", sides)
    truth = exhaustive(root, L.MeanColour())
    share = np.mean(list(truth.values()))
    assert {"always": share == 1, "mostly": 0.6 <= share < 1, "half": 0.3 <= share < 0.6}[regime], share
    r = run(root, L.MeanColour(), top_k=0)
    assert verdicts(r, root) == truth
    n_fooled = sum(truth.values())
    assert r["lower_bound_forwards"] == n_fooled + (len(truth) - n_fooled) * r["n_backgrounds"]
    assert r["lower_bound_forwards"] <= r["forwards"] <= 1.2 * r["lower_bound_forwards"]
