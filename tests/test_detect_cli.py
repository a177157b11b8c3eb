"""``bgbias <command>`` imports only that command's module, also for dashed names (``eval-detect``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys
from bgbias.cli import build_parser
parser = build_parser(sys.argv[1])
parser.parse_args([sys.argv[1], *sys.argv[2:]])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("bgbias.cli.") and not m.startswith("bgbias.cli._"))))
"""


def _cli_modules_after(argv: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, cwd=ROOT,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv, module", [
    (["eval-detect", "--data", "d", "--predictions", "p"], "bgbias.cli.eval_detect"),
    (["eval", "--model", "m", "--data", "d"], "bgbias.cli.eval"),
])
def test_one_command_imports_only_its_module(argv, module):
    assert _cli_modules_after(argv) == [module]


def test_dashed_command_parses_with_its_own_parser():
    from bgbias.cli import build_parser

    args = build_parser("eval-detect").parse_args(["eval-detect", "--data", "d", "--predictions", "p"])
    assert args.func.__module__ == "bgbias.cli.eval_detect"
