"""The held-out sweep's tables (`ablations.held_out`): one row per stage-0 LM, held-out read three ways,
and the hand-off gap. Read by the sweep when it writes its results and by the report when it shows them,
so the report never imports the sweep itself."""

from __future__ import annotations

import math

from lab.data.tasks import HELD_OUT

WAYS = {"direct": "from the image (soft tokens)", "words": "through its caption", "caption": "from the true caption"}


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def held_out(rec: dict, way: str) -> float:
    return sum(rec[way][f] for f in HELD_OUT) / len(HELD_OUT)


def table(records: list[dict]) -> str:
    """One row per LM and a mean ± s.d. row: held-in, then each held-out family three ways."""
    cols = [f"{f} {w}" for f in HELD_OUT for w in WAYS] + [f"held-out {w}" for w in WAYS]
    head = "| stage-0 LM | held-in | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]

    def cells(r: dict) -> list[float]:
        return [r["held_in_acc"], *(r[w][f] for f in HELD_OUT for w in WAYS), *(held_out(r, w) for w in WAYS)]

    rows = [cells(r) for r in records]
    for r, row in zip(records, rows, strict=True):
        lines.append(f"| seed {r['lm_seed']} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
    stats = [mean_sd(list(col)) for col in zip(*rows, strict=True)]
    shown = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in stats)
    lines.append(f"| **mean ± s.d. ({len(records)} LMs)** | {shown} |")
    return "\n".join(lines) + "\n"


def gap_table(arms: dict[str, list[dict]]) -> str:
    """The hand-off gap at the LLM's last layer (`lab.eval.handoff_gap`) per LM and arm: the mean over the
    held-in families beside each held-out one, with held-out accuracy from the image. Records from before
    the gap was measured are left out; empty when none has it."""
    cols = ["gap, held-in mean", *(f"gap, {f}" for f in HELD_OUT), "held-out direct"]
    lines = ["| arm | stage-0 LM | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for arm, records in arms.items():
        for r in records:
            gap = r.get("handoff_gap")
            if not gap:
                continue
            held_in = [g[-1] for f, g in gap.items() if f not in HELD_OUT]
            row = [sum(held_in) / len(held_in), *(gap[f][-1] for f in HELD_OUT), held_out(r, "direct")]
            lines.append(f"| {arm} | seed {r['lm_seed']} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def summary(records: list[dict]) -> dict:
    return {w: mean_sd([held_out(r, w) for r in records]) for w in WAYS}


def paired(base: list[dict], tried: list[dict]) -> dict:
    """An arm minus the plain recipe, LM by LM: mean and standard error of the difference in held-in
    and in held-out from the image (direct)."""
    out = {}
    for name, get in (("held_in", lambda r: r["held_in_acc"]), ("held_out_direct", lambda r: held_out(r, "direct"))):
        m, sd = mean_sd([get(b) - get(t) for b, t in zip(tried, base, strict=True)])
        out[name] = (m, sd / math.sqrt(len(base)))
    return out
