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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pytest(code: Path, marker: str, args: list[str], mem_gb: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def limit() -> None:   # a memory bomb in the code under test fails its case instead of the machine
        resource.setrlimit(resource.RLIMIT_AS, (int(mem_gb * 2 ** 30),) * 2)

    with tempfile.TemporaryDirectory() as cwd:   # not the repo: ``python -m`` puts the cwd first on sys.path
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c",
                               str(REPO / "pyproject.toml"), "--rootdir", str(REPO), "-m", marker, *args],
                              cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=limit)


def run_suite(code: Path, marker: str, extra: list[str], mem_gb: float = 6.0) -> tuple[str, float]:
    """Every case on the bgbias at ``code``: (tally line with the defects named, seconds).

    A case that kills the test process (a segfault, the memory limit) is a defect; the run goes on
    with the cases after it.
    """
    t0 = time.time()
    listed = _pytest(code, marker, ["--collect-only", "-q", str(REPO / "tests" / "faults"), *extra], mem_gb)
    todo = [ln.strip() for ln in listed.stdout.splitlines() if "::" in ln]
    outcome: dict[str, bool] = {}
    while todo:
        r = _pytest(code, marker, ["-v", "-rN", *[str(REPO / t) for t in todo]], mem_gb)
        for m in re.finditer(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", r.stdout, re.M):
            node = os.path.relpath(str(REPO / m.group(1)), REPO) if not m.group(1).startswith("tests") else m.group(1)
            if m.group(2) != "SKIPPED":
                outcome[node] = outcome.get(node, True) and m.group(2) == "PASSED"
            elif node not in outcome:
                outcome[node] = None  # type: ignore[assignment]
        left = [t for t in todo if t not in outcome]
        if left and left == todo[-len(left):] and r.returncode not in (0, 1):
            outcome[left[0]] = False          # it took the test process down with it
            print(f"  {left[0]} killed the test process (exit {r.returncode})", file=sys.stderr)
            left = left[1:]
        elif left:
            break
        todo = left
    counted = {k: v for k, v in outcome.items() if v is not None}
    n, ok = len(counted), sum(counted.values())
    line = f"fault suite: {n} cases, {ok} handled, {n - ok} defects"
    return line + "".join(f"\n    defect: {k}" for k, v in sorted(counted.items()) if not v), time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", default=str(REPO), help="checkout whose bgbias is tested (default: this one)")
    ap.add_argument("--baseline", default=None, help="another checkout to run the same cases on first")
    ap.add_argument("--quick", action="store_true", help="only the cases CI runs (not the slow ones)")
    ap.add_argument("--mem-gb", type=float, default=6.0, help="address-space limit of the test process (GiB)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k coco")
    args = ap.parse_args()
    marker = "not slow" if args.quick else "slow or not slow"
    rows = []
    if args.baseline:
        rows.append(("baseline", args.baseline, *run_suite(Path(args.baseline), marker, args.pytest_args, args.mem_gb)))
    rows.append(("this", args.code, *run_suite(Path(args.code), marker, args.pytest_args, args.mem_gb)))
    for name, code, line, secs in rows:
        print(f"{name:8s} {code}: {line}  [{secs:.0f} s]")
    return 0 if "0 defects" in rows[-1][2].splitlines()[0] else 1


if __name__ == "__main__":
    sys.exit(main())
