"""Fault-suite helpers and its tally: ``N cases, N handled, N defects`` at the end of every run.

A case is handled when its test passes (the fault gave the expected named drop, one-sentence
error or identical result) and a defect when it fails. Slow cases (``-m slow``) are run by
``bench/faults.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

_OUTCOME: dict[str, bool] = {}


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.fault)


def pytest_runtest_logreport(report):
    if "fault" not in report.keywords or report.skipped:
        return
    ok = report.passed
    _OUTCOME[report.nodeid] = _OUTCOME.get(report.nodeid, True) and ok


def pytest_terminal_summary(terminalreporter):
    if not _OUTCOME:
        return
    n, handled = len(_OUTCOME), sum(_OUTCOME.values())
    terminalreporter.write_line(f"fault suite: {n} cases, {handled} handled, {n - handled} defects")
    for nodeid, ok in sorted(_OUTCOME.items()):
        if not ok:
            terminalreporter.write_line(f"  defect: {nodeid}")
