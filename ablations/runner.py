"""The run: the plan's jobs the ledger lacks, trained on `--workers` processes, evaluated, probed, and
recorded in the ledger as each finishes; then each comparison's results, table and plot.

Resumable: each finished job's result goes into the ledger, `OUT/jobs.jsonl` (`ablations.ledger`), under
its fingerprint (`ablations.plan`). A rerun trains only the jobs the ledger lacks, and stage 0 only when
one does; the run folders (`OUT/_runs`) are scratch. Parallel: `--workers N` runs N jobs at once, each
with one torch thread (two 1-thread runs on 2 cores train 1.75× as many samples per second as one
2-thread run; two runs with default threads oversubscribe the cores and crawl).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from ablations import preflight
from ablations.evaluate import evaluate, retrieval
from ablations.ledger import Ledger, SuiteClock, stage0_versions, weights_digest
from ablations.plan import ROOT, Comparison, Plan, Variant, key_of
from ablations.pool import call, finished, open_pool
from ablations.preflight import covers_families
from ablations.regime import REGIME, STAGE
from lab.rundir import RunDir


def git_commit() -> str:
    if os.environ.get("LAB_COMMIT"):  # a copy of the tree without .git (a lent GPU machine)
        return os.environ["LAB_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return "unknown"


def run_one(comparison, args) -> int:
    """One comparison's command line (`python -m ablations NAME`): `--plan` says what would train and why,
    otherwise every job the ledger lacks trains and the comparison's results are written."""
    runner = Runner(args)
    if args.plan:
        print("\n".join(runner.plan_lines([comparison])))
    else:  # its own clock: the suite's (OUT/suite.json) times the whole suite
        runner.run_all([comparison], clock=runner.out / comparison.name / "suite.json")
    return 0


class Runner(Plan):
    """The plan, trained: stage 0, every job the ledger lacks, the stage-0 measurements, the results."""

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
        seeds = self.part_seeds(v, seed)
        stage0 = {part: self.stage0_dir(s) / part for part, s in seeds.items()}
        outputs, summary = self.train_recipe(v, seed, folder, stage0)
        final = outputs[v.recipe[-1].stage]
        train_s = time.perf_counter() - t0
        model = lab.load_pretrained(final).to(self.args.device)
        measured: dict = {}
        if v.measure is not None:  # a comparison's own measurement (the held-out sweep's)
            measured = v.measure(self, model, final, seed)
            metrics = measured.pop("metrics")
        else:
            metrics = evaluate(model, final, v.eval_overrides, self.budget.per_family, seed)
            metrics["retrieval_acc"] = retrieval(model, stage0["vision"], final)
            metrics["retrieval_acc_stage0"] = json.loads((stage0["vision"] / "retrieval.json").read_text())[
                "retrieval_acc"
            ]
            metrics["trainable_parameters"] = float(summary["trainable_parameters"])
            metrics["llm_tokens_per_image"] = float(model.cfg.image_tokens)
            metrics["train_samples_per_s"] = float(summary["samples_per_s"])
        weights = {part: weights_digest(stage0[part]) for part in v.stage0_parts()}
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
            "device": self.args.device,  # not in the fingerprint: CPU and GPU agree (HISTORY.md)
            "stage0_seed": self.stage0_seed(seed),
            "stage0_weights": weights,
            "fingerprint": key,
            **measured,
        }
        if v.lm_seed is not None:  # on an LM axis: the parts come from two stage-0 seeds
            res["stage0_seeds"] = seeds
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

    def stage0_text(self, seed: int) -> dict:
        """A stage-0 LM answering from the true caption as text (cheap; every stage-0 seed): the
        frozen-LLM variants trained on it track it family by family."""
        from ablations.probe import text_accuracy

        lm = self.stage0_dir(seed) / "lm"
        acc = text_accuracy(lm, per_family=self.text_questions)
        return {"kind": "lm_text", "acc": acc, "stage0_seed": seed, "stage0_weights": {"lm": weights_digest(lm)}}

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

    def run_all(self, comparisons: list[Comparison], clock: Path | None = None) -> dict[str, dict]:
        """Every (comparison, variant, seed) job the ledger lacks, `--workers` at a time, after stage 0
        (once, or for every seed), which trains only when a job or a stage-0 measurement is missing.
        `clock`: where the wall time of these comparisons is kept (`SuiteClock`; OUT/suite.json)."""
        jobs, keys, pretrained = self.suite_jobs(comparisons)
        axis_lms = self.axis_lms(jobs, pretrained)
        ledger = Ledger(self.out / "jobs.jsonl")
        clock = SuiteClock(clock or self.out / "suite.json", key_of(sorted(keys)), len(jobs), self.args)
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

        # read once: the report and the refusal share it
        changes = preflight.stage0_changes(self, pretrained, axis_lms)
        print("\n".join(preflight.report(self, jobs, keys, ledger, changes)), flush=True)
        todo, missing_text, missing_probes = missing()
        if todo or missing_text or missing_probes:
            preflight.refuse_stage0_loss(changes, getattr(self.args, "retrain_stage0", False))
        clock.trains = bool(todo or missing_text or missing_probes)
        with open_pool(self.args.workers) as pool:
            if todo or missing_text or missing_probes:
                parts = [(self, "stage0", (s, stage)) for s in pretrained for stage in self.budget.stage0_steps]
                parts += [(self, "stage0", (s, "lm")) for s in axis_lms]
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
        from ablations.figures import plot
        from ablations.report import summarize, table

        result = {
            "comparison": c.name,
            "runs": runs,
            "summary": summarize(runs),
            "paper": c.paper,
            "verdicts": c.verdicts(runs),
            "recipes": {v.name: [s.overrides for s in v.recipe] for v in c.variants},
            "shortfall": {v.name: list(v.shortfall) for v in c.variants if v.shortfall},
            "stage0_probes": stage0,
            "config": {
                "mode": "quick" if self.args.quick else "full",
                "budget": dataclasses.asdict(self.budget),
                "regime": REGIME,
                "stage_regime": STAGE,
                "config_file": self.args.config,
                "device": self.args.device,
                "stage0_weights": versions or {},
                "example_step_config": self.config("instruct", 0, {}, self.budget.steps).to_dict(),
            },
            "git_commit": git_commit(),
            "wall_s": sum(r["wall_s"] for r in runs),
        }
        text = table(result, c.extra_metrics)
        if c.details is not None:
            more, markdown = c.details(runs)
            result |= more
            text += "\n" + markdown
        folder = self.out / c.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(result, indent=2))
        (folder / "table.md").write_text(text)
        plot(result, folder / "plot.png")
        print(text, flush=True)
        return result


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
