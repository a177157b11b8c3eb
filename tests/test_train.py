"""bgbias train: recipes learn, checkpoints round-trip under weights_only, resume is exact, build dirs and the CLI work."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bgbias.core.seeding import torch_generator
from bgbias.models.nets import create_arch
from bgbias.train.config import TrainConfig
from bgbias.train.data import TrainData, load_data
from bgbias.train.loop import train


@pytest.fixture(scope="module")
def digits() -> TrainData:
    return load_data("digits:16")


def subset(d: TrainData, n: int) -> TrainData:
    rows = torch.randperm(len(d.labels), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return TrainData(d.images[rows], d.masks[rows], d.labels[rows], [d.ids[i] for i in rows], d.classes, [])


def rebuild(path: Path) -> tuple[torch.nn.Module, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    model = create_arch(meta["arch"], len(meta["classes"]), **meta["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), meta


@torch.no_grad()
def val_accuracy(model: torch.nn.Module, meta: dict, d: TrainData) -> float:
    mean = torch.tensor(meta["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["preprocess"]["std"]).view(1, 3, 1, 1)
    x = (d.images.float() / 255.0 - mean) / std
    return float((model(x).argmax(1) == d.labels).float().mean())


def test_bg_augment_learns_and_checkpoint_round_trips(digits, tmp_path):
    cfg = TrainConfig(recipe="bg-augment", data="digits:16", out=str(tmp_path / "run"), epochs=3, lr=3e-3,
                      batch_size=64, families=("color", "mean", "texture:stripes", "other_sample"), val_fraction=0.25)
    digits = subset(digits, 800)
    metrics = train(cfg, progress=False, data=digits)
    assert metrics["final"]["val_accuracy"] > 0.7, metrics["history"]          # chance is 0.1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["kind"] == "bgbias-train/1" and saved["recipe"] == "bg-augment"
    assert saved["families_seen"] == ["color", "mean", "texture:stripes", "mixed_rand"]
    assert saved["config"]["families"] == ["color", "mean", "texture:stripes", "other_sample"]
    assert len(saved["history"]) == 3 and {"loss", "train_accuracy", "seconds"} <= set(saved["history"][0])

    model, meta = rebuild(tmp_path / "run" / "model.pt")
    for key in ("arch", "arch_kwargs", "classes", "preprocess", "recipe", "seed", "config", "families_seen", "epoch"):
        assert key in meta
    assert meta["classes"] == digits.classes and meta["preprocess"]["size"] == [16, 16] and meta["epoch"] == 3
    # the same val rows train() used: its recorded val accuracy must be reproduced from the file alone
    perm = torch.randperm(len(digits.labels), generator=torch_generator(0, "split"))
    val = perm[: int(round(0.25 * len(digits.labels)))].sort().values
    vd = TrainData(digits.images[val], None, digits.labels[val], [], digits.classes, [])
    assert val_accuracy(model, meta, vd) == pytest.approx(metrics["final"]["val_accuracy"], abs=1e-6)
    # bgbias eval's loader rebuilds the same network and preprocessing from the file
    from bgbias.models.load import load_model

    loaded = load_model(f"checkpoint:{tmp_path / 'run' / 'model.pt'}")
    x = digits.images[:8].float() / 255.0
    assert loaded.families_seen == saved["families_seen"] and loaded.classes == digits.classes
    with torch.no_grad():
        assert torch.allclose(loaded.logits(loaded.preprocess(x)), model((x - 0.5) / 0.5), atol=1e-5)


def test_resume_gives_the_same_weights(digits, tmp_path):
    d = subset(digits, 300)
    base = dict(recipe="bg-augment", data="digits:16", epochs=3, batch_size=64, optimizer="sgd", lr=0.05,
                families=("color", "texture", "next_class"), val_fraction=0.0)
    train(TrainConfig(**base, out=str(tmp_path / "full")), progress=False, data=d)
    stopped = train(TrainConfig(**base, out=str(tmp_path / "cut")), progress=False, data=d, stop_after=1)
    assert stopped["stopped"] and not (tmp_path / "cut" / "model.pt").exists()
    train(TrainConfig(**base, out=str(tmp_path / "cut"), resume=True), progress=False, data=d)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert len(last["extra"]["history"]) == 3
    with pytest.raises(ValueError, match="differs in lr"):
        train(TrainConfig(**{**base, "lr": 0.1}, out=str(tmp_path / "cut"), resume=True), progress=False, data=d)


def _write_build_dir(root: Path, d: TrainData) -> None:
    from bgbias.core.io import write_npy, write_png
    from bgbias.core.layout import class_dirname

    for split in ("train", "val"):          # training reads 'train' and validates on 'val'
        for i in range(len(d.labels)):
            cls = class_dirname(int(d.labels[i]), d.classes[int(d.labels[i])], len(d.classes))
            for variant in ("original", "mixed_rand"):
                img = d.images[i].permute(1, 2, 0).numpy()
                write_png(root / variant / split / cls / f"{d.ids[i]}.png", img if variant == "original" else 255 - img)
            write_npy(root / "fg_mask" / split / cls / f"{d.ids[i]}.npy",
                      d.masks[i].numpy().astype(np.float32) / 255)
    (root / "manifest.json").write_text("{}")


def test_mixed_rand_reads_the_build_dir_variant(digits, tmp_path):
    d = subset(digits, 60)
    _write_build_dir(tmp_path / "build", d)
    loaded = load_data(str(tmp_path / "build"), "mixed_rand", split="train")
    assert len(loaded.labels) == 60 and loaded.masks is not None
    assert torch.equal(loaded.images.sort(0).values, (255 - d.images).sort(0).values)
    metrics = train(TrainConfig(recipe="mixed-rand", data=str(tmp_path / "build"), out=str(tmp_path / "mr"),
                                epochs=1, val_fraction=0.0), progress=False)
    assert metrics["families_seen"] == ["mixed_rand"] and metrics["n_train"] == 60


def test_cli_train_and_errors(tmp_path, capsys):
    from bgbias.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--recipe", "mixed-rand", "--data", "digits:16", "--epochs", "1", "--out", str(out),
               "--quiet", "--batch-size", "256"])
    assert rc == 0 and (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["families_seen"] == ["mixed_rand"]
    assert main(["train", "--recipe", "baseline", "--data", "digits:16", "--out", str(out), "--val-fraction", "1.5",
                 "--quiet"]) == 2
    assert "--val-fraction must be in [0, 1), got 1.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'; valid: sgd, adam, adamw"):
        TrainConfig(optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match="needs foreground masks"):
        train(TrainConfig(recipe="bg-augment", out=str(tmp_path / "x"), epochs=1), progress=False,
              data=TrainData(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), None, torch.tensor([0, 1, 0, 1]),
                             list("abcd"), ["a", "b"], []))


def test_cli_train_passes_adversarial_options(tmp_path, capsys, monkeypatch):
    """``--adv-bank`` and ``--gen-every`` reach the TrainConfig (issue 15), and bad values are one clear error."""
    import bgbias.train.loop as loop
    from bgbias.cli import main

    seen = {}

    def fake_train(cfg, progress=True):
        seen["cfg"] = cfg.validate()
        return {"final": {}}

    monkeypatch.setattr(loop, "train", fake_train)
    assert main(["train", "--recipe", "adversarial", "--data", "digits:16", "--out", str(tmp_path / "a"), "--quiet",
                 "--adv-bank", "0.25", "--gen-every", "3"]) == 0
    assert seen["cfg"].adv_bank == 0.25 and seen["cfg"].gen_every == 3
    assert main(["train", "--recipe", "adversarial", "--data", "digits:16", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert (seen["cfg"].adv_bank, seen["cfg"].gen_every) == (TrainConfig().adv_bank, TrainConfig().gen_every)
    monkeypatch.undo()
    assert main(["train", "--recipe", "adversarial", "--data", "digits:16", "--out", str(tmp_path / "b"), "--quiet",
                 "--gen-every", "0"]) == 2
    assert "--gen-every >= 1" in capsys.readouterr().err


def test_cli_dfr_epochs_is_retired_with_a_warning(tmp_path, capsys, monkeypatch):
    """``--dfr-epochs`` only re-scored DFR's refitted head at learning rate 0: old command lines still run, warned."""
    import bgbias.train.loop as loop
    from bgbias.cli import main

    seen = {}
    monkeypatch.setattr(loop, "train", lambda cfg, progress=True: seen.setdefault("cfg", cfg) and {"final": {}})
    assert main(["train", "--recipe", "dfr", "--data", "digits:16", "--out", str(tmp_path / "d"), "--quiet",
                 "--dfr-epochs", "3"]) == 0
    assert "--dfr-epochs is retired and ignored" in capsys.readouterr().err
    assert not hasattr(seen["cfg"], "dfr_epochs")


