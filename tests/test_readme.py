"""The README cannot go stale: its numbers render from the committed demo results, its pictures exist, and its
Python snippet runs as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_numbers_come_from_the_committed_demo_results():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "readme.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_readme_pictures_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links, "the README shows the report's pictures"
    missing = [p for p in links if not (ROOT / p).is_file()]
    assert not missing, f"broken picture links: {missing}"


def test_readme_python_snippet_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has a Python example"
    for code in blocks:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert out.returncode == 0, f"README snippet failed:\n{code}\n{out.stderr[-2000:]}"
