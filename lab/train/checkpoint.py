"""Checkpoints: safetensors weights + trainer state, written atomically, found again on resume.

Layout under the run folder:
    checkpoints/step-000040/{model.safetensors, trainer.safetensors, trainer.json, manifest.json}
    checkpoints/latest            (name of the newest complete one; last two steps kept)
A checkpoint folder is renamed into place only once complete and `latest` is replaced
atomically, so a run killed mid-save (even by SIGKILL) still finds its previous checkpoint.
Each step's manifest (sizes and SHA-256 of its files) is written last; resuming takes the newest
step whose files match it and names every damaged step it skips. `latest` is a hint that may
only name a step folder of its own run.

Nothing in a run folder is unpickled: a run folder may come from someone else, and unpickling
runs code. The trainer state (step, data position, optimizer, scheduler, RNG states) is split
into its tensors (safetensors) and a JSON skeleton that says where each tensor goes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lab.rundir import RunDir

log = logging.getLogger("lab")
KEEP = 2
MANIFEST = "manifest.json"
STEP_NAME = re.compile(r"step-\d{6}")


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


def _encode(obj, path: str, tensors: dict[str, torch.Tensor]):
    """JSON skeleton of `obj`; its tensors and arrays go to `tensors` under their path."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):  # numpy's RNG key is uint32, which torch stores as int64
        tensors[path] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple | list):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    raise TypeError(f"trainer state at {path or '/'} holds a {type(obj).__name__}, which is not saved")


def _decode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return {k: _decode(v, tensors) for k, v in obj["__dict__"]}


def save_trainer_state(folder: Path, state: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, "", tensors)
    save_file(tensors, folder / "trainer.safetensors")
    (folder / "trainer.json").write_text(json.dumps(skeleton))


def load_trainer_state(folder: Path) -> dict:
    """The trainer state saved by `save_trainer_state`. A `trainer.pt` (a pickle, from an older
    lab or from anyone) is never opened."""
    if not (folder / "trainer.json").exists():
        old = " (its trainer.pt is a pickle, which lab does not open)" if (folder / "trainer.pt").exists() else ""
        raise ValueError(f"checkpoint {folder} has no trainer.json{old}; restart the run instead of resuming it")
    try:
        skeleton = json.loads((folder / "trainer.json").read_text())
        return _decode(skeleton, load_file(folder / "trainer.safetensors"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {folder}: the trainer state is damaged ({e})") from None


def _digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def damage(folder: Path) -> str | None:
    """Why a step folder cannot be resumed from, or None when its files match its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "no readable manifest"
    for name, want in manifest.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["size"] or _digest(f) != want:
            return f"{name} does not match its manifest"
    return None


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], trainer_state: dict) -> Path:
    """Write the model's full tensors (`state_tensors`, or an FSDP run's gathered ones) and the
    trainer state as step-NNNNNN/, atomically, and point `latest` at it."""
    folder = RunDir(root).checkpoints
    final = folder / f"step-{step:06d}"
    tmp = folder / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, tmp / "model.safetensors")
    save_trainer_state(tmp, trainer_state)
    files = sorted(p.name for p in tmp.iterdir())
    (tmp / MANIFEST).write_text(json.dumps({name: _digest(tmp / name) for name in files}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = folder / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, folder / "latest")
    for old in sorted(folder.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest intact step folder of the run at `root`; damaged ones are skipped with a warning."""
    folder = RunDir(root).checkpoints
    pointer = folder / "latest"
    if pointer.exists():
        name = pointer.read_text().strip()
        if not STEP_NAME.fullmatch(name):
            log.warning("%s names %r, not a step folder of this run: ignored", pointer, name)
    steps = sorted((p for p in folder.glob("step-*") if STEP_NAME.fullmatch(p.name) and p.is_dir()), reverse=True)
    for step in steps:
        why = damage(step)
        if why is None:
            return step
        log.warning("checkpoint %s is damaged (%s): trying an older one", step, why)
    return None


def load_checkpoint(path: Path, load: Callable[[dict], tuple[list[str], list[str]]]) -> dict:
    """Load the model tensors through `load` (a module's `load_state_dict(strict=False)`, or the
    FSDP loader of `lab.train.parallel`); returns the trainer state."""
    tensors = load_file(path / "model.safetensors")
    missing, unexpected = load(tensors)
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not fit this model: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    return load_trainer_state(path)


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
