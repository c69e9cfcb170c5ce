"""Tables, plots and REPORT.md from the runner's results: what a researcher reads.

Every number comes from `results.json` files written by `ablations.runner`; nothing here trains.
"""

from __future__ import annotations

import json
from pathlib import Path

from ablations.figures import forest
from ablations.ledger import Ledger
from ablations.provenance import devices_line, jobs_by_device, stage0_warning, timing, versions_line
from ablations.report_sections import held_out_section, probe_lines, probe_section
from ablations.targets import frozen_llm_held_out, targets
from ablations.verdicts import EQUIVALENCE, MIN_EFFECT, mean_std
from lab.data.tasks import QA_HELD_IN

QA_FAMILIES = QA_HELD_IN
HISTORY = Path(__file__).with_name("HISTORY.md")  # the regime search, by hand: linked, not regenerated
RULE = (
    "Each claim is decided on paired differences (same seed, same data, same stage 0) over seeds. The 95 % "
    "interval is mean ± t(0.975; seeds − 1) × s.e. (Student's t; 2.78 s.e. with 5 seeds, 4.30 with 3). "
    "*Reproduced*: the interval excludes 0 on the paper's side and the mean exceeds {eff}. *Contradicted*: as "
    "clear the other way, or the interval shows any effect in the paper's direction is under {eff} (*no "
    "effect*). A claim of no difference (and a control) holds when the whole interval lies within ±{eq}. "
    "Anything else is *inconclusive*, with the seeds that would decide an effect of its measured size."
)


def verdict_cell(v: dict) -> str:
    """A verdict in bold, with its kind when it has one ("contradicted (no effect)")."""
    return f"**{v['verdict']}**" + (f" ({v['kind']})" if v.get("kind") else "")


def speed_device(runs: list[dict]) -> str:
    """The device that trained most of `runs`: speeds (`*_per_s`) are averaged over its runs only,
    since a suite finished partly on a GPU would otherwise mix two machines' speeds per variant."""
    devices = [r.get("device", "cpu") for r in runs]
    return max(dict.fromkeys(devices), key=devices.count)


def summarize(runs: list[dict]) -> dict:
    out: dict[str, dict] = {}
    fast = speed_device(runs) if runs else "cpu"
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        rs = [r["metrics"] for r in mine]
        same = [r["metrics"] for r in mine if r.get("device", "cpu") == fast]
        common = [k for k in rs[0] if all(k in m for m in rs)]  # a metric measured since is left out
        out[name] = {k: mean_std([m[k] for m in (same if k.endswith("_per_s") else rs)]) for k in common}
    return out


def table(result: dict, extra=()) -> str:
    cols = ["held_in_acc", "held_in_eval_se", "held_out_acc", "held_out_ranked_acc", *extra]
    cols += ["llm_tokens_per_image", "trainable_parameters"]
    cols = [c for c in cols if any(c in s for s in result["summary"].values())]  # what its jobs measured
    families = [f for f in QA_FAMILIES if any(f"acc_{f}" in s for s in result["summary"].values())]
    seeds = result["config"]["budget"]["seeds"]
    lines = [
        f"### {result['comparison']} ({result['config']['mode']} mode, {seeds} seeds)",
        "",
        "| variant | group | " + " | ".join([*cols, *families]) + " |",
        "|" + "---|" * (len(cols) + 2 + len(families)),
    ]
    groups = {r["variant"]: r["group"] for r in result["runs"]}
    if len({r.get("device", "cpu") for r in result["runs"]}) > 1:  # speeds from one device (`summarize`)
        fast = speed_device(result["runs"])
        lines[2] = lines[2].replace("_per_s |", f"_per_s ({fast} runs) |")
    for name, s in result["summary"].items():
        cells = []
        for c in cols:
            m = s.get(c, {"mean": float("nan"), "std": float("nan")})
            if c in ("llm_tokens_per_image", "trainable_parameters"):
                cells.append(f"{m['mean']:.0f}")
            elif c.endswith("eval_se"):
                cells.append(f"{m['mean']:.4f}")
            else:
                cells.append(f"{m['mean']:.3f} ± {m['std']:.3f}")
        cells += [f"{s[f'acc_{f}']['mean']:.2f}" if f"acc_{f}" in s else "" for f in families]
        lines.append(f"| {name} | {groups[name]} | " + " | ".join(cells) + " |")
    if result["verdicts"]:
        lines += ["", "| claim | paper | ours: paired Δ [95 % interval, Student's t] | verdict |", "|---|---|---|---|"]
    for v in result["verdicts"]:
        paper = result["paper"].get(v["claim"], "")
        lines.append(f"| {v['claim']} | {paper} | {effect_cell(v)} | {verdict_cell(v)} |")
    notes = [f"- {v['claim']}: {v['note']}" for v in result["verdicts"] if v["note"]]
    if notes:
        lines += ["", "Why a claim may not reproduce here:", *notes]
    return "\n".join(lines) + "\n"


