"""Our background recipes beside the group-robustness baselines, on Waterbirds-style spurious digits.

    python bench/groups.py [--datasets mnist,digits] [--n-train 2000] [--epochs 3] [--out /tmp/bgbias-groups]
                           [--json docs/bench/groups.json]   # the committed rows docs/readme.py renders

Per dataset (MNIST from ``/work/shared/data/mnist``, and the demo's scikit-learn digits): a training
build where class c sits on background family c % 5 with probability RHO = 0.95 (else on another)
in its train split and a 20% held-out val split is group-balanced (DFR's held-out set, early stopping),
and a disjoint, group-balanced test build (every class on every family equally often) with the
variants eval and the challenge need. Every method trains the same small CNN (width 8, so a run
takes seconds on a busy CPU) for the same epochs (JTT: one identification epoch more; DFR: its head refit is a
convex fit on the held-out embeddings, no extra epochs); ERM (``baseline``) is the baseline measured in the
same run. ``steps`` = optimiser steps: JTT's upweighted epochs are longer (each error repeated ``--jtt-up`` times),
GroupDRO's batches come from a group-balanced resample of ERM's epoch size. Columns: clean accuracy = accuracy on
the test build's balanced ``original`` images (every class on every family equally often: the groups' mean, not
the training mix), worst-group accuracy (class x background family, groups with >= 5 images), the worst over
groups seen in training, the mean accuracy of the groups unseen / minority / majority in training,
training-weighted group accuracy, BG-gap, challenge accuracy (pool of ``--challenge-backgrounds`` Only-BG-T
images); 95% intervals in brackets. Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bgbias.audit.challenge import ChallengeConfig, run_challenge
from bgbias.audit.evaluate import EvalConfig, evaluate
from bgbias.demo import split_indices
from bgbias.models.checkpoint import load_checkpoint
from bgbias.models.nets import ARCHS, SmallCNN
from bgbias.sources.base import SubsetSource, create_source
from bgbias.synth.build import BuildConfig, build
from bgbias.synth.spurious import SpuriousSource
from bgbias.train.config import TrainConfig
from bgbias.train.loop import train

FAMILIES = ("texture:stripes", "texture:board", "color:red", "color:blue", "texture:circles")
METHODS = ("baseline", "mixed-rand", "bg-augment", "adversarial", "group_dro", "jtt", "dfr")
DATASETS = {"mnist": ("mnist:/work/shared/data/mnist", (20, 20)), "digits": ("digits:24", None)}
ARCH = "bench-cnn-8"


@ARCHS.register(ARCH, tags=["small"], help="small-cnn at width 8 (bench/groups.py only)")
def _bench_cnn(num_classes: int = 10, **_: object) -> torch.nn.Module:
    return SmallCNN(num_classes=num_classes, width=8)


class Unsplit(SubsetSource):
    """A subset whose own split is dropped: MNIST's t10k file calls every image ``val``, and the training
    build must split it itself (``holdout``) to get a ``train`` split at rho."""

    def splits(self) -> None:
        return None


def builds(name: str, args) -> tuple[Path, Path]:
    spec, size = DATASETS[name]
    if name == "mnist":
        spec = f"mnist:{args.mnist}"
    base = create_source(spec)
    train_idx, test_idx = split_indices(base.labels(), args.n_train, args.n_test, args.seed)
    root = Path(args.out) / name
    tr, te = root / "train", root / "test"
    if not (tr / "manifest.json").is_file():
        # train split at rho, a held-out val split (20%) group-balanced: what DFR and early stopping use
        build(Unsplit(base, train_idx), tr, BuildConfig(variants=("original", "mixed_rand"), seed=args.seed,
                                                              size=size, spurious=args.rho, spurious_families=FAMILIES,
                                                              holdout=0.2), progress=False)
    if not (te / "manifest.json").is_file():
        src = SpuriousSource(SubsetSource(base, test_idx), args.rho, FAMILIES, args.seed,
                             splits=["val"] * len(test_idx))                                      # group-balanced
        build(src, te, BuildConfig(variants=("original", "only_bg_t", "mixed_same", "mixed_rand"), seed=args.seed,
                                   size=size), progress=False)
    return tr, te


def run_method(method: str, tr: Path, te: Path, run: Path, args) -> dict:
    t0 = time.time()
    cfg = TrainConfig(recipe=method, data=str(tr), out=str(run), arch=ARCH, epochs=args.epochs, batch_size=64,
                      lr=3e-3, seed=args.seed, mask_epochs=1, jtt_epochs=1, jtt_up=args.jtt_up, dro_eta=args.dro_eta)
    metrics = train(cfg, progress=False)
    steps = 0   # the budget actually spent: optimiser steps (rows per epoch differ by recipe); DFR's head is a
    for h in metrics["history"]:   # separate convex fit with no loop epochs: not counted
        plan, info = metrics["steps"][h["phase"]], (metrics.get("phases") or {}).get(h["phase"], {})
        steps += plan["passes_per_epoch"] * -(-info.get("rows", metrics["n_train"]) // plan["batch_size"])
    spec = f"checkpoint:{run / 'model.pt'}"
    ev = evaluate(EvalConfig(model=spec, data=str(te), seed=args.seed, progress=False, batch_size=256,
                             n_bootstrap=500, group_min_count=5))
    ch = None
    if args.challenge_backgrounds:
        ch = run_challenge(ChallengeConfig(model=spec, data=str(te), seed=args.seed, progress=False, batch_size=256,
                                           max_backgrounds=args.challenge_backgrounds, top_k=1, top_candidates=1,
                                           fool_subset=20))
    o, g = ev["variants"]["original"], ev["variants"]["original"]["groups"]
    counts = load_checkpoint(run / "model.pt")["meta"].get("group_counts", {})
    by_kind = group_kinds(g["per_group"], counts)
    return {"method": method, "clean": o["accuracy"], "clean_ci": o["ci95"], "worst_group": g["worst_group_accuracy"],
            "worst_group_ci": g["ci95"], "worst_group_name": g["worst_group"], "weighted": g["weighted_accuracy"],
            "mean_group": g["mean_group_accuracy"], "bg_gap": ev["bg_gap"]["value"], "bg_gap_ci": ev["bg_gap"]["ci95"],
            "challenge": ch and ch["challenge_accuracy"], "challenge_ci": ch and ch["challenge_ci95"],
            "chance": o["chance"], "majority": o["majority"], "n_test": o["n"], "groups": g["n_groups"],
            "eligible": g["eligible"], **by_kind, "phases": metrics.get("phases"), "steps": steps,
            "epochs": len(metrics["history"]),
            "seconds": round(time.time() - t0, 1)}


def group_kinds(per_group: dict, counts: dict, min_count: int = 5) -> dict:
    """Test groups by their training count: ``unseen`` (none: no group recipe can weight them), ``minority``
    (below the mean group size), ``majority``; the mean accuracy of each and the worst over groups seen in training."""
    mean = sum(counts.values()) / max(len(counts), 1)
    kind = {k: "unseen" if not counts.get(k) else "minority" if counts[k] < mean else "majority" for k in per_group}
    out: dict = {}
    for name in ("unseen", "minority", "majority"):
        acc = [v["accuracy"] for k, v in per_group.items() if kind[k] == name]
        out[f"{name}_groups"], out[f"{name}_mean"] = len(acc), (sum(acc) / len(acc) if acc else None)
    seen = [v["accuracy"] for k, v in per_group.items() if kind[k] != "unseen" and v["n"] >= min_count]
    out["worst_seen_group"] = min(seen) if seen else None
    return out


def _p(x, ci=None) -> str:
    if x is None:
        return "-"
    s = f"{100 * x:5.1f}"
    return s + (f" [{100 * ci[0]:4.1f},{100 * ci[1]:5.1f}]" if ci else "")


def table(name: str, rows: list[dict]) -> str:
    r0 = rows[0]
    out = [f"{name}: balanced test n={r0['n_test']}, {r0['groups']} groups ({r0['eligible']} with >= 5 images), "
           f"chance {100 * r0['chance']:.1f}%, majority {100 * r0['majority']:.1f}%; all in %",
           f"clean = accuracy on the group-balanced test set's original images (every class on every family equally "
           f"often), not the training mix; group means by training count: {r0['unseen_groups']} groups unseen in "
           f"training, {r0['minority_groups']} minority, {r0['majority_groups']} majority",
           f"{'method':<12} {'clean acc':>19} {'worst-group acc':>19} {'worst seen':>10} {'unseen':>6} {'minor':>6} "
           f"{'major':>6} {'weighted':>8} {'BG-gap':>19} {'challenge acc':>19} {'steps':>5} {'s':>5}"]
    for r in rows:
        out.append(f"{r['method']:<12} {_p(r['clean'], r['clean_ci']):>19} "
                   f"{_p(r['worst_group'], r['worst_group_ci']):>19} "
                   f"{_p(r['worst_seen_group']):>10} {_p(r['unseen_mean']):>6} {_p(r['minority_mean']):>6} "
                   f"{_p(r['majority_mean']):>6} {_p(r['weighted']):>8} {_p(r['bg_gap'], r['bg_gap_ci']):>19} "
                   f"{_p(r['challenge'], r['challenge_ci']):>19} {r['steps']:>5} {r['seconds']:>5.0f}")
    best = max(rows, key=lambda r: r["worst_group"] or -1)
    erm = rows[0]
    out.append(f"best worst-group: {best['method']} ({_p(best['worst_group']).strip()}% vs ERM "
               f"{_p(erm['worst_group']).strip()}%); BG-gap closest to 0: "
               f"{min(rows, key=lambda r: abs(r['bg_gap']))['method']}; best challenge: "
               f"{max(rows, key=lambda r: r['challenge'] or -1)['method']}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="mnist,digits")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--mnist", default="/work/shared/data/mnist")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rho", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jtt-up", type=int, default=20, help="JTT's lambda_up (the paper: 50-100 on images, 6 on text)")
    ap.add_argument("--dro-eta", type=float, default=0.01, help="GroupDRO's step size for the group weights")
    ap.add_argument("--challenge-backgrounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/bgbias-groups")
    ap.add_argument("--json", default=None, help="also write the rows here (docs/bench/groups.json for the README)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0, results = time.time(), {}
    for name in args.datasets.split(","):
        tr, te = builds(name, args)
        rows = []
        for m in args.methods.split(","):
            rows.append(run_method(m, tr, te, Path(args.out) / name / "runs" / m, args))
            print(f"  {name} {m}: {rows[-1]['seconds']:.0f} s", flush=True)
        results[name] = rows
        print(table(name, rows), flush=True)
    doc = {"command": "python bench/groups.py " + " ".join(sys.argv[1:]),
           "args": {k: v for k, v in vars(args).items() if k not in ("out", "json")}, "rho": args.rho,
           "families": list(FAMILIES), "results": results, "total_seconds": round(time.time() - t0, 1)}
    for path in [Path(args.out, "groups.json")] + ([Path(args.json)] if args.json else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"total {time.time() - t0:.0f} s; rows in {Path(args.out) / 'groups.json'}")


if __name__ == "__main__":
    main()
