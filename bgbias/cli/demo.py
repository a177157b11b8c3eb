"""``bgbias demo``: the whole story on bundled data (a background shortcut, its fix, the report); one call to :func:`bgbias.demo.run_demo`."""
from __future__ import annotations


def demo_command(args) -> int:
    from pathlib import Path

    from bgbias.demo import DemoConfig, run_demo, summary_lines

    opts = {"out": args.out, "data": args.data, "seed": args.seed, "device": args.device,
            "mitigation": args.mitigation, "epochs": args.epochs}
    cfg = DemoConfig.quick_preset(**opts) if args.quick else DemoConfig(
        **{k: v for k, v in opts.items() if v is not None})
    results = run_demo(cfg, progress=not args.quiet)
    print("\n".join(summary_lines(results, Path(cfg.out))))
    return 0


def register(sub) -> None:
    from bgbias.demo import MITIGATIONS, DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="the whole story end to end on bundled data, with an HTML report",
                       description="Train a model on digits whose backgrounds give the class away (rho=0.9), "
                                   "train a mitigated one, audit both (accuracy per variant, BG-gap, challenge, "
                                   "saliency) and write OUT/report.html + OUT/results.json.")
    p.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    p.add_argument("--data", default=d.data, help=f"source: digits[:SIZE] or mnist:DIR (default: {d.data})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for data, pairing and training")
    p.add_argument("--quick", action="store_true", help="smaller sets and fewer epochs: under a minute")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--mitigation", default=d.mitigation, choices=MITIGATIONS, help="the recipe the baseline is compared with")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model")
    p.add_argument("--quiet", action="store_true", help="no stage messages or progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=demo_command)
