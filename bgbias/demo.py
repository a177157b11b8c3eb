"""``bgbias demo``: the whole story end to end on bundled data: a model falls for a background shortcut, a mitigated one doesn't.

    bgbias demo                       # scikit-learn digits, no network, a few minutes on a laptop CPU
    bgbias demo --quick               # the same in under a minute (smaller sets, fewer epochs)
    bgbias demo --data mnist:DIR      # the same story on MNIST IDX files

Steps (each one library call; all randomness from ``--seed``):

1. split the source into a training and a test part (seeded, disjoint ids);
2. build both with class-correlated backgrounds of known strength (:class:`~bgbias.sources.base.SpuriousSource`,
   ``rho`` = 0.9: class c sits on its own background family 90% of the time). The test build holds
   all 8 IN-9 variants plus colour and texture variants; the training build holds ``original``
   (and ``mixed_rand``, what the ``mixed-rand`` recipe trains on);
3. train the ``baseline`` and the mitigated recipe (default ``mixed-rand``, paper 001) on the same images;
4. for both: ``eval`` (accuracy per variant, BG-gap), ``challenge`` (worst-case background),
   ``saliency`` (share of attribution on the foreground);
5. ``report``: ``OUT/report.html`` + ``OUT/results.json`` (with this :class:`DemoConfig`).

Layout: ``OUT/data/<key>/{train,test}`` (IN-9 layout; ``key`` names the config, so
``--quick`` and a full run can share OUT and a rerun reuses its builds),
``OUT/runs/<recipe>/`` (model.pt, metrics.json, eval.json, challenge.json,
saliency.json + overlays), ``OUT/figures/*.png``, ``OUT/report.html``, ``OUT/results.json``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bgbias.core.layout import IN9_VARIANTS
from bgbias.core.seeding import numpy_rng
from bgbias.sources.base import SubsetSource, create_source

EXTRA_VARIANTS = ("color:red", "color:blue", "color:#808080", "texture:stripes", "texture:board", "texture:noise")
MITIGATIONS = ("mixed-rand", "bg-augment")


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo's numbers depend on; saved into ``results.json`` (``--quick`` swaps in smaller values)."""

    out: str = "bgbias-demo"
    data: str = "digits:24"                 # source spec; digits at 24 px keep the demo fast on a CPU
    seed: int = 0
    quick: bool = False
    device: str | None = None               # None: cuda when available, else cpu
    rho: float = 0.9                        # strength of the background shortcut in train and test
    mitigation: str = "mixed-rand"
    n_train: int = 1400
    n_test: int = 300
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    variants: tuple[str, ...] = IN9_VARIANTS + EXTRA_VARIANTS
    challenge_backgrounds: int | None = 60    # pool size for the challenge (None: every Only-BG-T image)
    fool_subset: int = 100                    # foregrounds on which fool rates of top backgrounds are measured
    saliency_images: int = 60
    workers: int = 1

    @classmethod
    def quick_preset(cls, **overrides: Any) -> "DemoConfig":
        """Under a minute on 2 cores: fewer images, epochs (so smaller batches, a higher rate) and backgrounds."""
        base = dict(quick=True, n_train=600, n_test=120, epochs=4, batch_size=32, lr=2e-3, challenge_backgrounds=30,
                    fool_subset=60, saliency_images=24)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def validate(self) -> "DemoConfig":
        if self.mitigation not in MITIGATIONS:
            raise ValueError(f"Unknown mitigation {self.mitigation!r}; valid: {', '.join(MITIGATIONS)}.")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be a probability in [0, 1], got {self.rho}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")
        for name in ("n_train", "n_test", "epochs", "batch_size", "saliency_images"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        missing = [v for v in ("original", "only_bg_t", "only_fg", "mixed_same", "mixed_rand") if v not in self.variants]
        if missing:
            raise ValueError(f"The demo needs the variants {', '.join(missing)}; got {', '.join(self.variants)}.")
        return self


def split_indices(labels: Sequence[int], n_train: int, n_test: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint, sorted train/test indices from a seeded permutation (test first, so it is stable under n_train)."""
    perm = numpy_rng(seed, "demo-split").permutation(len(labels))
    if len(perm) < 2:
        raise ValueError(f"The source has {len(perm)} images; the demo needs at least 2.")
    n_test = min(n_test, len(perm) // 2)
    test, train = perm[:n_test], perm[n_test:n_test + n_train]
    return sorted(int(i) for i in train), sorted(int(i) for i in test)


def build_key(cfg: DemoConfig) -> str:
    """Folder name for the builds of this config: a rerun reuses them, another config (``--quick``) gets its own."""
    from bgbias.core.layout import sanitize_name
    from bgbias.core.seeding import derive_seed
    from bgbias.core.version import __version__

    # the version (and a format tag bumped when the builds' source description changes) is part of the key:
    # build() refuses a folder holding a build made differently, and the demo should rebuild, not fail
    parts = (cfg.data, cfg.seed, cfg.rho, cfg.n_train, cfg.n_test, cfg.variants, cfg.mitigation, __version__, 2)
    return f"{sanitize_name(cfg.data)}-seed{cfg.seed}-{derive_seed(0, *parts) % 16 ** 8:08x}"


class _Stages:
    """Prints ``[k/N] what`` per stage and records each stage's wall and CPU seconds (CPU: all threads)."""

    def __init__(self, total: int, progress: bool):
        self.total, self.progress, self.k, self.key = total, progress, 0, None
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def start(self, key: str | None, text: str) -> None:
        now, cpu = time.time(), time.process_time()
        if self.key is not None:
            self.wall[self.key] = round(now - self.t, 1)
            self.cpu[self.key] = round(cpu - self.c, 1)
        self.k += 1
        if self.progress:
            print(f"[{self.k}/{self.total}] {text}", flush=True)
        self.key, self.t, self.c = key, now, cpu


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict[str, Any]:
    """Run every step into ``cfg.out`` and return the ``results.json`` dict (report + demo section)."""
    import torch

    from bgbias.audit.challenge import ChallengeConfig, run_challenge
    from bgbias.audit.evaluate import EvalConfig, evaluate
    from bgbias.core.io import write_json
    from bgbias.models.load import resolve_device
    from bgbias.report.write import write_report
    from bgbias.synth.build import BuildConfig, build
    from bgbias.train.config import TrainConfig
    from bgbias.train.loop import train

    cfg.validate()
    out = Path(cfg.out)
    device = str(resolve_device(cfg.device))
    recipes = ("baseline", cfg.mitigation)
    stages, t_all = _Stages(4 + 3 * len(recipes), progress), time.time()
    base = create_source(cfg.data)
    train_idx, test_idx = split_indices(base.labels(), cfg.n_train, cfg.n_test, cfg.seed)

    data_root = out / "data" / build_key(cfg)
    stages.start("build_train", f"building the training set: {len(train_idx)} images of {cfg.data} on "
                                f"class-correlated backgrounds (rho={cfg.rho:g})")
    train_variants = ("original", "mixed_rand") if cfg.mitigation == "mixed-rand" else ("original",)
    build(SubsetSource(base, train_idx), data_root / "train",
          BuildConfig(variants=train_variants, seed=cfg.seed, spurious=cfg.rho, holdout=0.1), workers=cfg.workers,
          progress=progress)
    stages.start("build_test", f"building the test set: {len(test_idx)} images x {len(cfg.variants)} variants")
    test_dir = data_root / "test"
    build(SubsetSource(base, test_idx), test_dir,
          BuildConfig(variants=tuple(cfg.variants), seed=cfg.seed, spurious=cfg.rho), workers=cfg.workers,
          progress=progress)

    files: list[Path] = [test_dir / "manifest.json"]
    for recipe in recipes:
        run = out / "runs" / recipe
        spec = f"checkpoint:{run / 'model.pt'}"
        tcfg = TrainConfig(recipe=recipe, data=str(data_root / "train"), out=str(run), epochs=cfg.epochs,
                           batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=device)
        stages.start(f"train_{recipe}", f"training {recipe} (small-cnn, {cfg.epochs} epochs)")
        train(tcfg, progress=progress)
        stages.start(f"eval_{recipe}", f"evaluating {recipe}: accuracy per variant, BG-gap, challenge")
        ev = evaluate(EvalConfig(model=spec, data=str(test_dir), seed=cfg.seed, device=device, progress=progress,
                                 batch_size=256))
        write_json(run / "eval.json", ev)
        ch = run_challenge(ChallengeConfig(model=spec, data=str(test_dir), seed=cfg.seed, device=device,
                                           max_backgrounds=cfg.challenge_backgrounds, top_k=3, top_candidates=2,
                                           fool_subset=cfg.fool_subset, progress=progress),
                           out=run / "challenge.json")
        write_json(run / "challenge.json", ch)
        stages.start(f"saliency_{recipe}", f"saliency of {recipe}")
        files += [run / "eval.json", run / "challenge.json", run / "metrics.json",
                  _saliency(spec, test_dir, run, cfg, device, progress)]

    stages.start("report", "writing the report")
    extra = {"demo": {"config": dataclasses.asdict(cfg), "torch_threads": torch.get_num_threads(),
                      "device": device, "n_train": len(train_idx), "n_test": len(test_idx)}}
    results = write_report(files, out / "report.html", title="bgbias demo: a background shortcut, and its fix",
                           extra=extra, figures_dir=out / "figures")
    stages.start(None, "done")
    results["demo"]["story"] = story(results)
    results["demo"].update(timings_s=stages.wall, cpu_s=stages.cpu, seconds=round(time.time() - t_all, 1))
    write_json(out / "results.json", results)
    return results


def _saliency(spec: str, data: Path, run: Path, cfg: DemoConfig, device: str, progress: bool) -> Path:
    """Saliency of one model on original, Only-FG and Mixed-Rand into ``run/saliency.json`` (+ overlay PNGs)."""
    from bgbias.audit.saliency import SaliencyConfig, run_saliency
    from bgbias.core.io import write_json

    res = run_saliency(SaliencyConfig(model=spec, data=str(data), variants=("original", "only_fg", "mixed_rand"),
                                      max_images=cfg.saliency_images, seed=cfg.seed, device=device,
                                      progress=progress), out=run / "saliency.json")
    write_json(run / "saliency.json", res)
    return run / "saliency.json"


def story(results: dict[str, Any]) -> dict[str, Any]:
    """Whether the demo shows what it claims: the mitigated model's BG-gap is smaller and its worst case better."""
    base, mit = results["models"][0], results["models"][-1]
    gap = lambda m: (m.get("bg_gap") or {}).get("value")  # noqa: E731
    chal = lambda m: (m.get("challenge") or {}).get("challenge_accuracy")  # noqa: E731
    out = {"baseline": base["name"], "mitigated": mit["name"],
           "bg_gap": {base["name"]: gap(base), mit["name"]: gap(mit)},
           "challenge_accuracy": {base["name"]: chal(base), mit["name"]: chal(mit)}}
    out["gap_smaller"] = None if None in (gap(base), gap(mit)) else gap(mit) < gap(base)
    out["challenge_better"] = None if None in (chal(base), chal(mit)) else chal(mit) > chal(base)
    return out


def summary_lines(results: dict[str, Any], out: Path) -> list[str]:
    """What the terminal shows at the end: one sentence per model and where the report is."""
    lines = [m["summary"] for m in results["models"]]
    s = results["demo"]["story"]
    if s["gap_smaller"]:
        lines.append(f"{s['mitigated']} cut the BG-gap from {100 * s['bg_gap'][s['baseline']]:.1f} to "
                     f"{100 * s['bg_gap'][s['mitigated']]:.1f} points.")
    elif s["gap_smaller"] is False:
        lines.append(f"Note: {s['mitigated']} did not reduce the BG-gap in this run (try more --epochs).")
    lines.append(f"Report: {(out / 'report.html').resolve()}  ({results['demo']['seconds']:.0f} s)")
    return lines