def effect_cell(v: dict) -> str:
    """Our paired difference with its 95 % interval: "a − b on metric: +0.046 [+0.010, +0.082]"."""
    lo_hi = "" if v.get("ci95") is None else f" [{v['diff_mean'] - v['ci95']:+.3f}, {v['diff_mean'] + v['ci95']:+.3f}]"
    return f"{v['a']} − {v['b']} on {v['metric']}: {v['diff_mean']:+.3f}{lo_hi}"


def answer_lines(results: dict[str, dict], claims: list[dict], forest_png: str) -> list[str]:
    """The report's first screen: every claim with the paper's result, our paired effect and its 95 %
    interval, and the verdict; then the forest plot of the same effects, the counts, and the rule."""
    lines = ["| comparison | claim | the paper | ours: paired Δ [95 % interval] | verdict |", "|---|---|---|---|---|"]
    for v in claims:
        paper = results[v["comparison"]]["paper"].get(v["claim"], "")
        lines.append(f"| {v['comparison']} | {v['claim']} | {paper} | {effect_cell(v)} | {verdict_cell(v)} |")
    counts = {k: sum(v["verdict"] == k for v in claims) for k in ("reproduced", "contradicted", "inconclusive")}
    undecided = [
        f"{v['claim']} ({v['seeds_to_decide']} seeds)" if v.get("seeds_to_decide") else f"{v['claim']} (no seed count)"
        for v in claims
        if v["verdict"] == "inconclusive"
    ]
    lines += [
        "",
        f"![paired effects]({forest_png})",
        "",
        f"**{counts['reproduced']} reproduced, {counts['contradicted']} contradicted, {counts['inconclusive']} "
        "inconclusive.** " + RULE.format(eff=MIN_EFFECT, eq=EQUIVALENCE),
    ]
    if undecided:
        lines += ["", "Seeds that would decide each inconclusive claim at its measured effect: " + "; ".join(undecided)]
    return lines


def history_link(report_path: Path) -> str:
    """A markdown link to HISTORY.md relative to the report that holds it."""
    import os

    rel = os.path.relpath(HISTORY, Path(report_path).parent if Path(report_path).suffix else report_path)
    return f"[ablations/HISTORY.md]({rel})"


def partial(out: Path, title: str) -> list[str]:
    """A table of whatever jobs a stopped run finished (one row per job in its ledger), for a run
    that could not complete; it says how many there are, and nothing is averaged or picked."""
    rows = []
    every = Ledger(out / "jobs.jsonl").of_kind("job")
    jobs = sorted(on_stage0(out, every), key=lambda r: (r["comparison"], r["variant"], r["seed"]))
    for r in jobs:
        m = r["metrics"]
        fam = " | ".join(f"{m.get(f'acc_{k}', float('nan')):.2f}" for k in QA_FAMILIES)
        rows.append(
            f"| {r['comparison']} | {r['variant']} | {r['seed']} | {m['held_in_acc']:.3f} | {m['held_out_acc']:.3f} | "
            f"{m.get('held_out_ranked_acc', float('nan')):.3f} | {fam} | {r['train_s']:.0f} |"
        )
    other = (
        f" ({len(every) - len(jobs)} more started from other stage-0 weights and are left out)"
        if len(jobs) < len(every)
        else ""
    )
    head = [
        f"## {title}",
        "",
        f"{len(rows)} finished jobs{other}.",
        "",
        "| comparison | variant | seed | held_in_acc | held_out_acc | held_out_ranked_acc | "
        + " | ".join(QA_FAMILIES)
        + " | train s |",
        "|" + "---|" * (7 + len(QA_FAMILIES)),
    ]
    return head + rows + [""]


