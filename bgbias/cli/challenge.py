"""``bgbias challenge``: worst-case (adversarial) background accuracy and the most fooling backgrounds."""
from __future__ import annotations

import argparse
from typing import Any

from ._common import add_executor_option
from ._model_options import add_model_arguments, model_kwargs, split_list


def challenge_command(args: argparse.Namespace) -> int:
    from bgbias.audit.challenge import ChallengeConfig, run_challenge
    from bgbias.core.io import check_writable, write_json

    check_writable(args.out)   # before the compute, not after it

    kw = {k: v for k, v in dict(max_backgrounds=args.max_backgrounds, top_k=args.top_k, fool_subset=args.fool_subset,
                                state=args.state, active=args.active, shards=args.shards,
                                executor=args.executor).items() if v is not None}
    if args.devices:
        kw["devices"] = tuple(split_list(args.devices))
    if args.amp:
        kw["amp"] = True
    result = run_challenge(ChallengeConfig(**model_kwargs(args), **kw), out=args.out)
    write_json(args.out, result)
    print(format_summary(result))
    print(f"wrote {args.out}")
    return 0


def format_summary(r: dict[str, Any]) -> str:
    """Terminal summary of a challenge result."""
    lines = [f"challenge accuracy {100 * (r['challenge_accuracy'] or 0):.1f}% "
             f"({'exhaustive' if r['exhaustive'] else 'ESTIMATE on a background subset'}; clean "
             f"{100 * (r['clean_accuracy'] or 0):.1f}%) on {r['n_foregrounds']} foregrounds x "
             f"{r['n_backgrounds']} backgrounds",
             f"forwards {r['forwards']} vs {r['exhaustive_forwards']} exhaustive "
             f"({r['exhaustive_forwards'] / max(r['forwards'], 1):.1f}x fewer), {r['seconds']:.1f}s"]
    for name, pc in r["per_class"].items():
        tops = r["top_fooling"].get(name) or []
        best = f"; top {name} background fools {100 * tops[0]['fool_rate']:.0f}% of others" if tops else ""
        lines.append(f"  {name:<16} {100 * pc['challenge_accuracy']:5.1f}% (n={pc['n']}){best}")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("challenge", help="backgrounds challenge: is each foreground fooled by any only_bg_t background?")
    add_model_arguments(p)
    p.add_argument("--out", default="challenge.json", help="result JSON to write")
    p.add_argument("--max-backgrounds", type=int, default=None,
                   help="search a seeded random subset of K backgrounds (an estimate, marked exhaustive: false)")
    p.add_argument("--top-k", type=int, default=None, help="top fooling backgrounds reported per class (default 5)")
    p.add_argument("--fool-subset", type=int, default=None,
                   help="foregrounds in the fixed subset the fool rates are measured on (default min(200, max(50, N/4)))")
    p.add_argument("--active", type=int, default=None, help="foregrounds searched at once (default 512)")
    p.add_argument("--shards", type=int, default=None,
                   help="split the foregrounds into N shards searched by separate workers (same verdicts)")
    add_executor_option(p, None, "where shard workers run: local processes (default) or a Ray cluster")
    p.add_argument("--devices", default=None,
                   help="comma-separated devices, one shard worker each (e.g. cuda:0,cuda:1); default --device")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (float16 on GPU, bfloat16 on CPU); fooling pairs re-checked in fp32, counted in 'amp'")
    p.add_argument("--state", default=None,
                   help="resume file (default: OUT.state), saved every 60 s or 256 foregrounds and on "
                        "SIGTERM/SIGINT (Ctrl-C); rerun the same command to resume; deleted when the run completes")
    p.set_defaults(func=challenge_command)
