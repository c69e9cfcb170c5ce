"""lab as a user meets it: from the repo root, from notebooks/, from a folder outside the repo, and
installed from a built wheel. transformers depends on Hugging Face's `kernels` package; lab's Triton
kernels import as `lab_kernels` and their folder, kernels/, has no __init__.py, so neither can shadow
the other wherever Python starts (docs/kernels.md, "Triton kernels").

Every check runs in a subprocess with a clean environment: no PYTHONPATH, nothing from this pytest
process but the venv's interpreter (and TRITON_INTERPRET=1, which a CPU user sets for the kernels)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Both packages named `kernels` resolve as they should, and transformers' hub-kernels integration (which
# imports names from Hugging Face's package) loads beside lab's kernels.
IMPORTS = """
import importlib.metadata, pathlib, sys
import kernels, lab, lab_kernels
import transformers.integrations.hub_kernels
from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration
from transformers import LlavaForConditionalGeneration
here = pathlib.Path(kernels.__file__).resolve()
dist = importlib.metadata.distribution("kernels")
assert here.is_relative_to(pathlib.Path(dist.locate_file("")).resolve()), f"kernels from {here}, not its distribution"
assert lab_kernels.launches is not None and hasattr(lab_kernels, "projected_cross_attention")
print(lab.__file__)
print(lab_kernels.__file__)
"""
# A 2-step `lab train` through the fused Triton Q-Former cross-attention (small: the interpreter is slow).
TRAIN = [
    *("train", "--stage", "instruct", "--quick", "--max-steps", "2", "--no-progress", "--batch_size", "2"),
    *("--model.connector.qformer.num_layers", "1", "--model.connector.qformer.attn_impl", "triton"),
]


def clean_env(bin_dir: Path = BIN) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}
    return env | {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}


def smoke(cwd: Path, out: Path, bin_dir: Path = BIN) -> tuple[str, str]:
    """Imports, then a 2-step fused training, run from `cwd` with `bin_dir`'s python and `lab`; returns
    where lab and lab_kernels were imported from."""
    env = clean_env(bin_dir)
    imp = subprocess.run([bin_dir / "python", "-c", IMPORTS], cwd=cwd, env=env, capture_output=True, text=True)
    assert imp.returncode == 0, imp.stderr[-3000:]
    run = subprocess.run([bin_dir / "lab", *TRAIN, "--out", str(out)], cwd=cwd, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "run.json").read_text())
    assert summary["steps"] == 2
    assert summary["kernel_launches"].get("attn_fwd_projected", 0) > 0, summary  # the fused kernel ran
    assert summary["kernel_launches"].get("attn_bwd", 0) > 0, summary
    assert set(summary["versions"]) == {"python", "torch", "transformers", "triton", "peft"}
    lab_file, kernels_file = imp.stdout.split()
    return lab_file, kernels_file


@pytest.mark.parametrize("where", ["root", "notebooks", "outside"])
def test_kernels_never_collide(where, tmp_path):
    cwd = {"root": ROOT, "notebooks": ROOT / "notebooks", "outside": tmp_path}[where]
    lab_file, kernels_file = smoke(cwd, tmp_path / "run")
    assert Path(kernels_file).is_relative_to(ROOT / "kernels" / "lab_kernels")  # the editable install's source


def test_a_built_wheel_works_outside_the_repo(tmp_path):
    """The wheel (not the editable install) in a fresh venv. Its dependencies are this venv's, reached
    through a .pth file (the same newest versions that `pip install` resolves; installing torch and
    transformers again would take minutes), so lab itself can only come from the wheel."""
    src, dist = tmp_path / "src", tmp_path / "dist"  # built from a copy: setuptools writes build/ in-tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "results"))
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), "."]
    subprocess.run(build, cwd=src, check=True, capture_output=True)
    (wheel,) = dist.glob("lab-*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {"lab", "lab_kernels", "ablations"} <= top and "kernels" not in top, top

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps"]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    lab_file, kernels_file = smoke(outside, tmp_path / "run", venv / "bin")
    assert Path(lab_file).is_relative_to(site) and Path(kernels_file).is_relative_to(site), (lab_file, kernels_file)
