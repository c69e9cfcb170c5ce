"""The layer order: data, models and kernels never import train, eval, convert or ablations.

Each package is imported in a fresh interpreter, so one test's imports cannot hide another's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("lab.train", "lab.eval", "lab.convert", "lab.cli", "ablations", "benchmarks")
PROBE = """
import importlib, json, sys
importlib.import_module({name!r})
ours = ("lab", "ablations", "benchmarks", "lab_kernels")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ours)))
"""


@pytest.mark.parametrize("name", ["lab.data", "lab.models", "lab.config", "lab_kernels"])
def test_lower_layers_do_not_import_upper_ones(name):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(name=name)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    upper = [m for m in loaded if m.startswith(UPPER)]
    assert not upper, f"{name} pulls in {upper}"
    if name == "lab_kernels":  # the bottom layer: no lab at all
        assert loaded and not [m for m in loaded if m.split(".")[0] == "lab"], loaded


def test_models_layer_has_no_lazy_imports_of_upper_layers():
    """Function-level imports escape the test above; read the source for them as well."""
    offenders = []
    for f in [*(ROOT / "lab" / "models").glob("*.py"), *(ROOT / "lab" / "data").glob("*.py")]:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            s = line.strip()
            if s.startswith(("from ", "import ")) and any(f" {u}" in s or f" {u}." in s for u in UPPER):
                offenders.append(f"{f.relative_to(ROOT)}:{n}: {s}")
    assert not offenders, offenders


def _unit(module: str) -> str | None:
    """The layer a dotted module belongs to, as docs/ARCHITECTURE.md names them."""
    parts = module.split(".")
    if parts[0] in ("ablations", "lab_kernels", "benchmarks"):
        return parts[0]
    if parts[0] != "lab":
        return None
    return f"lab.{parts[1]}" if len(parts) > 1 and parts[1] in LAB_UNITS else "lab"


LAB_UNITS = ("data", "models", "train", "convert", "eval", "cli", "config", "rundir", "versions")


def _imports(path: Path) -> list[str]:
    """Every absolute import in a file, at module level or inside a function."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_the_architecture_docs_layer_list_is_the_code_s():
    """docs/ARCHITECTURE.md's `layers` block names every import between layers, and only those."""
    import re

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)[1]
    documented = {
        (src.strip(), dst.strip())
        for line in block.splitlines()
        for src, dsts in [line.split("->")]
        for dst in dsts.split(",")
    }
    actual: dict[tuple[str, str], str] = {}
    files = [*(ROOT / "lab").rglob("*.py"), *(ROOT / "ablations").glob("*.py")]
    for f in files:
        rel = f.relative_to(ROOT).with_suffix("")
        src = _unit(".".join(rel.parts))
        for module in _imports(f):
            dst = _unit(module)
            if dst and dst != src:
                actual.setdefault((src, dst), f"{rel}.py imports {module}")
    undocumented = {e: why for e, why in actual.items() if e not in documented}
    assert not undocumented, f"imports the layer list does not name: {undocumented}"
    stale = documented - set(actual)
    assert not stale, f"edges docs/ARCHITECTURE.md draws that the code no longer has: {sorted(stale)}"


def test_no_import_cycle_within_ablations():
    """ablations/ is a one-way pipeline: no module reaches itself through imports, counting those
    inside functions."""
    graph = {}
    for f in (ROOT / "ablations").glob("*.py"):
        deps = {m.split(".")[1] for m in _imports(f) if m.startswith("ablations.")}
        graph[f.stem] = deps - {f.stem}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif len(path) < len(graph):
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, f"import cycles in ablations/: {sorted(set(cycles))[:5]}"
