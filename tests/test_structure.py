"""The package's shape: imports flow one way between subpackages, and no module imports itself back."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bgbias"
# Each stage may import only the stages listed before it (the pipeline, read top to bottom).
LAYERS = ["core", "models", "masks", "sources", "synth", "audit", "train", "report", "api", "demo", "cli"]


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:   # TYPE_CHECKING blocks count: a hint-only cycle is still a cycle in the design
        nodes = nodes + [n for b in tree.body if isinstance(b, ast.If) for n in b.body]
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - n.level + 1]
                base = ".".join(parts + ([n.module] if n.module else []))
            for a in n.names:
                cand = f"{base}.{a.name}"
                found.add(cand if cand in modules else base)
        elif isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
    return {m for m in found if m in modules and m != name and m != "bgbias"}


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods, top_level_only) for m, p in mods.items()}


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "bgbias"


def test_no_import_cycles():
    graph = _graph(top_level_only=True)
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("top_level_only", [True, False])
def test_stages_import_only_earlier_stages(top_level_only):
    bad = []
    for m, deps in _graph(top_level_only).items():
        lm = _layer(m)
        if lm not in LAYERS:
            continue
        for d in deps:
            ld = _layer(d)
            if ld in LAYERS and LAYERS.index(ld) > LAYERS.index(lm):
                bad.append(f"{m} -> {d}")
    assert not bad, "imports against the pipeline's direction: " + ", ".join(sorted(bad))


def test_no_file_over_400_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"files over ~400 lines (two ideas?): {long}"


def test_every_subpackage_says_its_job():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.parent.name}/__init__.py needs a docstring that says its job"
