"""Option helpers every command shares: registry names (``-``/``_`` alike, "did you mean"), ``HxW`` sizes, ``--executor``."""
from __future__ import annotations

import argparse
from typing import Any, Callable


def registry_type(registry: Any) -> Callable[[str], str]:
    """An argparse ``type`` that returns the canonical name (``mixed-rand`` -> ``mixed_rand``) or one sentence."""

    def parse(text: str) -> str:
        try:
            return registry.canonical(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = registry.kind
    return parse


def size_type(text: str) -> tuple[int, int] | None:
    """``HxW`` (``64x64``), one number for a square, or ``none``."""
    from bgbias.synth.build import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--debug``, spelled the same in every command."""
    p.add_argument("--quiet", action="store_true", help="no progress bars (they are off anyway when not on a terminal)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def add_executor_option(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """``--executor``, its choices the executor registry's names (what ``bgbias list executors`` prints)."""
    from bgbias.core.executors import EXECUTORS

    p.add_argument("--executor", choices=EXECUTORS.names(), default=default, help=help)
