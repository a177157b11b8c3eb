"""``bgbias eval-detect``: a detector's COCO AP per background on a detection build (one call to
:func:`bgbias.detect.evaluate.evaluate_detection`) -> ``bgbias-eval-detect/1`` JSON + table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def eval_detect_command(args: argparse.Namespace) -> int:
    from bgbias.core.io import read_json, write_json
    from bgbias.detect.evaluate import evaluate_detection, format_table
    from bgbias.detect.models import load_detector, read_label_map

    if bool(args.model) == bool(args.predictions):
        raise ValueError("Give either --model (a detector to run) or --predictions DIR (COCO results files).")
    detector = None
    if args.model:
        detector = load_detector(args.model, args.weights, args.num_classes, args.trust_checkpoint)
        if args.label_map:
            manifest = Path(args.data) / "manifest.json"
            cats = read_json(manifest).get("categories", []) if manifest.is_file() else []
            detector.label_map = read_label_map(args.label_map, cats)
    out = Path(args.out)
    cache = None if args.no_cache or not args.model else (args.cache or out.with_suffix("").as_posix() + ".predictions")
    result = evaluate_detection(args.data, detector, args.predictions, split=args.split,
                                variants=[v for v in (args.variants or "").split(",") if v] or None,
                                batch_size=args.batch_size, device=args.device, bootstrap=args.bootstrap,
                                seed=args.seed, score_threshold=args.score_threshold, cache_dir=cache,
                                progress=not args.no_progress and sys.stderr.isatty())
    result["command"] = " ".join(["bgbias", *sys.argv[1:]]) if sys.argv[1:2] == ["eval-detect"] else None
    write_json(out, result)
    print(format_table(result))
    print(f"wrote {out}" + (f" (predictions in {cache}/)" if cache else ""))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval-detect", help="COCO AP per background of a detector (or of COCO results files)",
                       description=__doc__)
    p.add_argument("--data", required=True, help="a detection build (bgbias build SOURCE --task detection)")
    p.add_argument("--model", help="torchvision:<arch> (with --weights) | bgbias:<arch> | RUN/model.pt | "
                                   "module:pkg.mod:factory")
    p.add_argument("--weights", help="local state dict for torchvision:/bgbias: detectors (never downloaded)")
    p.add_argument("--num-classes", type=int, help="classes of the detector incl. background (default: from the "
                                                   "weights where they say it, else 91 as COCO)")
    p.add_argument("--label-map", help="JSON {model label: category id or name, -1 = drop}; default identity")
    p.add_argument("--predictions", help="folder of COCO results files PREDICTIONS/<variant>.json, from any detector")
    p.add_argument("--out", default="det_eval.json", help="result JSON to write")
    p.add_argument("--split", default="val", help="split of the detection build to evaluate")
    p.add_argument("--variants", help="comma list of the build's variants, names or folders "
                                      "(e.g. color:red or color_red; default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--bootstrap", type=int, default=100, help="image resamples for the 95%% intervals (0: none)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="score at which a detection counts for FP/img")
    p.add_argument("--cache", help="predictions folder kept for resuming (default: OUT without .json + .predictions)")
    p.add_argument("--no-cache", action="store_true", help="keep no predictions (no resume)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling (only files you trust)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress bars (they are off anyway when not on a terminal)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=eval_detect_command)
