"""Verdicts: a paper's claim against paired (same seed, same data) differences between variants."""

from __future__ import annotations

import math


def mean_std(xs: list[float]) -> dict:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "n": len(xs)}


EQUIVALENCE = 0.03  # "no difference" means within 3 points of held-in accuracy, at 2 s.e.
MIN_EFFECT = 0.02  # the smallest difference a directional claim ("a helps") counts as an effect


def verdict_row(
    diffs: list[float], expected: int, label: str, metric: str, a: str, b: str, reason: str, cross_device: int = 0
) -> dict:
    """The verdict on per-seed differences a − b (see `paired`), as a report row.

    expected=+1: the paper says a > b; -1: a < b; 0: no difference expected (a control, or a claim
    of "no need"). Reproduced when the mean difference has the expected sign and exceeds twice its
    standard error (and MIN_EFFECT). Contradicted when it is that clear the other way, or when the
    band mean ± 2 s.e. shows that any effect in the paper's direction is smaller than MIN_EFFECT
    (a measured absence, `kind` "no effect"). "No difference" must be shown, not merely not refuted:
    it holds when the whole band lies within ±EQUIVALENCE. What is neither, or rests on one seed, is
    inconclusive."""
    d = mean_std(diffs)
    se = d["std"] / math.sqrt(max(1, d["n"]))
    clear = abs(d["mean"]) > max(2 * se, MIN_EFFECT)
    kind = ""
    if d["n"] < 2:  # one seed has no spread to judge a difference against
        verdict = "inconclusive"
    elif expected == 0:
        tight = abs(d["mean"]) + 2 * se <= EQUIVALENCE
        verdict = "contradicted" if clear else "reproduced" if tight else "inconclusive"
    elif clear:
        verdict = "reproduced" if (d["mean"] > 0) == (expected > 0) else "contradicted"
        kind = "" if verdict == "reproduced" else "opposite sign"
    elif expected * d["mean"] + 2 * se < MIN_EFFECT:
        verdict, kind = "contradicted", "no effect"
    else:
        verdict = "inconclusive"
    return {
        "claim": label,
        "metric": metric,
        "a": a,
        "b": b,
        "diff_mean": d["mean"],
        "diff_se": se,
        "seeds": d["n"],
        "verdict": verdict,
        "kind": kind,
        "note": "" if verdict == "reproduced" else reason,
        "cross_device": cross_device,
    }


def by_seed(runs: list[dict], metric: str) -> dict[int, dict[str, float]]:
    """{seed: {variant: metric}}: the pairing every verdict uses (same seed, same data, same stage 0)."""
    out: dict[int, dict[str, float]] = {}
    for r in runs:
        if metric in r["metrics"]:  # runs evaluated before a metric existed are left out, not guessed
            out.setdefault(r["seed"], {})[r["variant"]] = r["metrics"][metric]
    return out


def paired(runs: list[dict], a: str, b: str, metric: str, expected: int, label: str, reason_if_not: str) -> dict:
    """Compare variant a against b on `metric`, paired by seed (rule: `verdict_row`), counting the
    seeds whose two runs trained on different devices (`cross_device`), which the report then says."""
    diffs = [s[a] - s[b] for s in by_seed(runs, metric).values() if a in s and b in s]
    return verdict_row(diffs, expected, label, metric, a, b, reason_if_not, cross_device(runs, (a, b)))


def cross_device(runs: list[dict], variants: tuple[str, ...]) -> int:
    """How many seeds have their runs of `variants` on more than one device (a suite finished
    partly on a lent GPU): such a seed's difference also holds the device's."""
    devices: dict[int, set[str]] = {}
    for r in runs:
        if r["variant"] in variants:
            devices.setdefault(r["seed"], set()).add(r.get("device", "cpu"))
    return sum(len(d) > 1 for d in devices.values())
