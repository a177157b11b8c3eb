"""``bgbias eval``: accuracy per variant, BG-gap, signal groups of a model on an IN-9 layout -> eval.json + table."""
from __future__ import annotations

import argparse

from ._common import add_executor_option
from ._model_options import add_model_arguments, model_kwargs, split_list


def eval_command(args: argparse.Namespace) -> int:
    from bgbias.audit.evaluate import EvalConfig, evaluate, format_table
    from bgbias.core.io import check_writable, write_json

    check_writable(args.out)   # before the compute, not after it

    spread = {k: v for k, v in dict(shards=args.shards, executor=args.executor, state=args.state,
                                    devices=split_list(args.devices)).items() if v is not None}
    amp = dict(amp=True, amp_check=args.amp_check) if args.amp else {}
    result = evaluate(EvalConfig(variants=split_list(args.variants), **spread, **amp, **model_kwargs(args)))
    write_json(args.out, result)
    print(format_table(result))
    print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy per variant, BG-gap, signal groups of a model")
    add_model_arguments(p)
    p.add_argument("--variants", default="all", help="all | comma-separated variant names or folders (e.g. original,color:red)")
    p.add_argument("--out", default="eval.json", help="result JSON to write")
    g = p.add_argument_group("spreading the work (same result as one process)")
    g.add_argument("--shards", type=int, help="each variant's images in N pieces (default 1; with --state, resumable)")
    g.add_argument("--devices", help="comma list, one worker each, e.g. cuda:0,cuda:1 (default: --device)")
    g.add_argument("--state", help="folder for finished shards, so a rerun after a crash predicts only the rest")
    add_executor_option(g, None, "where shard workers run: local processes (default) or a Ray cluster")
    g = p.add_argument_group("precision")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision (float16 on GPU, bfloat16 on CPU); predictions amp changes are counted")
    g.add_argument("--amp-check", type=int, default=256, metavar="N",
                   help="images per variant re-predicted in fp32 to count amp's changes (0: all; default 256)")
    p.set_defaults(func=eval_command)
