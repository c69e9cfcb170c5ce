"""The report's figures. Each plots the metric its verdicts use: held-in exact match, held-out scored by
ranking the closed answer sets (InstructBLIP's protocol, what the held-out verdicts read), and paired
differences with their 95 % intervals (Student's t over seeds, `ablations.verdicts`)."""

from __future__ import annotations

from pathlib import Path

from ablations.verdicts import MIN_EFFECT

# The metrics a comparison's bars show: what its verdicts are decided on.
BAR_METRICS = {"held_in_acc": "held-in (exact match)", "held_out_ranked_acc": "held-out (answers ranked)"}
COLOURS = {"reproduced": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:gray"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result: dict, path: Path) -> None:
    """One comparison: each variant's mean ± s.d. over seeds of the metrics its verdicts use."""
    plt = _pyplot()
    names = list(result["summary"])
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.5))
    width = 0.38
    for j, (metric, label) in enumerate(BAR_METRICS.items()):
        stats = [result["summary"][n].get(metric, {"mean": float("nan"), "std": 0.0}) for n in names]
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        ax.bar(xs, [s["mean"] for s in stats], width, yerr=[s["std"] for s in stats], capsize=3, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (test)")
    ax.set_title(f"{result['comparison']} ({result['config']['mode']}, {result['config']['budget']['seeds']} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def forest(rows: list[dict], path: Path, title: str) -> None:
    """Every claim's paired difference (a − b, on its own metric) with its 95 % interval, coloured by
    verdict, beside the ±MIN_EFFECT band inside which a difference does not count as an effect."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(rows) + 1.2))
    ys = list(range(len(rows)))[::-1]
    ax.axvspan(-MIN_EFFECT, MIN_EFFECT, color="0.9", label=f"±{MIN_EFFECT} (no effect)")
    ax.axvline(0, color="0.5", lw=0.8)
    for y, r in zip(ys, rows, strict=True):
        half = r["ci95"] if r["ci95"] is not None else 0.0
        colour = COLOURS.get(r["verdict"], "black")
        ax.errorbar(r["diff_mean"], y, xerr=half, fmt="o", color=colour, capsize=3, ms=4)
    ax.set_yticks(ys, [f"{r['comparison']}: {r['claim']}"[:70] for r in rows], fontsize=7)
    ax.set_xlabel("paired difference a − b (accuracy): mean, 95 % interval")
    ax.set_title(title, fontsize=9)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in COLOURS.items()]
    ax.legend(handles=[*handles, ax.patches[0]], fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
