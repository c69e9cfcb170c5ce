"""The plan: comparisons × mode × seeds → jobs, each with its resolved configs and fingerprint. Pure:
it reads the regime, the comparisons and the ledger, trains nothing (`python -m ablations --plan`).

A variant is a recipe: a list of training steps (stage, config overrides, which earlier outputs to start
from). Every variant of a comparison gets the same data, the same optimizer-step budget and the same
evaluation; stage-0 parts (vision encoder, LM) are trained once and shared by every seed and comparison
(`Budget.shared_stage0`). A job's fingerprint is what it computes: each step's resolved config
(`TrainConfig.identity()`, so changing a default of lab reaches exactly the jobs it changes), the stage-0
parts it starts from (theirs likewise), its evaluation settings and `PROTOCOL`. A change of lab's code
that alters what the numbers mean without changing a config bumps `PROTOCOL`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ablations import preflight
from ablations.ledger import Ledger, from_stage0, stage0_on_disk
from ablations.regime import LAYERS, MODE, REGIME, STAGE, check_keys, layers, provenance, shared_overrides
from lab.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

MLP_CONNECTOR = {"model.connector.kind": "mlp"}  # the MLP projector of every recipe

# What a cached job's numbers mean beyond its settings; a change here retrains and re-evaluates.
# 2: relation questions balanced (yes and no equally often) and held-out families also scored by
# ranking their closed answer sets (InstructBLIP's protocol for held-out classification tasks).
PROTOCOL = 2


@dataclasses.dataclass
class Step:
    stage: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    init: tuple[str, ...] = ("stage0/vision", "stage0/lm")  # earlier outputs: "stage0/x" or a step's stage name
    steps: float = 1.0  # fraction of the comparison's step budget


@dataclasses.dataclass
class Variant:
    name: str
    recipe: list[Step]
    eval_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. the 1-object control
    group: str = "main"  # "main", "control" or "sweep": reported side by side
    probe: bool = False  # linear probes of its final model (seed 0)
    # (mechanism, witness): what would make this main variant fall short of the floors (plain queries
    # under a tight budget, a ViT tuned on a small set), and a variant of the same model where that
    # mechanism cannot act. `ablations.targets.exemptions` applies the rule to the results.
    shortfall: tuple[str, str] | None = None
    # The stage-0 LM it starts from, where an axis over LMs sets it (`over_lms`); otherwise its job's own.
    lm_seed: int | None = None
    # What its job measures when not the suite's `ablations.evaluate`: a module-level function (jobs go to
    # worker processes) `(plan, model, final run folder, seed) -> {"metrics": {name: float}, ...}`, the
    # other entries kept in the job's record. Its name is part of the job's fingerprint.
    measure: Callable | None = None

    def stage0_parts(self) -> list[str]:
        """The stage-0 parts its recipe starts from ("vision", "lm")."""
        return sorted({i.split("/", 1)[1] for s in self.recipe for i in s.init if i.startswith("stage0/")})


def over_lms(variants: list[Variant], lms: int) -> list[Variant]:
    """An axis over stage-0 LMs: each variant once per LM seed 0..lms-1, named `{name}_lm{seed}`, each
    beside its job's own ViT. The LMs are pretrained alike and differ only in their seed: the axis
    measures how much of a result is the draw of one LM."""
    return [dataclasses.replace(v, name=f"{v.name}_lm{lm}", lm_seed=lm) for v in variants for lm in range(lms)]


@dataclasses.dataclass
class Budget:
    """Per-mode sizes. Quick: CPU minutes; full: the same recipes, longer, evaluated on more."""

    stage0_steps: dict[str, int]
    steps: int
    per_family: int
    seeds: int = 3
    probe_fit: int = 1000
    # Stage 0 stands in for the papers' public checkpoints, which every run of a paper shares: one
    # ViT and one LM, trained once (seed 0), under every seed. The seeds vary what the comparisons
    # train (initialisation, data order, dropout). Per-seed stage 0 (`--stage0-per-seed`) also varies
    # the pretrained parts; in the first full suite it did, and the seeds' LMs bound colour, position
    # or `exists` so differently that they, not the arms, made most of the spread (HISTORY.md,
    # "Why seeds disagree: the stage-0 LM").
    shared_stage0: bool = True


QUICK = Budget({"vision": 1000, "lm": 2000}, steps=600, per_family=100, seeds=3, probe_fit=600)
# Full: 1,200 steps per comparison (instruction_aware 1.5x): 3,000 would take about 6 h on 2 CPU cores.
FULL = Budget({"vision": 1000, "lm": 4000}, steps=1200, per_family=1000, seeds=5, probe_fit=1500)
SMOKE = Budget({"vision": 4, "lm": 4}, steps=4, per_family=8, seeds=1, probe_fit=60)  # plumbing checks only


@dataclasses.dataclass
class Comparison:
    name: str
    variants: list[Variant]
    paper: dict[str, str]
    verdicts: Any  # (runs) -> list of verdict rows
    extra_metrics: tuple[str, ...] = ()
    # (runs) -> (entries added to its results.json, markdown added to its table.md): a comparison's own
    # tables beside the generic one (the held-out sweep's, LM by LM)
    details: Callable | None = None


def cli(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="CPU-minutes settings")
    p.add_argument("--seeds", type=int, help="seeds per variant (default: 3 quick, 5 full)")
    p.add_argument("--out", help="results folder (default: ablations/results, or results/quick with --quick)")
    p.add_argument("--config", help="YAML config applied to every training step (larger runs, real sizes)")
    p.add_argument("--work", help="folder for the runs' checkpoints (default: OUT/_runs)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="jobs at once (1 thread each)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--stage0-per-seed", action="store_true", help="pretrain a ViT and an LM for every seed")
    p.add_argument("--smoke", action="store_true", help="a few steps of everything: checks the plumbing, not models")
    p.add_argument("--first", help="train this comparison's jobs before the others' (the report's order is kept)")
    p.add_argument("--plan", action="store_true", help="say what would train and why, then stop")
    p.add_argument("--spec", help="a comparison written as YAML (ablations/spec.py), run instead of the suite")
    p.add_argument(
        "--retrain-stage0", action="store_true", help="allow replacing a finished stage 0 whose config changed"
    )
    return p.parse_args(argv)


def key_of(parts: Any) -> str:
    """A fingerprint: 16 hex digits of the SHA-256 of `parts` as sorted JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Plan:
    """Where a suite's jobs live, what each computes (configs, fingerprints) and where every setting came from."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = SMOKE if getattr(args, "smoke", False) else QUICK if args.quick else FULL
        per_seed = getattr(args, "stage0_per_seed", False)
        self.budget = dataclasses.replace(base, seeds=args.seeds or base.seeds, shared_stage0=not per_seed)
        default_out = ROOT / "ablations" / "results" / ("quick" if args.quick else "")
        self.out = Path(args.out) if args.out else default_out
        self.work = Path(args.work) if args.work else self.out / "_runs"

    @property
    def mode(self) -> str:
        return "quick" if self.args.quick else "full"

    def config(self, stage: str, seed: int, overrides: dict, steps: int):
        """A step's resolved config, in the layers of `ablations.regime` (mode, --config, regime, the
        step's overrides, the budget)."""
        from lab.train import build_config

        o = {**REGIME, **STAGE[stage], **overrides, "seed": seed, "max_steps": steps, "save_every": max(steps, 1)}
        return build_config(stage, config_file=self.args.config, overrides=o, preset=MODE[self.mode][stage])

    def step_count(self, step: Step) -> int:
        return max(1, round(self.budget.steps * step.steps))

    def plan(self, v: Variant, seed: int) -> list[dict]:
        """Each step of a recipe as it will train: its resolved config and what it starts from. Each
        override must name one setting by its full path (`ablations.regime.check_keys`)."""
        out = []
        for s in v.recipe:
            where = f"variant {v.name}, stage {s.stage}"
            try:
                cfg = self.config(s.stage, seed, s.overrides, self.step_count(s))
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            check_keys(s.overrides, cfg.to_dict(), where)
            out.append({"config": cfg.identity(), "init": list(s.init)})
        return out

    def provenance(self, c: Comparison, v: Variant, seed: int) -> list[tuple[str, dict[str, tuple[Any, str]]]]:
        """Per step of the job: {key: (value, the layer that set it)} for every key not at lab's default
        (`ablations.regime`: mode, --config, regime, comparison, variant, budget)."""
        from lab.train.config import flatten

        shared = shared_overrides([[(s.stage, s.overrides) for s in w.recipe] for w in c.variants])
        config_file = flatten(yaml.safe_load(Path(self.args.config).read_text()) or {}) if self.args.config else {}
        out = []
        for step in v.recipe:
            n = self.step_count(step)
            cfg = self.config(step.stage, seed, step.overrides, n)
            comparison = {k: x for k, x in shared.get(step.stage, {}).items() if k in step.overrides}
            variant = {k: x for k, x in step.overrides.items() if k not in comparison}
            budget = {"seed": seed, "max_steps": n, "save_every": max(n, 1)}
            steps = layers(step.stage, self.mode, config_file, comparison, variant, budget)
            out.append((step.stage, provenance(cfg.identity(), steps)))
        return out

    def stage0_key(self, seed: int, stage: str) -> str:
        """The fingerprint of one stage-0 part: its resolved config."""
        return key_of([PROTOCOL, self.config(stage, seed, {}, self.budget.stage0_steps[stage]).identity()])

    def stage0_seed(self, seed: int) -> int:
        """The stage 0 that a job of `seed` starts from."""
        return 0 if self.budget.shared_stage0 else seed

    def part_seeds(self, v: Variant, seed: int) -> dict[str, int]:
        """The stage-0 seed of each part a job starts from: its own stage 0's, but for the LM of a
        variant on an LM axis (`over_lms`)."""
        own = self.stage0_seed(seed)
        return {"vision": own, "lm": own if v.lm_seed is None else v.lm_seed}

    def axis_lms(self, jobs: list[tuple], pretrained: list[int]) -> list[int]:
        """The LM seeds an LM axis needs beyond the suite's own stage 0 (`pretrained`)."""
        return sorted({v.lm_seed for _, v, _ in jobs if v.lm_seed is not None} - set(pretrained))

    def stage0_dir(self, seed: int) -> Path:
        """Stage 0 of a seed: kept with the results (committed), not in the scratch run folders.
        Its training is bit-exact on one machine but not across machines (the quick LM retrained in
        another machine answered from text up to 0.04 differently per family), and every job of a
        suite, both arms of every pair included, must start from the same stage 0."""
        return self.out / "stage0" / f"seed{seed}"

    def job(self, comparison: str, v: Variant, seed: int) -> tuple[Path, str]:
        """A (comparison, variant, seed) job's run folder and its fingerprint. Two jobs with one
        fingerprint (of two comparisons) compute the same thing and are trained once (`run_all`)."""
        seeds = self.part_seeds(v, seed)
        measure = [f"{v.measure.__module__}.{v.measure.__qualname__}"] if v.measure else []
        key = key_of(
            [
                PROTOCOL,
                {part: self.stage0_key(seeds[part], part) for part in v.stage0_parts()},
                self.plan(v, seed),
                v.eval_overrides,
                self.budget.per_family,
                self.budget.probe_fit if v.probe and seed == 0 else None,
                *measure,
            ]
        )
        return self.work / comparison / v.name / f"seed{seed}", key

    def fresh_records(self, ledger: Ledger):
        """`fresh(key)`: the ledger holds `key`, and it started from the stage-0 weights now on disk
        (`ablations.ledger.from_stage0`)."""
        disk = stage0_on_disk(self.stage0_dir(0).parent)
        return lambda key: key in ledger and from_stage0(ledger[key], disk)

    @property
    def text_questions(self) -> int:
        return min(self.budget.per_family, 500)

    def stage0_text_key(self, seed: int) -> str:
        return key_of([self.stage0_key(seed, "lm"), self.text_questions])

    def stage0_probes_key(self, seed: int = 0) -> str:
        n = self.budget.probe_fit
        return key_of([self.stage0_key(seed, "vision"), self.stage0_key(seed, "lm"), n, self.text_questions])

    def suite_jobs(self, comparisons: list[Comparison]) -> tuple[list[tuple], list[str], list[int]]:
        """Every (comparison, variant, seed) job, its fingerprint, and the stage-0 seeds they start from."""
        seeds = range(self.budget.seeds)
        jobs = [(c.name, v, s) for s in seeds for c in comparisons for v in c.variants]
        return jobs, [self.job(*j)[1] for j in jobs], sorted({self.stage0_seed(s) for s in seeds})

    def plan_lines(self, comparisons: list[Comparison]) -> list[str]:
        """`--plan`: every job's settings and where each came from, then what would train and why
        (`ablations.preflight`), training nothing."""
        jobs, keys, pretrained = self.suite_jobs(comparisons)
        ledger = Ledger(self.out / "jobs.jsonl")
        by_name = {c.name: c for c in comparisons}
        lines = [f"{self.mode} mode; each key's layer: {', '.join(LAYERS)} (ablations/regime.py)"]
        for (name, v, seed), key in zip(jobs, keys, strict=True):
            state = "in the ledger" if key in ledger else "trains"
            lines.append(f"{name}/{v.name}/seed{seed} [{key}] {state}")
            for stage, keys_of in self.provenance(by_name[name], v, seed):
                set_here = ", ".join(f"{k}={json.dumps(x)} ({layer})" for k, (x, layer) in sorted(keys_of.items()))
                lines.append(f"  {stage}: {set_here}")
        changes = preflight.stage0_changes(self, pretrained, self.axis_lms(jobs, pretrained))
        return lines + preflight.report(self, jobs, keys, ledger, changes)
