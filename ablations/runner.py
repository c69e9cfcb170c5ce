"""Shared ablation runner: variants × seeds -> results.json, a markdown table, a plot.

A variant is a recipe: a list of training steps (stage, config overrides, which earlier outputs
to start from). Every variant of a comparison gets the same data, the same optimizer-step budget
and the same evaluation; stage-0 components (vision encoder, LM) are trained once and shared by
every seed and every comparison (`Budget.shared_stage0`). Training goes through `lab.train.train`,
evaluation through `lab.eval`.

Resumable: each finished job's result goes into the ledger, `OUT/jobs.jsonl` (`ablations.ledger`),
under a fingerprint of what it computes: the resolved training config of each step (lab's defaults
included, so changing a default retrains the jobs it reaches and no other), the stage-0 parts it
starts from (theirs likewise), its evaluation settings and `PROTOCOL`. A rerun trains only the jobs
the ledger lacks, and stage 0 only when one does; the run folders (`OUT/_runs`) are scratch. A change
of lab's code that alters what the numbers mean without changing a config bumps `PROTOCOL`.
Parallel: `--workers N` runs N jobs at once, each with one torch thread (two 1-thread runs on
2 cores train 1.75× as many samples per second as one 2-thread run; two runs with default
threads oversubscribe the cores and crawl).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ablations import preflight
from ablations.evaluate import evaluate, retrieval
from ablations.ledger import Ledger, SuiteClock, from_stage0, stage0_on_disk, stage0_versions, weights_digest
from ablations.pool import call, finished, open_pool
from ablations.preflight import covers_families
from lab.data.tasks import lm_mix
from lab.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]

# The small-scale regime, applied to every training step of every variant (chosen on the
# validation split; REPORT.md's "Regime" section gives the measurements behind each value).
REGIME: dict[str, Any] = {
    "data.scene.image_size": 48,  # 3×3 cells of 16 px ...
    "model.vision.image_size": 48,
    "model.vision.patch_size": 8,  # ... each exactly 2×2 patches
    "model.vision.num_layers": 4,
    "model.llm.num_layers": 4,
}
# The LM's family mix: each family's `lm_share` (lab.data.tasks.FAMILY; "exists" reads twice).
LM_FAMILIES = lm_mix()
# Stage 0's ViT: the CLIP-style loss plus a dense one, in which every patch token names its object's
# shape, colour and size and its cell (`clip.dense_targets="words"`). With the plain contrastive
# ViT every model answered about a random object once a scene held two or more (colour 0.59 / 0.46
# on 2 / 3 objects); with this one, 0.90 / 0.89 (val, seed 0, LLaVA recipe, 600 steps; HISTORY.md).
STAGE_REGIME: dict[str, dict[str, Any]] = {
    # lr 2e-3 in both modes: the full preset's 1e-3 left the ViT under-trained after its 1,000 steps
    # (cell shape probe 0.947 vs 0.977; full mode, seed 0, linear connector: colour 0.72 vs 0.95).
    "vision": {"clip.dense_weight": 1.0, "clip.dense_targets": "words", "optim.lr": 2e-3},
    "lm": {"optim.lr": 1e-3, "data.families": LM_FAMILIES},  # 3e-3 never leaves the bag-of-words plateau
    "instruct": {"optim.lr": 2e-3},
}

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
    # A main variant whose shortfall is the effect measured (plain queries under a tight budget, a
    # ViT tuned on a small set) is exempt from the every-main-variant floors, as the issue allows,
    # but only beside a witness: (why, another variant of the same model that must clear the floor,
    # showing the shortfall is the effect and not a model that learned nothing).
    exempt: tuple[str, str] | None = None

    def stage0_parts(self) -> list[str]:
        """The stage-0 parts its recipe starts from ("vision", "lm")."""
        return sorted({i.split("/", 1)[1] for s in self.recipe for i in s.init if i.startswith("stage0/")})


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
    # or `exists` so differently that they, not the arms, made most of the spread (HISTORY.md).
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
    p.add_argument(
        "--retrain-stage0", action="store_true", help="allow replacing a finished stage 0 whose config changed"
    )
    return p.parse_args(argv)


def git_commit() -> str:
    if os.environ.get("LAB_COMMIT"):  # a copy of the tree without .git (a lent GPU machine)
        return os.environ["LAB_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return "unknown"


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = SMOKE if getattr(args, "smoke", False) else QUICK if args.quick else FULL
        per_seed = getattr(args, "stage0_per_seed", False)
        self.budget = dataclasses.replace(base, seeds=args.seeds or base.seeds, shared_stage0=not per_seed)
        default_out = ROOT / "ablations" / "results" / ("quick" if args.quick else "")
        self.out = Path(args.out) if args.out else default_out
        self.work = Path(args.work) if args.work else self.out / "_runs"

    # ----- configs ------------------------------------------------------------------------
    def overrides(self, stage: str, seed: int, overrides: dict, steps: int) -> dict:
        return {
            **REGIME,
            **STAGE_REGIME.get(stage, {}),
            **overrides,
            "seed": seed,
            "max_steps": steps,
            "save_every": max(steps, 1),
        }

    def config(self, stage: str, seed: int, overrides: dict, steps: int):
        from lab.train import build_config

        o = self.overrides(stage, seed, overrides, steps)
        return build_config(stage, quick=self.args.quick, config_file=self.args.config, overrides=o)

    def step_count(self, step: Step) -> int:
        return max(1, round(self.budget.steps * step.steps))

    def plan(self, v: Variant, seed: int) -> list[dict]:
        """Each step of a recipe as it will train: its resolved config and what it starts from."""
        return [
            {"config": self.config(s.stage, seed, s.overrides, self.step_count(s)).identity(), "init": list(s.init)}
            for s in v.recipe
        ]

    def stage0_key(self, seed: int, stage: str) -> str:
        """The fingerprint of one stage-0 part: its resolved config."""
        return _key([PROTOCOL, self.config(stage, seed, {}, self.budget.stage0_steps[stage]).identity()])

    # ----- jobs ---------------------------------------------------------------------------
    def stage0_seed(self, seed: int) -> int:
        """The stage 0 that a job of `seed` starts from."""
        return 0 if self.budget.shared_stage0 else seed

    def stage0_dir(self, seed: int) -> Path:
        """Stage 0 of a seed: kept with the results (committed), not in the scratch run folders.
        Its training is bit-exact on one machine but not across machines (the quick LM retrained in
        a later session answered from text up to 0.04 differently per family), and every job of a
        suite, both arms of every pair included, must start from the same stage 0."""
        return self.out / "stage0" / f"seed{seed}"

    def stage0(self, seed: int, stage: str) -> bool:
        """One stage-0 part (the vision encoder or the LM) for a stage-0 seed, shared by every
        comparison; the two are independent, so they train side by side. True when an earlier
        invocation had trained it already."""
        from lab.train import train

        folder = self.stage0_dir(seed) / stage
        key = self.stage0_key(seed, stage)
        reused = _done(folder, key)
        if not reused:
            shutil.rmtree(folder, ignore_errors=True)
            train(self.config(stage, seed, {}, self.budget.stage0_steps[stage]), folder, progress=False)
            shutil.rmtree(RunDir(folder).checkpoints, ignore_errors=True)  # done: nothing to resume
            (folder / "fingerprint").write_text(key)
        if stage == "vision":  # the untouched encoder's retrieval: the same for every variant of the seed
            import lab

            acc = lambda: {"retrieval_acc": retrieval(lab.load_pretrained(folder), folder, folder)}  # noqa: E731
            _cached_json(folder / "retrieval.json", key, acc)
        return reused

    def job(self, comparison: str, v: Variant, seed: int) -> tuple[Path, str]:
        """A (comparison, variant, seed) job's run folder and its fingerprint. Two jobs with one
        fingerprint (of two comparisons) compute the same thing and are trained once (`run_all`)."""
        key = _key(
            [
                PROTOCOL,
                {part: self.stage0_key(self.stage0_seed(seed), part) for part in v.stage0_parts()},
                self.plan(v, seed),
                v.eval_overrides,
                self.budget.per_family,
                self.budget.probe_fit if v.probe and seed == 0 else None,
            ]
        )
        return self.work / comparison / v.name / f"seed{seed}", key

    def train_recipe(self, v: Variant, seed: int, folder: Path, stage0: dict[str, Path]) -> tuple[dict, dict]:
        """Each step of the recipe into `folder/<stage>`, starting from the stage-0 parts in `stage0`
        (part -> run folder) and earlier steps: ({stage: its run folder}, the last step's summary)."""
        from lab.train import train

        outputs: dict[str, Path] = {}
        summary: dict = {}
        for step in v.recipe:
            init = [stage0[i.split("/", 1)[1]] if i.startswith("stage0/") else outputs[i] for i in step.init]
            out = folder / step.stage
            shutil.rmtree(out, ignore_errors=True)
            cfg = self.config(step.stage, seed, step.overrides, self.step_count(step))
            summary = train(cfg, out, init=init, progress=False)
            outputs[step.stage] = out
        return outputs, summary

    def run_variant(self, comparison: str, v: Variant, seed: int) -> dict:
        """Train the recipe, evaluate (val and test), probe (seed 0): the job's ledger record."""
        folder, key = self.job(comparison, v, seed)
        import torch

        import lab

        t0 = time.perf_counter()
        stage0 = self.stage0_dir(self.stage0_seed(seed))
        outputs, summary = self.train_recipe(v, seed, folder, {part: stage0 / part for part in ("vision", "lm")})
        final = outputs[v.recipe[-1].stage]
        train_s = time.perf_counter() - t0
        model = lab.load_pretrained(final).to(self.args.device)
        metrics = evaluate(model, final, v.eval_overrides, self.budget.per_family, seed)
        metrics["retrieval_acc"] = retrieval(model, stage0 / "vision", final)
        metrics["retrieval_acc_stage0"] = json.loads((stage0 / "vision" / "retrieval.json").read_text())[
            "retrieval_acc"
        ]
        metrics["trainable_parameters"] = float(summary["trainable_parameters"])
        metrics["llm_tokens_per_image"] = float(model.cfg.image_tokens)
        metrics["train_samples_per_s"] = float(summary["samples_per_s"])
        weights = {part: weights_digest(stage0 / part) for part in v.stage0_parts()}
        probe = None
        if v.probe and seed == 0:
            from ablations.probe import probe_run

            torch.manual_seed(seed)
            n = self.budget.probe_fit
            probe = probe_run(final, n_fit=n, n_val=n // 3, n_test=n // 2)
        res = {
            "kind": "job",
            "comparison": comparison,
            "variant": v.name,
            "group": v.group,
            "seed": seed,
            "metrics": metrics,
            "probe": probe,
            "wall_s": time.perf_counter() - t0,
            "train_s": train_s,
            "device": self.args.device,  # not in the fingerprint: CPU and GPU runs agree (HISTORY.md)
            "stage0_seed": self.stage0_seed(seed),
            "stage0_weights": weights,
            "fingerprint": key,
        }
        for out in outputs.values():  # keep the results, not every intermediate checkpoint
            shutil.rmtree(RunDir(out).checkpoints, ignore_errors=True)
        return res

    def as_job(self, record: dict, comparison: str, v: Variant, seed: int, trained_by: tuple | None) -> dict:
        """A ledger record as the result of job (comparison, v, seed). `trained_by`: the job (another
        comparison's, same fingerprint) whose run folder holds the model; this one cost no time."""
        res = {k: x for k, x in record.items() if k != "rekeyed_from"}
        res |= {"kind": "job", "comparison": comparison, "variant": v.name, "group": v.group, "seed": seed}
        if trained_by is not None:
            res |= {"wall_s": 0.0, "train_s": 0.0, "same_as": f"{trained_by[0]}/{trained_by[1].name}/seed{seed}"}
        return res

    def fresh_records(self, ledger: Ledger):
        """`fresh(key)`: the ledger holds `key`, and it started from the stage-0 weights now on disk
        (`ablations.ledger.from_stage0`)."""
        disk = stage0_on_disk(self.stage0_dir(0).parent)
        return lambda key: key in ledger and from_stage0(ledger[key], disk)

    def stage0_text(self, seed: int) -> dict:
        """A stage-0 LM answering from the true caption as text (cheap; every stage-0 seed): the
        frozen-LLM variants trained on it track it family by family."""
        from ablations.probe import text_accuracy

        lm = self.stage0_dir(seed) / "lm"
        acc = text_accuracy(lm, per_family=self.text_questions)
        return {"kind": "lm_text", "acc": acc, "stage0_seed": seed, "stage0_weights": {"lm": weights_digest(lm)}}

    @property
    def text_questions(self) -> int:
        return min(self.budget.per_family, 500)

    def stage0_text_key(self, seed: int) -> str:
        return _key([self.stage0_key(seed, "lm"), self.text_questions])

    def stage0_probes_key(self, seed: int = 0) -> str:
        n = self.budget.probe_fit
        return _key([self.stage0_key(seed, "vision"), self.stage0_key(seed, "lm"), n, self.text_questions])

    def stage0_probes(self, seed: int, lm_text: dict) -> dict:
        """Probes of stage 0 (ViT features; the LM's answers from the true caption as text)."""
        from ablations.probe import cell_probe, probe_run

        root = self.stage0_dir(seed)
        n = self.budget.probe_fit
        return {
            "kind": "stage0_probes",
            "stage0_seed": seed,
            "stage0_weights": {part: weights_digest(root / part) for part in ("vision", "lm")},
            "vision": probe_run(root / "vision", n_fit=n, n_val=n // 3, n_test=n // 2, sites=("pixels", "vit")),
            "lm_text": lm_text,
            "cells": cell_probe(root / "vision", n_fit=2 * n, n_test=n // 2),
        }

    # ----- the suite ----------------------------------------------------------------------
    def suite_jobs(self, comparisons: list[Comparison]) -> tuple[list[tuple], list[str], list[int]]:
        """Every (comparison, variant, seed) job, its fingerprint, and the stage-0 seeds they start from."""
        seeds = range(self.budget.seeds)
        jobs = [(c.name, v, s) for s in seeds for c in comparisons for v in c.variants]
        return jobs, [self.job(*j)[1] for j in jobs], sorted({self.stage0_seed(s) for s in seeds})

    def plan_lines(self, comparisons: list[Comparison]) -> list[str]:
        """`--plan`: what would train and why (`ablations.preflight`), training nothing."""
        jobs, keys, pretrained = self.suite_jobs(comparisons)
        return preflight.report(self, jobs, keys, Ledger(self.out / "jobs.jsonl"), pretrained)

    def run_all(self, comparisons: list[Comparison]) -> dict[str, dict]:
        """Every (comparison, variant, seed) job the ledger lacks, `--workers` at a time, after stage 0
        (once, or for every seed), which trains only when a job or a stage-0 measurement is missing."""
        jobs, keys, pretrained = self.suite_jobs(comparisons)
        ledger = Ledger(self.out / "jobs.jsonl")
        clock = SuiteClock(self.out / "suite.json", _key(sorted(keys)), len(jobs), self.args)
        first: dict[str, int] = {}  # fingerprint -> index of the job that trains it
        same = [first.setdefault(k, i) for i, k in enumerate(keys)]
        text_keys = {s: self.stage0_text_key(s) for s in pretrained}
        probe_key = self.stage0_probes_key(0)

        def missing() -> tuple[set[int], list[int], bool]:
            """What the ledger lacks, or holds from other stage-0 weights than those on disk."""
            fresh = self.fresh_records(ledger)
            todo = {
                i
                for i in range(len(jobs))
                if same[i] == i and not (fresh(keys[i]) and covers_families(ledger[keys[i]]))
            }
            return todo, [s for s in pretrained if not fresh(text_keys[s])], not fresh(probe_key)

        print("\n".join(preflight.report(self, jobs, keys, ledger, pretrained)), flush=True)
        todo, missing_text, missing_probes = missing()
        if todo or missing_text or missing_probes:
            preflight.refuse_stage0_loss(self, pretrained)
        clock.trains = bool(todo or missing_text or missing_probes)
        with open_pool(self.args.workers) as pool:
            if todo or missing_text or missing_probes:
                parts = [(self, "stage0", (s, stage)) for s in pretrained for stage in self.budget.stage0_steps]
                clock.reused |= any(list(pool.map(call, parts)))  # stage 0 first
                todo, missing_text, missing_probes = missing()  # against the stage 0 now on disk
                stale = sum(keys[i] in ledger for i in todo)
                if stale:
                    print(
                        f"{stale} ledger records started from other stage-0 weights (or predate the digest); "
                        "they retrain",
                        flush=True,
                    )
            for s, rec in zip(
                missing_text, pool.map(call, [(self, "stage0_text", (s,)) for s in missing_text]), strict=True
            ):
                ledger.add({**rec, "fingerprint": text_keys[s]})
            lm_text = {s: ledger[text_keys[s]]["acc"] for s in pretrained}
            probes = None
            if missing_probes:
                probes = pool.submit(call, (self, "stage0_probes", (0, lm_text[0])))
            for rec in finished(pool, call, [(self, "run_variant", jobs[i]) for i in self.order(todo, jobs, keys)]):
                clock.tick(ledger.add(rec))  # recorded as each finishes: a stopped suite keeps them
                if probes is not None and probes.done():  # the stage-0 probes likewise
                    ledger.add({**probes.result(), "fingerprint": probe_key})
                    probes = None
            if probes is not None:
                ledger.add({**probes.result(), "fingerprint": probe_key})
        runs = []
        for i, j in enumerate(jobs):
            trained_by = None if same[i] == i else jobs[same[i]]
            runs.append(self.as_job(ledger[keys[i]], *j, trained_by))
            if same[i] != i or i not in todo:
                clock.tick(runs[-1], cached=same[i] == i)
        stage0 = {k: x for k, x in ledger[probe_key].items() if k not in ("kind", "rekeyed_from")}
        versions = stage0_versions([*runs, ledger[probe_key], *(ledger[k] for k in text_keys.values())])
        from ablations.provenance import stage0_warning

        if stage0_warning(versions):  # the report's own rule, so the two never disagree
            print(f"warning: the jobs did not all start from the same stage-0 weights: {versions}", flush=True)
        results = {}
        for c in comparisons:
            mine = [r for (name, _, _), r in zip(jobs, runs, strict=True) if name == c.name]
            results[c.name] = self.finish(c, mine, {**stage0, "lm_text_by_seed": lm_text}, versions)
        self.wall_s = clock.tick(None)["wall_s"]
        return results

    def order(self, todo: set[int], jobs: list[tuple], keys: list[str]) -> list[int]:
        """The jobs to train, a comparison at a time (`--first` one leads), so that a suite stopped
        part-way has whole comparisons finished rather than a few seeds of each. A job two comparisons
        share (one fingerprint) goes with the earlier of the two."""
        names = list(dict.fromkeys(c for c, _, _ in jobs))
        first = getattr(self.args, "first", None)
        if first is not None and first not in names:
            raise SystemExit(f"--first {first}: not a comparison of this suite ({', '.join(names)})")
        rank: dict[str, tuple] = {}
        for (c, _, _), k in zip(jobs, keys, strict=True):
            rank[k] = min(rank.get(k, (True, len(names))), (c != first, names.index(c)))
        return sorted(todo, key=lambda i: (rank[keys[i]], jobs[i][2], i))

    def finish(self, c: Comparison, runs: list[dict], stage0: dict, versions: dict | None = None) -> dict:
        from ablations.report import plot, summarize, table

        result = {
            "comparison": c.name,
            "runs": runs,
            "summary": summarize(runs),
            "paper": c.paper,
            "verdicts": c.verdicts(runs),
            "recipes": {v.name: [s.overrides for s in v.recipe] for v in c.variants},
            "exempt": {v.name: list(v.exempt) for v in c.variants if v.exempt},
            "stage0_probes": stage0,
            "config": {
                "mode": "quick" if self.args.quick else "full",
                "budget": dataclasses.asdict(self.budget),
                "regime": REGIME,
                "stage_regime": STAGE_REGIME,
                "config_file": self.args.config,
                "device": self.args.device,
                "stage0_weights": versions or {},
                "example_step_config": self.config("instruct", 0, {}, self.budget.steps).to_dict(),
            },
            "git_commit": git_commit(),
            "wall_s": sum(r["wall_s"] for r in runs),
        }
        folder = self.out / c.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(result, indent=2))
        (folder / "table.md").write_text(table(result, c.extra_metrics))
        plot(result, folder / "plot.png")
        print(table(result, c.extra_metrics), flush=True)
        return result


def _key(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached_json(path: Path, key: str, compute) -> dict:
    """`compute()`'s dict with `fingerprint: key`, stored at `path` and read back while the key matches."""
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") == key:
            return stored
    res = {**compute(), "fingerprint": key}
    path.write_text(json.dumps(res, indent=2))
    return res


def _done(folder: Path, key: str) -> bool:
    f = folder / "fingerprint"
    return RunDir(folder).summary_file.exists() and f.exists() and f.read_text() == key
