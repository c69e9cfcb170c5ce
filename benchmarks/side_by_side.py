"""Two trainings on one machine: each one's wall time beside the other, against its time alone.

    python -m benchmarks.side_by_side [--steps 150]

Runs `lab train --quick --stage instruct` once alone, then two at once (different seeds and run
folders), through the CLI, so that lab picks each process's torch threads itself
(`lab.train.threads`). Writes benchmarks/results/side_by_side.json with the wall times, the threads
each process chose (from its log) and the slow-down of each concurrent run over the run alone.
The target: each finishes within 2.5x its time alone. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "side_by_side.json"


def command(out: Path, steps: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "lab.train", "--stage", "instruct", "--quick", "--no-progress",
            "--max-steps", str(steps), "--seed", str(seed), "--out", str(out)]  # fmt: skip


def run(cmds: list[list[str]]) -> list[dict]:
    """Start every command at once; each one's wall time and the threads line of its log."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]  # fmt: skip
    results = [None] * len(procs)
    pending = set(range(len(procs)))
    while pending:
        for i in list(pending):
            if procs[i].poll() is not None:
                log = procs[i].stdout.read()
                if procs[i].returncode:
                    raise SystemExit(f"training {i} failed:\n{log[-2000:]}")
                m = re.search(r"(\d+) torch threads?", log)
                results[i] = {"wall_s": round(time.perf_counter() - start, 2), "threads": int(m[1]) if m else None}
                pending.discard(i)
        time.sleep(0.2)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        alone = run([command(tmp / "alone", args.steps, 0)])[0]
        pair = run([command(tmp / "a", args.steps, 1), command(tmp / "b", args.steps, 2)])
    slowdown = [round(r["wall_s"] / alone["wall_s"], 2) for r in pair]
    result = {
        "what": f"lab train --quick --stage instruct --max-steps {args.steps}, via the CLI",
        "cpus": len(os.sched_getaffinity(0)),
        "alone": alone,
        "side_by_side": pair,
        "slowdown": slowdown,
        "target_max_slowdown": 2.5,
        "met": all(s <= 2.5 for s in slowdown),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),  # fmt: skip
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
