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
