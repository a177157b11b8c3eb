"""The whole fault suite, slow cases included (concurrent builds, kill -9, worker crashes, tmpfs disks).

    python bench/faults.py                      # this checkout: "N cases, N handled, N defects"
    python bench/faults.py --baseline /work/main  # the same cases on another checkout first, side by side

CI runs the quick cases (``pytest tests/faults``, slow ones deselected by pyproject's ``-m 'not slow'``);
this script runs all of them, each on the code at ``--code`` (default: this checkout).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_suite(code: Path, marker: str, extra: list[str]) -> tuple[str, float]:
    """pytest on tests/faults importing bgbias from ``code``; returns the tally line and the seconds taken."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as cwd:   # not the repo: ``python -m`` puts the cwd first on sys.path
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                            str(REPO / "pyproject.toml"), "--rootdir", str(REPO), "-m", marker,
                            str(REPO / "tests" / "faults"), *extra], cwd=cwd, env=env, capture_output=True, text=True)
    found = re.findall(r"fault suite: .*", r.stdout)
    defects = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("defect:")]
    line = found[-1] if found else f"no tally (pytest exit {r.returncode}): {r.stdout[-400:]}{r.stderr[-400:]}"
    return line + "".join(f"\n    {d}" for d in defects), time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", default=str(REPO), help="checkout whose bgbias is tested (default: this one)")
    ap.add_argument("--baseline", default=None, help="another checkout to run the same cases on first")
    ap.add_argument("--quick", action="store_true", help="only the cases CI runs (not the slow ones)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k coco")
    args = ap.parse_args()
    marker = "not slow" if args.quick else "slow or not slow"
    rows = []
    if args.baseline:
        rows.append(("baseline", args.baseline, *run_suite(Path(args.baseline), marker, args.pytest_args)))
    rows.append(("this", args.code, *run_suite(Path(args.code), marker, args.pytest_args)))
    for name, code, line, secs in rows:
        print(f"{name:8s} {code}: {line}  [{secs:.0f} s]")
    return 0 if "0 defects" in rows[-1][2].splitlines()[0] else 1


if __name__ == "__main__":
    sys.exit(main())