def on_stage0(out: Path, records: list[dict]) -> list[dict]:
    """The records that started from the stage 0 in `out/stage0` (`ablations.ledger.from_stage0`)."""
    from ablations.ledger import from_stage0, stage0_on_disk

    disk = stage0_on_disk(out / "stage0")
    return [r for r in records if from_stage0(r, disk)]


def report(
    out: Path,
    names: list[str],
    wall: float | None = None,
    history: bool = True,
    path: Path | None = None,
    links: str = "",
) -> str:
    results = {}
    for name in names:
        f = out / name / "results.json"
        if f.exists():
            results[name] = json.loads(f.read_text())
    if not results:
        return ""
    first = next(iter(results.values()))
    cfg = first["config"]
    mode = cfg["mode"]
    suite = json.loads((out / "suite.json").read_text()) if (out / "suite.json").exists() else {}
    claims = [{"comparison": n, **v} for n, res in results.items() for v in res["verdicts"]]
    path = path or out / "REPORT.md"
    png = path.with_name(f"{path.stem}.forest.png")  # beside its report: REPORT.forest.png, REPORT.quick.forest.png
    forest(claims, png, f"Paired effects ({mode} mode, {cfg['budget']['seeds']} seeds, test)")
    parts = ["# Ablation report", "", *answer_lines(results, claims, png.name), "", "## Details", ""]
    parts += [
        f"Mode: **{mode}**, seeds: {cfg['budget']['seeds']}, {cfg['budget']['per_family']} test questions per "
        f"family, {devices_line(results)}, git commit `{first['git_commit'][:10]}`. "
        + timing(suite, wall, jobs_by_device(results))
        + " "
        + versions_line(results),
        "Accuracies are exact match on the test split (chosen on val); mean ± std over seeds. `held_in_eval_se` is "
        "the evaluation's own standard error (binomial over the questions).",
        "",
        f"Regime: `{json.dumps(cfg.get('regime', {}))}`, per stage `{json.dumps(cfg.get('stage_regime', {}))}`, "
        f"stage 0 steps {cfg['budget']['stage0_steps']}, "
        + ("one stage 0 shared by every seed" if cfg["budget"].get("shared_stage0") else "a stage 0 per seed")
        + f", {cfg['budget']['steps']} steps per variant."
        + stage0_warning(cfg.get("stage0_weights", {})),
        "",
    ]
    rows, ok = targets(results, mode)
    parts += rows + [""]
    name, held_out = frozen_llm_held_out(results)
    if name:
        parts += [
            f"Best frozen-LLM held-out accuracy (relation, compare_count; answers ranked as in InstructBLIP's "
            f"held-out protocol): **{held_out:.3f}** ({name}); target ≥ 0.70. It is read through one stage-0 LM, "
            "the suite's; which LM is drawn moves held-out more than any recipe does"
            + (" (next section)." if (out / "held_out" / "results.json").exists() else "."),
            "",
        ]
    parts += held_out_section(out / "held_out")
    parts += probe_section(results)
    for n in results:
        parts += [(out / n / "table.md").read_text(), f"![{n}]({links}{n}/plot.png)", ""]
    if history:
        parts.append(f"How the regime and the suite came to be, with dated entries: {history_link(path)}.")
    text = "\n".join(parts)
    (path or out / "REPORT.md").write_text(text)
    return text


def partial_probes(out: Path) -> list[str]:
    ledger = Ledger(out / "jobs.jsonl")
    stage0 = (on_stage0(out, ledger.of_kind("stage0_probes")) or [{}])[-1]
    jobs = on_stage0(out, ledger.of_kind("job"))
    variants = {f"{r['comparison']}/{r['variant']}": r["probe"] for r in jobs if r.get("probe")}
    return ["### Probes of the finished jobs", "", *probe_lines(stage0, variants)]


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="Tables from finished jobs of a stopped run (no training)")
    p.add_argument("results", help="a suite's results folder (its ledger, jobs.jsonl, lists the finished jobs)")
    p.add_argument("--title", default="Finished jobs of a stopped run")
    p.add_argument("--intro", default="", help="a paragraph above the tables")
    p.add_argument("--out", help="write a report file here (with the history section) instead of printing")
    args = p.parse_args()
    lines = partial(Path(args.results), args.title) + partial_probes(Path(args.results))
    if args.intro:
        lines[1:1] = ["", args.intro]
    if args.out:
        history = f"How the regime and the suite came to be: {history_link(Path(args.out))}."
        Path(args.out).write_text("\n".join(["# Ablation report", "", *lines, "", history]))
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
