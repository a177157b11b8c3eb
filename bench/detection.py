"""Report 000's detection finding on data that ships with bgbias, in one run on a CPU.

Trains the same tiny detector (``tiny_centernet``, torchvision interface) twice on the
synthetic multi-digit set ``digits-det`` (earthy low-saturation scenes): ``baseline`` and
``bg-augment`` (:class:`~bgbias.detect.augment.DetectionBackgroundSwap`, families
``color,texture,other_sample``), then evaluates both with ``eval-detect``'s library call on a
detection build of the held-out split: COCO AP (pycocotools) per background with bootstrap
intervals, the drop against the original, and FP per image on Only-BG. Also prints the
evaluation time per 1,000 images (COCOeval + bootstrap, and the detector's inference).
Writes ``OUT/<recipe>.det_eval.json`` (``bgbias report`` reads them). Scene photos for a
held-out ``photos`` background are read from ``../shared/data/realmasks/backgrounds`` when
present (never shipped). Run:

    python bench/detection.py [--n 800] [--epochs 12] [--out /tmp/bgbias-bench-det] [--photos DIR]
    bgbias report /tmp/bgbias-bench-det/*.det_eval.json --names baseline,bg-augment --out det_report.html
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import shutil
import time
from pathlib import Path

import torch

from bgbias.core.io import write_json
from bgbias.core.names import seen_in_training
from bgbias.detect.build import DetBuildConfig, build_detection
from bgbias.detect.data import SplitView, create_det_source
from bgbias.detect.evaluate import evaluate_detection
from bgbias.detect.models import load_detector
from bgbias.detect.train import DetTrainConfig, train_detector

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "realmasks" / "backgrounds"
FAMILIES = ("color", "texture", "other_sample")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=800, help="canvases (75%% train, 25%% val)")
    ap.add_argument("--classes", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=12, help="both models (2 or 6 leave bg-augment below baseline "
                                                           "on original; bench/RESULTS.md, issue 17)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--families", default=",".join(FAMILIES), help="bg-augment's background families")
    ap.add_argument("--p", type=float, default=0.5, help="bg-augment's swap probability")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default="/tmp/bgbias-bench-det")
    ap.add_argument("--photos", default=str(PHOTOS), help="scene photos for a held-out background (skipped if absent)")
    ap.add_argument("--json", help="also write the summary the README reads (e.g. docs/bench/detection.json)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    spec = f"digits-det:{args.n}"
    families = tuple(f for f in args.families.split(",") if f)
    variants = ["original", "color:red", "color:green", "color:blue", "color:black", "mean"]
    if Path(args.photos).is_dir():
        variants.append(f"photos:{args.photos}")
    variants += ["mixed_rand", "only_bg"]
    t0 = time.perf_counter()
    src = SplitView(create_det_source(spec, classes=args.classes), "val")
    build_detection(src, out / "build", DetBuildConfig(tuple(variants), seed=0))
    t_build = time.perf_counter() - t0
    runs = {}
    for recipe in ("baseline", "bg-augment"):
        t = time.perf_counter()
        cfg = DetTrainConfig(data=spec, classes=args.classes, out=str(out / recipe), recipe=recipe,
                             arch="tiny_centernet", arch_kwargs={"width": args.width}, epochs=args.epochs,
                             batch_size=16, lr=args.lr, optimizer="adamw", families=families, p=args.p, seed=0)
        m = train_detector(cfg)
        t_train = time.perf_counter() - t
        det = load_detector(str(out / recipe / "model.pt"))
        t = time.perf_counter()
        res = evaluate_detection(out / "build", det, bootstrap=args.bootstrap, batch_size=16)
        write_json(out / f"{recipe}.det_eval.json", res)        # for: bgbias report OUT/*.det_eval.json
        runs[recipe] = (res, t_train, time.perf_counter() - t, m)
    print(f"digits-det: {args.n} canvases 64x64 ({args.classes} as classes), {len(src)} val images; "
          f"tiny_centernet width {args.width}, {args.epochs} epochs on {runs['baseline'][3]['n_train_images']} "
          f"train images; build {t_build:.0f} s")
    print(f"bg-augment families: {', '.join(families)} (p={args.p}); lr {args.lr}; seen = that family was shown "
          "in training")
    head = f"{'background':<26} {'seen':>5} | {'baseline AP [95% CI]':>26} {'AP50':>6} | {'bg-augment AP [95% CI]':>26} {'AP50':>6}"
    print(head)
    print("-" * len(head))
    seen = list(runs["bg-augment"][3]["meta"]["families_seen"])
    rows = []
    for name in variants:
        cells = []
        for recipe in ("baseline", "bg-augment"):
            v = runs[recipe][0]["variants"][name]
            m, ci = v["metrics"], v["intervals"].get("AP")
            if not v["has_gt"]:
                cells.append(f"{'FP/img ' + format(v['fp_per_image'], '.3f'):>26} {'':>6}")
                continue
            ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            cells.append(f"{m['AP']:>8.3f} {ci_s:>17} {m['AP50']:>6.3f}")
        is_seen = "-" if name == "original" else "yes" if seen_in_training(name, seen) else "no"
        print(f"{name[:26]:<26} {is_seen:>5} | {cells[0]} | {cells[1]}")
        label = "photos (scene photos)" if name.startswith("photos:") else name
        rows.append({"variant": label, "seen": is_seen, **{
            r: ({"AP": round(runs[r][0]["variants"][name]["metrics"]["AP"], 3),
                 "ci95": [round(x, 3) for x in runs[r][0]["variants"][name]["intervals"].get("AP") or []],
                 "AP50": round(runs[r][0]["variants"][name]["metrics"]["AP50"], 3)}
                if runs[r][0]["variants"][name]["has_gt"]
                else {"fp_per_image": round(runs[r][0]["variants"][name]["fp_per_image"], 3)})
            for r in ("baseline", "bg-augment")}})
    summary = {"command": "python bench/detection.py " + " ".join(sys.argv[1:]), "n": args.n, "epochs": args.epochs,
               "families": list(families), "p": args.p, "val_images": len(src), "rows": rows, "recipes": {}}
    for recipe in ("baseline", "bg-augment"):
        res, t_train, t_eval, _ = runs[recipe]
        colours = [res["variants"][v]["metrics"]["AP"] for v in variants if v.startswith("color:")]
        o = res["variants"]["original"]["metrics"]["AP"]
        tm = res["timing"]
        print(f"{recipe:<11} mean AP on colours {sum(colours) / len(colours):.3f} vs original {o:.3f} "
              f"(rPC {sum(colours) / len(colours) / o:.3f}); train {t_train:.0f} s; eval {t_eval:.0f} s: "
              f"COCOeval+{args.bootstrap} bootstraps {tm['eval_s_per_1000_images']:.1f} s per 1,000 images, "
              f"inference {1000 * tm['inference_s'] / max(1, tm['images']):.1f} s per 1,000 images")
        summary["recipes"][recipe] = {"original_AP": round(o, 3), "colour_mean_AP": round(sum(colours) / len(colours), 3),
                                      "rPC": round(sum(colours) / len(colours) / o, 3),
                                      "eval_s_per_1000": round(tm["eval_s_per_1000_images"], 1),
                                      "inference_s_per_1000": round(1000 * tm["inference_s"] / max(1, tm["images"]), 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
