"""Wall time of each notebook in full mode (no LAB_NB_FAST), run top to bottom as a reader would.

    python -m benchmarks.notebook_pace [--out benchmarks/results/notebook_pace.json] [--root .]

`--root` times another checkout's notebooks (its `lab` first on the path), so two commits can be
compared on the same machine in the same minute. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def cell_seconds(nb) -> list[float]:
    """Each code cell's execution time, from the timings nbclient records in the cell metadata."""
    out = []
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        t = cell.metadata.get("execution", {})
        start, end = t.get("iopub.execute_input"), t.get("shell.execute_reply")
        if start and end:
            out.append(
                round((datetime.fromisoformat(end[:26]) - datetime.fromisoformat(start[:26])).total_seconds(), 1)
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT))
    p.add_argument("--only", default="*.ipynb", help="a glob of the notebooks to time")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "notebook_pace.json"))
    args = p.parse_args()
    root = Path(args.root).resolve()
    os.environ.pop("LAB_NB_FAST", None)
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["PYTHONPATH"] = f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    times = {}
    for path in sorted((root / "notebooks").glob(args.only)):
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        times[path.name] = round(time.perf_counter() - start, 1)
        print(path.name, times[path.name], "per code cell:", cell_seconds(nb), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
    result = {"commit": commit.stdout.strip(), "full_mode_wall_s": times, "cpus": len(os.sched_getaffinity(0))}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