def test_epoch_rows_come_from_the_phase_and_keep_their_count():
    """``PhaseHooks.rows_for_epoch`` gives each epoch's rows from a generator keyed by (seed, phase, epoch); an epoch
    with another row count than epoch 0 is one clear error (the LR schedule was planned for epoch 0's)."""
    from bgbias.train.loop import epoch_rows
    from bgbias.train.recipes import PhaseHooks

    cfg = TrainConfig(seed=3)
    draw = PhaseHooks(rows_for_epoch=lambda e, g: torch.randperm(10, generator=g)[:6])
    r0, r1 = epoch_rows(draw, cfg, "main", 0, torch.arange(10)), epoch_rows(draw, cfg, "main", 1, torch.arange(6))
    assert torch.equal(r0, torch.randperm(10, generator=torch_generator(3, "rows", "main", 0))[:6])
    assert torch.equal(r1, torch.randperm(10, generator=torch_generator(3, "rows", "main", 1))[:6])
    assert torch.equal(epoch_rows(PhaseHooks(), cfg, "main", 2, r1), r1)
    grows = PhaseHooks(rows_for_epoch=lambda e, g: torch.arange(5 + e))
    with pytest.raises(ValueError, match="drew 6 rows for main epoch 2 but 5 before"):
        epoch_rows(grows, cfg, "main", 1, epoch_rows(grows, cfg, "main", 0, torch.arange(9)))
