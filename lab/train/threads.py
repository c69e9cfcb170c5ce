"""How many torch threads a training process should use on a shared CPU.

torch defaults to one intra-op thread per core it sees. Two trainings on the same 2 cores then
run 4 threads that preempt each other: a 39-second run took over 15 minutes beside another. The
`lab train` command therefore takes its CPUs (affinity and cgroup quota) divided by the number of
lab trainings running for this user, and says so; `--threads N` overrides it. Library calls
(`lab.train.train`, the ablation runner's workers) leave torch's setting to their caller.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_budget(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota ("max" = none)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def registry() -> Path:
    """One empty file per running `lab train` process of this user, named by its pid."""
    folder = Path(tempfile.gettempdir()) / f"lab-{os.getuid()}" / "trainings"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register(folder: Path | None = None) -> int:
    """Record this process and return how many lab trainings are running, this one included.
    Entries of processes that have died are removed on the way."""
    folder = folder or registry()
    (folder / str(os.getpid())).touch()
    running = 0
    for f in folder.iterdir():
        pid = int(f.name) if f.name.isdigit() else -1
        if pid > 0 and _alive(pid):
            running += 1
        else:
            f.unlink(missing_ok=True)
    return running


def unregister(folder: Path | None = None) -> None:
    ((folder or registry()) / str(os.getpid())).unlink(missing_ok=True)


def auto_threads(folder: Path | None = None, cpu_max: Path = CGROUP_CPU_MAX) -> tuple[int, str]:
    """(threads, why): this process's share of its CPUs among the lab trainings running now."""
    cpus, running = cpu_budget(cpu_max), register(folder)
    threads = max(1, cpus // running)
    others = running - 1
    return threads, f"{threads} torch thread(s): {cpus} CPU(s) available, {others} other lab training(s) running"
