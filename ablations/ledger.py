"""What a suite has finished and how long it took, kept where git keeps it.

`jobs.jsonl` in the results folder holds one JSON line per finished piece of work: a job's result
(metrics, probes, timings) or a stage-0 measurement (the LM answering from text, the stage-0
probes), each under the fingerprint of what it computed (`Runner.job`). The run folders (`_runs/`,
checkpoints) are scratch: a fresh clone has none. Why: one machine is not the next, and results that
lived only in `_runs/` were lost with it (204 jobs, about 9 h of CPU; HISTORY.md, "Results kept in a
committed ledger, with stage 0").
With the ledger committed, a stopped suite continues on any machine, and a finished one rebuilds
its reports without training.

One writer: the suite's own process appends a line as each job returns (workers return results
to it), so a kill can cut at most the last line short; the next read drops that line and the job
reruns. Every result also names the stage-0 weights it started from (`weights_digest`), because
stage 0 retrained on another machine is another model (`stage0_versions` tallies them).
`suite.json` (`SuiteClock`) is the suite's wall time, summed over the invocations that built it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from lab.versions import versions

log = logging.getLogger(__name__)
FIX = "delete that line and its job reruns"


class Ledger:
    """fingerprint -> record, read from and appended to one JSON-lines file; a later line with the
    same fingerprint wins (a job recomputed under the same settings)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n < len(lines):
                    raise ValueError(f"{self.path}:{n}: not a JSON record; {FIX}") from None
                # A write cut short by a kill: drop it, so that the next record does not follow it.
                log.warning("%s:%d: an unfinished last line (a stopped suite); dropped, its job reruns", self.path, n)
                self.path.write_text("".join(lines[:-1]))
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("fingerprint"), str):
                raise ValueError(f"{self.path}:{n}: a record without a fingerprint; {FIX}")
            self.records[rec["fingerprint"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __getitem__(self, key: str) -> dict:
        return self.records[key]

    def add(self, record: dict) -> dict:
        """Append `record` (which carries its `fingerprint`) as one line, stamped with the versions of
        python, torch, transformers, triton and peft it was computed with (a record that already names
        its versions, e.g. one merged from another machine, keeps them)."""
        record = {**record, "versions": record.get("versions") or versions()}
        line = json.dumps(record)  # key order kept: the report lists probes in it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab+") as f:
            f.seek(0, 2)
            if f.tell() and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                f.write(b"\n")  # never glued onto a line cut short since this ledger was read
            f.write(line.encode() + b"\n")
        self.records[record["fingerprint"]] = record
        return record

    def of_kind(self, kind: str) -> list[dict]:
        return [r for r in self.records.values() if r.get("kind") == kind]


class SuiteClock:
    """suite.json: the suite's wall time, summed over the invocations that built it and rewritten
    after every job, so a stopped suite keeps what it had spent. When jobs were reused without a
    matching record (built by another version of the suite, or the record was lost), the wall time
    is unknown and says so: `wall_s` is None. An invocation that computes nothing (a report rebuilt
    from the ledger: `trains = False`) leaves a timed suite.json as it was."""

    def __init__(self, path: Path, key: str, jobs: int, args) -> None:
        self.path, self.t0 = path, time.perf_counter()
        prev = json.loads(path.read_text()) if path.exists() else {}
        self.prev = prev if prev.get("fingerprint") == key and prev.get("wall_s") is not None else None
        self.reused = False
        self.record = {"fingerprint": key, "workers": args.workers, "device": args.device, "jobs": jobs}
        self.record |= {"invocations": (self.prev["invocations"] + 1) if self.prev else 1}
        # lent machines' invocations, merged by hand (HISTORY.md, "The full suite retrained ... lent H200")
        if self.prev and self.prev.get("lent"):
            self.record["lent"] = self.prev["lent"]
        self.serial, self.done, self.cached = 0.0, 0, 0
        self.trains = True

    def tick(self, result: dict | None, cached: bool = False) -> dict:
        if not self.trains and self.prev is not None:
            return self.prev
        if result is not None:
            self.done += 1
            self.cached += cached
            self.serial += result["wall_s"]
        elapsed = time.perf_counter() - self.t0
        if self.prev is not None:
            wall = self.prev["wall_s"] + elapsed
        else:
            wall = None if (self.cached or self.reused) else elapsed
        self.record |= {"wall_s": wall, "jobs_done": self.done, "reused_jobs": self.cached, "serial_s": self.serial}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.record, indent=2))
        return self.record


def weights_digest(run: Path) -> str:
    """A run's weights as a short sha256 over its tensors (name, dtype, shape, bytes), the file's
    header aside: two stage-0 folders with one digest hold the same model."""
    import torch
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(run / "model.safetensors").items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def stage0_versions(runs: list[dict]) -> dict:
    """Which stage-0 weights the suite's jobs started from: "seed{s}/{part}" -> the digests seen,
    and how many results predate the record ("unrecorded"). More than one digest for a part means a
    stage 0 was retrained between invocations and jobs do not all start from the same one."""
    versions: dict = {"unrecorded": 0}
    for r in runs:
        if "stage0_weights" not in r:
            versions["unrecorded"] += 1
            continue
        for part, digest in r["stage0_weights"].items():
            seen = versions.setdefault(f"seed{part_seed(r, part)}/{part}", [])
            if digest not in seen:
                seen.append(digest)
    return versions


def stage0_on_disk(root: Path) -> dict[str, str]:
    """ "seed{s}/{part}" -> the weights digest of each finished stage-0 part under `root` (a suite's
    `OUT/stage0`)."""
    from lab.rundir import RunDir

    return {
        f"{d.parent.name}/{d.name}": weights_digest(d)
        for d in sorted(Path(root).glob("seed*/*"))
        if RunDir(d).summary_file.exists() and (d / "model.safetensors").exists()
    }


def from_stage0(record: dict, disk: dict[str, str]) -> bool:
    """Whether `record` started from the stage-0 weights on disk (`stage0_on_disk`). Every job of a
    suite must start from one stage 0, and a job's key names stage 0's config, not its weights: stage 0
    retrained on another machine is another model. A part with nothing on disk stands (a clone whose
    stage 0 was not committed still rebuilds its reports); beside a stage 0 on disk, a record without
    digests (older than them) does not."""
    used = record.get("stage0_weights")
    if used is None:
        return not any(k.startswith(f"seed{record.get('stage0_seed', 0)}/") for k in disk)
    return all(disk.get(f"seed{part_seed(record, part)}/{part}", h) == h for part, h in used.items())


def part_seed(record: dict, part: str) -> int:
    """The stage-0 seed a record's `part` came from: its own stage 0's, or an LM axis's LM
    (`stage0_seeds`, `ablations.plan.over_lms`)."""
    return record.get("stage0_seeds", {}).get(part, record.get("stage0_seed", 0))
