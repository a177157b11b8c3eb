"""``bgbias variants``: every variant and background family, one line each."""
from __future__ import annotations


def variants_command(args) -> int:
    from bgbias.synth.variants import describe_variants

    for name, tags, help_ in describe_variants(args.pattern):
        print(f"{name:<22} {tags:<9} {help_}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("variants", help="list every variant and background family, one line each")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'mixed_*' or 'texture:*'")
    p.set_defaults(func=variants_command)
