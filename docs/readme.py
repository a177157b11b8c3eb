"""Keep README.md true: its figures and pictures come from one committed demo run.

    python docs/readme.py            # render README.md from docs/README.md.j2, docs/demo/results.json, docs/bench/*.json
    python docs/readme.py --run      # run `bgbias demo` first: refresh docs/demo/results.json and docs/img/*.png
    python docs/readme.py --check    # exit 1 when README.md is not what the template and results.json give

The template sees the demo's ``results.json`` as ``r`` plus a few helpers (``m("baseline")`` is that model's
entry; ``pct``, ``points``, ``interval`` format numbers) and each committed benchmark summary
``docs/bench/NAME.json`` as ``bench.NAME`` (e.g. ``bench.generalize`` from ``bench/generalize.py --json``; ``bench/groups.py``'s rows
also as ``g``), so no figure in the README is typed by hand.
A test runs ``--check``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
RESULTS = DOCS / "demo" / "results.json"
BENCH = DOCS / "bench"
FIGURES = ("summary", "accuracy", "examples", "fooling", "saliency", "signal_groups")


def pct(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{100 * float(x):.{digits}f}%"


def points(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * float(x):+.{digits}f} points"


def interval(ci: list | None, digits: int = 1, signed: bool = True) -> str:
    if not ci or ci[0] is None:
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(100 * ci[0])} to {f.format(100 * ci[1])}"


def render(results: dict) -> str:
    env = Environment(loader=FileSystemLoader(DOCS), undefined=StrictUndefined, keep_trailing_newline=True)
    models = {mo["name"]: mo for mo in results["models"]}
    bench = {p.stem: json.loads(p.read_text()) for p in sorted(BENCH.glob("*.json"))}
    return env.get_template("README.md.j2").render(r=results, m=models.__getitem__, pct=pct, points=points,
                                                   interval=interval, models=models, bench=bench,
                                                   g=bench.get("groups"))


def run_demo() -> None:
    """A full demo run into a temporary folder; keep its results.json (paths made relative) and figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bgbias-demo"
        subprocess.run([sys.executable, "-m", "bgbias", "demo", "--out", str(out), "--quiet"], check=True)
        text = (out / "results.json").read_text().replace(str(out) + "/", "bgbias-demo/").replace(str(out), "bgbias-demo")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        for name in FIGURES:
            src = out / "figures" / f"{name}.png"
            if src.is_file():
                shutil.copyfile(src, DOCS / "img" / f"{name}.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the demo first and refresh the committed results")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is stale")
    args = ap.parse_args(argv)
    if args.run:
        run_demo()
    text = render(json.loads(RESULTS.read_text()))
    readme = ROOT / "README.md"
    if args.check:
        if readme.read_text() != text:
            print("README.md is stale: run python docs/readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
