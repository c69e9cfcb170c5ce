"""Where a suite's results came from: which stage-0 weights its jobs started from, which devices
trained them, and how long it took. A suite resumed on other machines, and finished in part on
a lent GPU, is still one suite only if the report can say all three."""

from __future__ import annotations

import json
from collections import Counter


def stage0_warning(versions: dict) -> str:
    """A warning when the jobs did not all start from the same stage-0 weights (`stage0_versions`):
    a stage 0 retrained between invocations, so pairs may straddle two pretrainings."""
    parts = {k: v for k, v in versions.items() if k != "unrecorded"}
    mixed = [f"{k}: {len(v)} versions" for k, v in parts.items() if len(v) > 1]
    if parts and versions.get("unrecorded"):
        mixed.append(f"{versions['unrecorded']} results from before stage-0 weights were recorded")
    if not mixed:
        return ""
    return (
        " **⚠ Not every job started from the same stage-0 weights** (" + "; ".join(mixed) + "): stage 0 was "
        "retrained between invocations. Delete the older jobs' lines from `jobs.jsonl` to retrain them on one stage 0."
    )


def jobs_by_device(results: dict[str, dict]) -> dict[str, tuple[int, float]]:
    """device -> (jobs, seconds of jobs), each trained job counted once (a job two comparisons share
    is the earlier one's; the later one's run says `same_as`)."""
    seen: dict[str, tuple[str, float]] = {}
    for res in results.values():
        for r in res["runs"]:
            if "same_as" not in r:
                seen.setdefault(r["fingerprint"], (r.get("device", "cpu"), r["wall_s"]))
    count, secs = Counter(d for d, _ in seen.values()), Counter()
    for d, s in seen.values():
        secs[d] += s
    return {d: (count[d], secs[d]) for d in sorted(count)}


def versions_line(results: dict[str, dict]) -> str:
    """The software the jobs ran with (python, torch, transformers, triton, peft; `lab.versions`), each
    distinct set with its number of jobs, so a result that moves after an upgrade can be traced to it."""
    seen: dict[str, str] = {}
    for res in results.values():
        for r in res["runs"]:
            if "same_as" not in r:
                seen.setdefault(r["fingerprint"], json.dumps(r.get("versions") or {}))
    sets = Counter(seen.values())
    parts = [
        ", ".join(f"{k} {v}" for k, v in json.loads(s).items()) + f" ({n} jobs)" for s, n in sets.items() if s != "{}"
    ]
    if sets.get("{}"):
        parts.append(f"{sets['{}']} jobs from before versions were recorded")
    return "Software: " + "; ".join(parts) + "."


def devices_line(results: dict[str, dict]) -> str:
    """The devices the jobs trained on and, when there are several, how many paired differences
    compare runs on two of them (CPU runs are fp32, CUDA runs bf16 autocast: HISTORY.md, "CPU and GPU
    give the same numbers", measures the two within the seed spread, but a pair on one device holds no
    device difference at all)."""
    by = jobs_by_device(results)
    line = "device: " + ", ".join(f"{d} for {n} jobs" for d, (n, _) in by.items())
    if len(by) < 2:
        return line
    rows = [v for res in results.values() for v in res["verdicts"]]
    mixed = sum(v.get("cross_device", 0) for v in rows)
    return line + (
        f" ({mixed} of the verdicts' per-seed differences compare runs on two devices)"
        if mixed
        else " (CUDA in bf16 autocast; every verdict's per-seed difference compares two runs on one device)"
    )


def timing(suite: dict, wall: float | None, by_device: dict[str, tuple[int, float]]) -> str:
    """The suite's wall time as suite.json records it (summed over resumed invocations), or why it
    is unknown, plus the time of invocations on lent machines (`lent` in suite.json, merged by hand:
    HISTORY.md, "The full suite retrained ... lent H200", says how); always the jobs' own time per device."""
    if not suite:
        return f"Whole suite: **{wall / 60:.1f} min** wall." if wall else ""
    jobs = ", ".join(f"{s / 60:.1f} min of jobs on {d}" for d, (_, s) in by_device.items())
    if suite.get("wall_s") is None:
        return (
            f"Whole suite: wall time **not measured end to end** (resumed from jobs an untimed earlier run had "
            f"finished); {jobs}, i.e. about {sum(t for _, t in by_device.values()) / 60 / suite['workers']:.0f} min "
            f"with {suite['workers']} workers, plus stage 0."
        )
    runs = f" over {suite['invocations']} invocations" if suite.get("invocations", 1) > 1 else ""
    lent = "".join(
        f", plus **{x['wall_s'] / 60:.1f} min** on a lent {x['device']} ({x['workers']} workers, {x['jobs']} jobs kept)"
        for x in suite.get("lent", [])
    )
    here = f"**{suite['wall_s'] / 60:.1f} min** wall on this machine{runs} ({suite['workers']} workers)"
    return f"Whole suite: {here}{lent}; {jobs}."
