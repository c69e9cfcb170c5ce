"""Checkpoints: safetensors weights + trainer state, written atomically, found again on resume.

Layout under the run folder:
    checkpoints/step-000040/{model.safetensors, trainer.pt}   (last two kept)
    checkpoints/latest                                        (name of the newest complete one)
A checkpoint folder is renamed into place only once complete and `latest` is replaced
atomically, so a run killed mid-save (even by SIGKILL) still finds its previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger("lab")
KEEP = 2


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors accepts (tied tensors become separate copies)."""
    return {k: v.detach().clone().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(root: Path, step: int, module: nn.Module, trainer_state: dict) -> Path:
    folder = root / "checkpoints"
    final = folder / f"step-{step:06d}"
    tmp = folder / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state_tensors(module), tmp / "model.safetensors")
    torch.save(trainer_state, tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = folder / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, folder / "latest")
    for old in sorted(folder.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = root / "checkpoints" / pointer.read_text().strip()
    return path if path.exists() else None


def load_checkpoint(path: Path, module: nn.Module) -> dict:
    tensors = load_file(path / "model.safetensors")
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not fit this model: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    return torch.load(path / "trainer.pt", weights_only=False)


def config_difference(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested config dicts, as dotted paths."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step`: a resumed run appends exactly where its checkpoint was."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a kill
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))
