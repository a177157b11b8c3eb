"""``bgbias eval``: accuracy per variant, BG-gap, signal groups of a model on an IN-9 layout -> eval.json + table."""
from __future__ import annotations

import argparse

from ..labelmap import BUILTIN
from ..models import PRESETS


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by eval, challenge and saliency: the model, its preprocessing, the data, the device."""
    p.add_argument("--model", required=True,
                   help="torchvision:<arch> | torchscript:FILE | checkpoint:FILE | module:pkg.mod:factory")
    p.add_argument("--weights", help="state dict for torchvision:/module: models")
    p.add_argument("--label-map", default=None,
                   help=f"{' | '.join(BUILTIN)} | FILE.json (model class -> dataset class, -1 = none); default identity")
    p.add_argument("--data", required=True, help="IN-9 layout folder (bgbias build output or the IN-9 release)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers that decode images")
    p.add_argument("--preprocess", choices=sorted(PRESETS), default=None,
                   help="imagenet (224 px, ImageNet stats) | in9 (IN-9 stats) | none ([0,1], no resize); "
                        "default: the checkpoint's, imagenet for torchvision:, else none")
    p.add_argument("--mean", type=float, nargs=3, default=None)
    p.add_argument("--std", type=float, nargs=3, default=None)
    p.add_argument("--size", type=int, nargs="+", default=None, help="resize to H [W] before the model")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary Python objects (only for files you trust)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def model_kwargs(args: argparse.Namespace) -> dict:
    """Config fields from the shared options; unset options are dropped so config defaults apply."""
    kw = dict(model=args.model, data=args.data, weights=args.weights, label_map=args.label_map, device=args.device,
              batch_size=args.batch_size, workers=args.workers, preprocess=args.preprocess,
              mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
              size=tuple(args.size) if args.size else None, trust=args.trust_checkpoint, seed=args.seed,
              progress=not args.no_progress)
    return {k: v for k, v in kw.items() if v is not None}


def eval_command(args: argparse.Namespace) -> int:
    from ..evaluate import EvalConfig, evaluate, format_table
    from ..io import write_json

    variants = None if args.variants in (None, "all") else tuple(v.strip() for v in args.variants.split(",") if v)
    result = evaluate(EvalConfig(variants=variants, **model_kwargs(args)))
    write_json(args.out, result)
    print(format_table(result))
    print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy per variant, BG-gap, signal groups of a model")
    add_model_args(p)
    p.add_argument("--variants", default="all", help="all | comma-separated variant folders (e.g. original,mixed_rand)")
    p.add_argument("--out", default="eval.json")
    p.set_defaults(func=eval_command)
