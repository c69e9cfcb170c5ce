"""What a suite would train, and why, before anything trains (`python -m ablations --plan`).

Three things decide it. A job trains when the ledger lacks its fingerprint (a new variant, or a setting
it computes with changed), when its record started from other stage-0 weights than those on disk, or
when its record predates a question family (it has no chance level, hence no score, for it). A
stage-0 part trains when its folder is missing or was trained under another config; replacing a
finished one takes `--retrain-stage0`, because stage 0 does not reproduce across machines and every
committed result started from it. A stage 0 whose tokenizer is a prefix of today's (a family brought
new words) stays valid: the new words start untrained, as in any extended vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lab.rundir import RunDir


def scored_families() -> list[str]:
    """The question families a job's record must score (a chance level each)."""
    from lab.data.tasks import FAMILY

    return [name for name, fam in FAMILY.items() if fam.answers is not None]


def covers_families(record: dict) -> bool:
    """Whether a job record scored every question family there is (stage-0 records: always)."""
    if record.get("kind") not in (None, "job"):
        return True
    metrics = record.get("metrics", {})
    return all(f"chance_{f}" in metrics for f in scored_families())


def stage0_changes(runner, seeds: Sequence[int], lm_seeds: Sequence[int] = ()) -> list[tuple[str, str, bool]]:
    """(part folder, why, replaces a finished part) for every stage-0 part that would train: both parts
    of `seeds`, the LM alone of `lm_seeds` (an LM axis, `ablations.plan.over_lms`)."""
    from lab.data import scene_tokenizer
    from lab.data.tokenizer import FILE, WordTokenizer
    from lab.train.checkpoint import config_difference

    out = []
    wanted = [(seed, part) for seed in seeds for part in runner.budget.stage0_steps]
    for seed, part in wanted + [(seed, "lm") for seed in lm_seeds]:
        folder = runner.stage0_dir(seed) / part
        key = runner.stage0_key(seed, part)
        stored = folder / "fingerprint"
        finished = RunDir(folder).summary_file.exists() and stored.exists()
        if finished and stored.read_text() == key:
            continue
        why = "not trained yet"
        if finished:
            saved = json.loads(RunDir(folder).train_config_file.read_text())
            cfg = runner.config(part, seed, {}, runner.budget.stage0_steps[part]).identity()
            diff = config_difference(saved, cfg) or ["the ablations' PROTOCOL"]
            why = "trained under other settings: " + "; ".join(diff)
        out.append((str(folder), why, finished))
    for seed in [*seeds, *lm_seeds]:
        folder = runner.stage0_dir(seed) / "lm"
        if (folder / FILE).exists():
            old, new = WordTokenizer.load(folder), scene_tokenizer()
            if old != new and new.vocab[: len(old)] == old.vocab:
                added = ", ".join(new.vocab[len(old) :])
                out.append((str(folder), f"stays: its tokenizer lacks only the new words ({added}), untrained", False))
    return out


def report(runner, jobs: list[tuple], keys: list[str], ledger, changes: list[tuple[str, str, bool]]) -> list[str]:
    """Lines saying what trains and why: the ledger's records found, the jobs that train, and stage 0
    (`changes`: `stage0_changes`)."""
    fresh = runner.fresh_records(ledger)
    unique = list(dict.fromkeys(keys))
    new = [k for k in unique if k not in ledger]
    stale = [k for k in unique if k in ledger and not fresh(k)]
    uncovered = [k for k in unique if k in ledger and fresh(k) and not covers_families(ledger[k])]
    found = len(unique) - len(new) - len(stale)
    lines = [f"ledger {ledger.path}: {found} of {len(unique)} jobs found ({len(jobs)} with shared ones)"]
    if new:
        lines.append(f"  {len(new)} not in the ledger (a new variant, or a setting they compute with changed): train")
    if stale:
        lines.append(f"  {len(stale)} started from other stage-0 weights than those on disk: retrain")
    if uncovered:
        lacking = sorted({f for k in uncovered for f in scored_families() if f"chance_{f}" not in ledger[k]["metrics"]})
        lines.append(f"  {len(uncovered)} of those found predate the families {lacking} (no score for them): retrain")
    if not (new or stale or uncovered):
        lines.append("  no job trains")
    for folder, why, finished in changes:
        if new or stale or uncovered or finished:
            lines.append(f"{Path(folder).relative_to(runner.out)}: {why}")
    return lines


def refuse_stage0_loss(changes: list[tuple[str, str, bool]], allowed: bool) -> None:
    """Stop, naming why, before a finished stage-0 part would be replaced (`changes`: `stage0_changes`)
    unless `allowed` (`--retrain-stage0`)."""
    replaced = [(f, why) for f, why, finished in changes if finished]
    if replaced and not allowed:
        parts = "; ".join(f"{f} ({why})" for f, why in replaced)
        raise SystemExit(
            f"error: this would replace the finished stage 0 {parts}. Every record in the ledger started from "
            "it, and it does not reproduce across machines: rerun with --retrain-stage0 to replace it, or with "
            "--out DIR to train beside it"
        )
