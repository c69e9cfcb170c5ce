"""Every notebook runs top to bottom (with LAB_NB_FAST=1: the same code, fewer steps), as Jupyter runs it
for a user: from its own folder, with the venv's interpreter and nothing else of this pytest process
(no PYTHONPATH, no TRITON_INTERPRET: a notebook that wants the interpreter sets it itself)."""

import importlib.util
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


def test_notebooks_are_what_build_py_writes():
    """notebooks/build.py is the source: a cell edited in a notebook alone is lost at the next build."""
    spec = importlib.util.spec_from_file_location("build", NOTEBOOKS[0].parent / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert sorted(build.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        committed = [c.source for c in nbformat.read(path, as_version=4).cells]
        assert committed == [c.source for c in build.NOTEBOOKS[path.name]], f"{path.name}: run notebooks/build.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path):
    env = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin", "LAB_NB_FAST": "1", "MPLBACKEND": "Agg"}
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
