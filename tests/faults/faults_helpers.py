"""Small builds for the fault cases (a few 24x24 images, three variants, one process)."""
from __future__ import annotations

import re

from pathlib import Path

from bgbias.synth.build import BuildConfig, build

VARIANTS = ("original", "only_bg_t", "mixed_rand")


def build_small(source, out: Path, variants=VARIANTS, holdout: float | None = None, **kw) -> dict:
    return build(source, out, BuildConfig(variants=variants, chunk_size=4, holdout=holdout),
                 workers=kw.pop("workers", 1), progress=False, **kw)


def one_sentence(message: str, *needles: str) -> None:
    """An error a user can act on: one line, no traceback, no internal type names, naming what it is about."""
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert not re.search(r"\b(IndexError|KeyError|AttributeError|unhashable)\b", message), message
    for needle in needles:
        assert needle in message, (needle, message)


def cli_error(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI in-process; it must exit 2 with one ``bgbias: error:`` sentence on stderr."""
    from bgbias.cli import main

    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert err.startswith("bgbias: error:"), err
    one_sentence(err, *needles)
    return err


def dropped(manifest: dict, key: str) -> list[str]:
    """Reasons recorded for the sample id or scan path ``key``."""
    return [d["reason"] for d in manifest["dropped"] if str(d["id"]) == key or str(d.get("path")) == key]
