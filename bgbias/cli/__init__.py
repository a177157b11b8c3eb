"""The ``bgbias`` command: registers each subcommand module in this package and dispatches.

Each ``bgbias/cli/<name>.py`` defines ``register(subparsers)`` which adds its
parser (named ``<name>``) and sets ``func``; the body of a command is one
library call. ``bgbias <name> ...`` imports only that module, so a command
does not pay for the imports (torch, ...) of the others' options.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option shows its default; descriptions keep their line breaks but lose reST markup."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text or "default:" in text:
            return text
        return super()._get_help_string(action)

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))


def plain(text: str) -> str:
    """Docstring markup to terminal text: ``code`` -> code, :func:`x.y` -> y."""
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)
    return text.replace("``", "")


class Parser(argparse.ArgumentParser):
    """Every ``bgbias`` parser: defaults shown, markup stripped."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``command`` a command name (``eval-detect``) or module name, only that command's."""
    parser = Parser(prog="bgbias", description="Measure and remove background reliance in image classifiers.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    module_name = command.replace("-", "_") if command else None   # ``eval-detect`` lives in eval_detect.py
    for name in [module_name] if module_name in names else names:
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # not list(argv): importing the ``list`` command module rebinds ``list`` in this package's namespace
    argv = sys.argv[1:] if argv is None else [*argv]
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    if hasattr(args, "quiet") and not sys.stderr.isatty():
        args.quiet = True       # progress bars on a terminal only; a log file gets one line per stage
    try:
        rc = args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"bgbias: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # a write the command did not word itself (read-only folder, full disk, ...)
        if getattr(args, "debug", False):
            raise
        where = f" {e.filename}:" if getattr(e, "filename", None) else ""
        print(f"bgbias: error:{where} {e.strerror or e}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bgbias: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
