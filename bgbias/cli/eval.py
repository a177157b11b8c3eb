"""``bgbias eval``: accuracy per variant, BG-gap, signal groups of a model on an IN-9 layout -> eval.json + table."""
from __future__ import annotations

import argparse

from ._model_options import add_model_arguments, model_kwargs, split_list


def eval_command(args: argparse.Namespace) -> int:
    from bgbias.audit.evaluate import EvalConfig, evaluate, format_table
    from bgbias.core.io import check_writable, write_json

    check_writable(args.out)   # before the compute, not after it

    result = evaluate(EvalConfig(variants=split_list(args.variants), **model_kwargs(args)))
    write_json(args.out, result)
    print(format_table(result))
    print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy per variant, BG-gap, signal groups of a model")
    add_model_arguments(p)
    p.add_argument("--variants", default="all", help="all | comma-separated variant names or folders (e.g. original,color:red)")
    p.add_argument("--out", default="eval.json", help="result JSON to write")
    p.set_defaults(func=eval_command)
