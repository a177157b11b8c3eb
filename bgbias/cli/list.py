"""``bgbias list variants|backgrounds|sources|archs|models|label-maps|saliency|executors [PATTERN]``: registry names."""
from __future__ import annotations

KINDS = ("variants", "backgrounds", "sources", "archs", "models", "label-maps", "saliency", "executors")


def list_command(args) -> int:
    from bgbias.models.nets import list_archs
    from bgbias.sources.base import list_sources
    from bgbias.synth.backgrounds import list_backgrounds
    from bgbias.synth.variants import list_variants

    from bgbias.audit.saliency_methods import SALIENCY_METHODS
    from bgbias.core.executors import EXECUTORS
    from bgbias.models.labelmap import LABEL_MAPS
    from bgbias.models.load import MODEL_KINDS

    listers = {"variants": lambda p: list_variants(p, subset=args.subset), "backgrounds": list_backgrounds,
               "sources": list_sources, "archs": list_archs,
               "models": lambda p: [f"{k}:{MODEL_KINDS.entry(k).help}" for k in MODEL_KINDS.names(p)],
               "label-maps": LABEL_MAPS.names, "saliency": SALIENCY_METHODS.names, "executors": EXECUTORS.names}
    if args.subset and args.kind != "variants":
        raise ValueError(f"--subset applies only to 'variants', not {args.kind!r}.")
    for name in listers[args.kind](args.pattern):
        print(name)
    return 0


def register(sub) -> None:
    p = sub.add_parser("list", help="list registered variants, backgrounds, sources, architectures, model kinds, "
                                    "label maps, saliency methods or executors")
    p.add_argument("kind", choices=KINDS, help="what to list")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'mixed_*'")
    p.add_argument("--subset", help="variants only: a tag such as in9, mixed, color, texture, mean")
    p.set_defaults(func=list_command)
