"""The ``bgbias`` command: registers each subcommand module in this package and dispatches.

Each ``bgbias/cli/<name>.py`` defines ``register(subparsers)`` which adds its
parser and sets ``func``; the body of a command is one library call.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgbias", description="Measure and remove background reliance in image classifiers.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"bgbias: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bgbias: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
