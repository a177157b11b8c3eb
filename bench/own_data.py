"""The own-data flow on real photos: build (with a held-out split) -> train a baseline -> eval -> report.

Run: ``python bench/own_data.py`` (reads ``../shared/data/realmasks``: class folders of photos with
masks; ``--data DIR`` for another folder of that shape). Each step is the CLI a user would type,
run as its own process from a scratch folder, and timed. Printed beside the validation accuracy:
chance (1/C) and the majority-class rate of the same validation images, i.e. what "always predict
the commonest class" scores; a model is only informative above both. Modest on 2 busy cores:
64x64 images, small-cnn, 5 epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = next((p / "shared" / "data" / "realmasks" for p in (ROOT.parent, ROOT.parent.parent)
                     if (p / "shared" / "data" / "realmasks").is_dir()), ROOT.parent / "shared" / "data" / "realmasks")


def step(name: str, args: list[str], cwd: Path, times: dict[str, float]) -> str:
    """Run ``python -m bgbias ARGS`` in ``cwd``; record its wall time; fail loudly with its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "bgbias", *args], cwd=cwd, env=env, capture_output=True, text=True)
    times[name] = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"step {name!r} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    for line in res.stderr.splitlines():
        if "warning" in line.lower():
            print(f"  [{name}] {line.strip()}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with images/<class>/ and masks/<class>/")
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder (kept) instead of a temp one")
    a = ap.parse_args()
    images, masks = a.data / "images", a.data / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise SystemExit(f"{a.data} needs images/<class>/ and masks/<class>/ folders.")
    work = a.keep or Path(tempfile.mkdtemp(prefix="bgbias-own-data-"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    build, run = work / "build", work / "run"

    step("build", ["build", f"folder:{images}", "--masks", str(masks), "--out", str(build), "--holdout",
                   str(a.holdout), "--size", a.size, "--workers", str(a.workers), "--quiet"], work, times)
    step("train", ["train", "--recipe", "baseline", "--data", str(build), "--arch", "small-cnn", "--epochs",
                   str(a.epochs), "--out", str(run), "--quiet"], work, times)
    model = f"checkpoint:{run / 'model.pt'}"
    step("eval", ["eval", "--model", model, "--data", str(build), "--out", str(run / "eval.json"), "--no-progress",
                  "--device", "cpu"], work, times)
    step("report", ["report", str(run / "eval.json"), str(run / "metrics.json"), str(build / "manifest.json"),
                    "--out", str(work / "report.html")], work, times)

    manifest = json.loads((build / "manifest.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    ev = json.loads((run / "eval.json").read_text())
    ref, final = metrics["reference"], metrics["final"]
    c = manifest["counts"]
    print(f"data: {a.data} ({c['total']} images, {len(manifest['classes'])} classes; kept {c['kept']}: "
          + ", ".join(f"{k} {n}" for k, n in manifest["splits"].items()) + f"; --holdout {a.holdout}, {a.size})")
    print("step times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
          + f", total {sum(times.values()):.1f}")
    print(f"training: {metrics['n_train']} images, {metrics['steps']['main']['batch_size']}-image batches x "
          f"{metrics['steps']['main']['passes_per_epoch']} pass(es) per epoch, {a.epochs} epochs")
    print(f"validation accuracy (train's own check, original/val, n={metrics['n_val']}): "
          f"{100 * final['val_accuracy']:.1f}%   chance {100 * ref['chance_rate']:.1f}%   "
          f"majority ('{ref['majority_class']}') {100 * ref['majority_rate']:.1f}%   "
          f"above majority by {100 * (final['val_accuracy'] - ref['majority_rate']):+.1f} points")
    print(f"eval on val (split {ev['split']!r}, overlap_with_training {ev['overlap_with_training']}):")
    for v, r in ev["variants"].items():
        ci = r["ci95"] or [float("nan")] * 2
        print(f"  {v:<12} {100 * r['accuracy']:5.1f}%  [{100 * ci[0]:5.1f}, {100 * ci[1]:5.1f}]  n={r['n']}")
    print(f"report: {work / 'report.html'}")


if __name__ == "__main__":
    main()
