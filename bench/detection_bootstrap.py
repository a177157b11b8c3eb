"""Are eval-detect's bootstrap intervals honest? Coverage of plain vs bias-corrected percentile intervals of AP.

Takes a run of ``bench/detection.py`` (its ``build/`` and ``baseline/model.pt``), treats the
detector's AP on all val images of ``original`` as the truth, and draws ``--subsets`` random
subsets of ``--n`` images without replacement. On each subset it bootstraps AP (the same draws
for both intervals, :func:`bgbias.detect.metrics.bootstrap_draws`) and checks whether the plain
percentile interval and the bias-corrected one (:func:`~bgbias.detect.metrics.bc_interval`, what
eval-detect reports) hold the truth, and where the subset's own AP sits in each interval
(0 = lower end, 1 = upper end; an unbiased interval puts it near 0.5). Run:

    python bench/detection.py --out /tmp/bgbias-bench-det      # once, for the model and the build
    python bench/detection_bootstrap.py --run /tmp/bgbias-bench-det [--n 15,40] [--subsets 60]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bgbias.detect.build import BuildDetSource
from bgbias.detect.evaluate import predict
from bgbias.detect.metrics import _fp_counts, _headline, bc_interval, bootstrap_draws, evaluate_coco
from bgbias.detect.models import load_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="/tmp/bgbias-bench-det", help="output folder of bench/detection.py")
    ap.add_argument("--n", default="15,40", help="subset sizes (images)")
    ap.add_argument("--subsets", type=int, default=60)
    ap.add_argument("--bootstrap", type=int, default=100)
    args = ap.parse_args()
    run = Path(args.run)
    ds = json.loads((run / "build" / "original" / "val" / "annotations.json").read_text())
    preds, _ = predict(load_detector(str(run / "baseline" / "model.pt")), BuildDetSource(run / "build"), 16)
    truth = _headline(evaluate_coco(ds, preds))["AP"]
    ids = np.array(sorted(im["id"] for im in ds["images"]))
    rng = np.random.default_rng(123)
    print(f"AP of the baseline on all {len(ids)} val images of original: {truth:.3f} (the truth below)")
    print(f"{'n':>4} {'interval':<18} {'coverage':>8} {'median position':>16} {'point outside':>14}")
    for n in map(int, args.n.split(",")):
        hits = {"percentile": 0, "bias-corrected": 0}
        pos: dict[str, list[float]] = {k: [] for k in hits}
        for k in range(args.subsets):
            keep = set(rng.choice(ids, n, replace=False).tolist())
            sub = {"images": [im for im in ds["images"] if im["id"] in keep],
                   "annotations": [a for a in ds["annotations"] if a["image_id"] in keep],
                   "categories": ds["categories"]}
            E = evaluate_coco(sub, [p for p in preds if p["image_id"] in keep])
            point = _headline(E)["AP"]
            draws = bootstrap_draws(E, _fp_counts(E, 0.5), args.bootstrap, seed=k)["AP"]
            for name, iv in (("percentile", bc_interval(draws, 0.95, None)),
                             ("bias-corrected", bc_interval(draws, 0.95, point))):
                hits[name] += iv[0] <= truth <= iv[1]
                pos[name].append((point - iv[0]) / max(1e-12, iv[1] - iv[0]))
        for name in hits:
            outside = np.mean([not 0 <= x <= 1 for x in pos[name]])
            print(f"{n:>4} {name:<18} {hits[name] / args.subsets:>8.2f} {np.median(pos[name]):>16.2f} "
                  f"{outside:>14.2f}")


if __name__ == "__main__":
    main()
