"""Shared ablation runner: variants × seeds -> results.json, a markdown table, a plot.

A variant is a recipe: a list of training steps (stage, config overrides, which earlier outputs
to start from). Every variant of a comparison gets the same data, the same optimizer-step budget
and the same evaluation; stage-0 components (vision encoder, LM) are trained once per seed and
shared. Training goes through `lab.train.train`, evaluation through `lab.eval`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

import lab
from lab.data import SceneDataConfig, load_tokenizer
from lab.eval import evaluate_scenes
from lab.train import build_config, train

log = logging.getLogger("lab")
ROOT = Path(__file__).resolve().parents[1]
METRICS = ("held_in_acc", "held_out_acc")


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
    group: str = "main"  # "main" or "control": reported side by side


@dataclasses.dataclass
class Budget:
    """Per-mode sizes. Quick: CPU minutes; full: the same recipe, longer."""

    stage0_steps: dict[str, int]
    steps: int
    per_family: int
    seeds: int = 3


QUICK = Budget({"vision": 150, "lm": 150}, steps=160, per_family=24)
FULL = Budget({"vision": 1500, "lm": 1500}, steps=2000, per_family=200)


def cli(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="CPU-minutes settings")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "ablations" / "results"))
    p.add_argument("--config", help="YAML config applied to every training step (larger runs, real sizes)")
    p.add_argument("--work", help="folder for the runs' checkpoints (default: OUT/_runs)")
    return p.parse_args()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return "unknown"


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.budget = dataclasses.replace(QUICK if args.quick else FULL, seeds=args.seeds)
        self.out = Path(args.out)
        self.work = Path(args.work) if args.work else self.out / "_runs" / ("quick" if args.quick else "full")
        self._stage0_retrieval: dict[int, float] = {}

    def config(self, stage: str, seed: int, overrides: dict, steps: int):
        o = {**overrides, "seed": seed, "max_steps": steps, "save_every": max(steps, 1)}
        return build_config(stage, quick=self.args.quick, config_file=self.args.config, overrides=o)

    def stage0(self, seed: int) -> Path:
        """Vision encoder and LM pretrained once per seed, shared by every comparison."""
        root = self.work / "stage0" / f"seed{seed}"
        for stage, steps in self.budget.stage0_steps.items():
            if not (root / stage / "run.json").exists():
                _fresh(root / stage)
                train(self.config(stage, seed, {}, steps), root / stage, progress=False)
        return root

    def stage0_retrieval(self, seed: int, tok) -> float:
        """Retrieval of the untouched stage-0 encoder: the same for every variant of a seed."""
        if seed not in self._stage0_retrieval:
            vision = self.stage0(seed) / "vision"
            self._stage0_retrieval[seed] = retrieval(lab.load_pretrained(vision), vision, tok)
        return self._stage0_retrieval[seed]

    def run_variant(self, comparison: str, v: Variant, seed: int) -> dict:
        t0 = time.perf_counter()
        stage0 = self.stage0(seed)
        folder = self.work / comparison / v.name / f"seed{seed}"
        outputs: dict[str, Path] = {}
        summary: dict = {}
        for step in v.recipe:
            init = [stage0 / i.split("/", 1)[1] if i.startswith("stage0/") else outputs[i] for i in step.init]
            out = folder / step.stage
            _fresh(out)
            steps = max(1, round(self.budget.steps * step.steps))
            summary = train(self.config(step.stage, seed, step.overrides, steps), out, init=init, progress=False)
            outputs[step.stage] = out
        final = outputs[v.recipe[-1].stage]
        train_s = time.perf_counter() - t0
        model = lab.load_pretrained(final)
        tok = load_tokenizer(final)
        data = json.loads((final / "train_config.json").read_text())["data"]
        data = SceneDataConfig.from_dict(_merge_dotted(data, v.eval_overrides))
        metrics: dict[str, float] = {}
        for split in ("val", "test") if not self.args.quick else ("test",):
            torch.manual_seed(seed)
            res = evaluate_scenes(model, tok, data, per_family=self.budget.per_family, split=split)
            prefix = "" if split == "test" else "val_"
            metrics[prefix + "held_in_acc"] = res["held_in_acc"]
            metrics[prefix + "held_out_acc"] = res["held_out_acc"]
            if split == "test":
                metrics.update({f"acc_{k}": a for k, a in res["acc"].items()})
                metrics["caption_slot_recall"] = res["caption_slot_recall"]
        metrics["retrieval_acc"] = retrieval(model, stage0 / "vision", tok)
        metrics["retrieval_acc_stage0"] = self.stage0_retrieval(seed, tok)
        metrics["trainable_parameters"] = float(summary["trainable_parameters"])
        metrics["llm_tokens_per_image"] = float(model.cfg.image_tokens)
        metrics["train_samples_per_s"] = float(summary["samples_per_s"])
        return {
            "variant": v.name,
            "group": v.group,
            "seed": seed,
            "metrics": metrics,
            "wall_s": time.perf_counter() - t0,
            "train_s": train_s,
        }

    def run(self, comparison: str, variants: list[Variant], paper: dict, verdicts, extra_metrics=()) -> dict:
        """Run every variant for every seed, then write results.json, table.md and plot.png."""
        logging.basicConfig(level=logging.WARNING)
        runs = []
        for seed in range(self.budget.seeds):
            for v in variants:
                print(f"[{comparison}] {v.name} seed {seed}", flush=True)
                runs.append(self.run_variant(comparison, v, seed))
        summary = summarize(runs)
        verdict_rows = verdicts(runs)
        result = {
            "comparison": comparison,
            "runs": runs,
            "summary": summary,
            "paper": paper,
            "verdicts": verdict_rows,
            "config": {
                "mode": "quick" if self.args.quick else "full",
                "budget": dataclasses.asdict(self.budget),
                "config_file": self.args.config,
                "example_step_config": self.config("instruct", 0, {}, self.budget.steps).to_dict(),
            },
            "git_commit": git_commit(),
            "wall_s": sum(r["wall_s"] for r in runs),
        }
        folder = self.out / comparison
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(result, indent=2))
        (folder / "table.md").write_text(table(result, extra_metrics))
        plot(result, folder / "plot.png")
        print(table(result, extra_metrics))
        return result


@torch.no_grad()
def retrieval(model, vision_run: Path, tok, n: int = 64, batch: int = 32) -> float:
    """Top-1 image->caption retrieval (batches of 32, val split) of `model`'s vision encoder,
    scored with the stage-0 contrastive heads: how much a tuned encoder drifted from them."""
    from safetensors.torch import load_file

    from lab.data import SceneTasks
    from lab.models.clip import ClipConfig, ContrastiveHeads, retrieval_accuracy
    from lab.train.stages import caption_batch

    cfg = json.loads((vision_run / "train_config.json").read_text())
    heads = ContrastiveHeads(ClipConfig.from_dict(cfg["clip"]), model.cfg.vision.hidden_size, len(tok))
    heads.load_state_dict(load_file(vision_run / "heads" / "model.safetensors"))
    ds = SceneTasks(SceneDataConfig.from_dict(cfg["data"]), "val")
    accs = []
    for i in range(0, n, batch):
        b = caption_batch([ds[j] for j in range(i, i + batch)], tok)
        img = heads.image_embed(model.vision(b["pixel_values"]))
        accs.append(retrieval_accuracy(img, heads.text_embed(b["input_ids"], b["attention_mask"])))
    return sum(accs) / len(accs)


def summarize(runs: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        rs = [r["metrics"] for r in runs if r["variant"] == name]
        out[name] = {k: mean_std([m[k] for m in rs]) for k in rs[0]}
    return out


def mean_std(xs: list[float]) -> dict:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "n": len(xs)}


def paired(runs: list[dict], a: str, b: str, metric: str, expected: int, label: str, reason_if_not: str) -> dict:
    """Compare variant a against b on `metric`, paired by seed (same data, same stage 0).

    expected=+1: the paper says a > b; -1: a < b; 0: no difference expected (a control).
    Reproduced when the mean paired difference has the expected sign and exceeds twice its
    standard error (|d| < 0.02 for a control); not reproduced when it is clearly the other way."""
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["variant"]] = r["metrics"][metric]
    diffs = [s[a] - s[b] for s in by_seed.values() if a in s and b in s]
    d = mean_std(diffs)
    se = d["std"] / math.sqrt(max(1, d["n"]))
    clear = abs(d["mean"]) > max(2 * se, 0.02)
    if expected == 0:
        verdict = "reproduced" if not clear else "not reproduced"
    elif not clear:
        verdict = "inconclusive"
    else:
        verdict = "reproduced" if (d["mean"] > 0) == (expected > 0) else "not reproduced"
    return {
        "claim": label,
        "metric": metric,
        "a": a,
        "b": b,
        "diff_mean": d["mean"],
        "diff_se": se,
        "verdict": verdict,
        "note": "" if verdict == "reproduced" else reason_if_not,
    }


def table(result: dict, extra=()) -> str:
    cols = ["held_in_acc", "held_out_acc", *extra, "llm_tokens_per_image", "trainable_parameters"]
    lines = [
        f"### {result['comparison']} ({result['config']['mode']} mode, {result['config']['budget']['seeds']} seeds)",
        "",
        "| variant | group | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 2),
    ]
    groups = {r["variant"]: r["group"] for r in result["runs"]}
    for name, s in result["summary"].items():
        cells = []
        for c in cols:
            m = s[c]
            if c in ("llm_tokens_per_image", "trainable_parameters"):
                cells.append(f"{m['mean']:.0f}")
            else:
                cells.append(f"{m['mean']:.3f} ± {m['std']:.3f}")
        lines.append(f"| {name} | {groups[name]} | " + " | ".join(cells) + " |")
    lines += ["", "| claim | paper | ours (paired diff ± s.e.) | verdict |", "|---|---|---|---|"]
    for v in result["verdicts"]:
        paper = result["paper"].get(v["claim"], "")
        ours = f"{v['a']} − {v['b']} on {v['metric']}: {v['diff_mean']:+.3f} ± {v['diff_se']:.3f}"
        lines.append(f"| {v['claim']} | {paper} | {ours} | **{v['verdict']}** |")
    notes = [f"- {v['claim']}: {v['note']}" for v in result["verdicts"] if v["note"]]
    if notes:
        lines += ["", "Why a claim may not reproduce here:", *notes]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["summary"])
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.5))
    width = 0.38
    for j, metric in enumerate(METRICS):
        means = [result["summary"][n][metric]["mean"] for n in names]
        stds = [result["summary"][n][metric]["std"] for n in names]
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=metric)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("exact-match accuracy (test)")
    ax.set_title(f"{result['comparison']} ({result['config']['mode']}, {result['config']['budget']['seeds']} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fresh(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _merge_dotted(data: dict, overrides: dict) -> dict:
    from lab.train.config import set_override

    data = json.loads(json.dumps(data))
    for k, v in overrides.items():
        set_override(data, k, v)
    return data
