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


EQUIVALENCE = 0.03  # "no difference" means the whole 95 % interval lies within 3 points of held-in accuracy
MIN_EFFECT = 0.02  # the smallest difference a directional claim ("a helps") counts as an effect
# Two-sided 95 % quantiles of Student's t, t(0.975; df), for df = 1..30 (any table of the t distribution).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
T975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """t(0.975; df): the half-width of a 95 % interval of a mean, in standard errors, from df = n − 1
    degrees of freedom. Beyond the table, the Cornish-Fisher expansion (within 0.001 of it there)."""
    if df < 1:
        return math.inf
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def decide(mean: float, se: float, n: int, expected: int) -> tuple[str, str]:
    """(verdict, kind) for a paired mean difference with standard error `se` over `n` seeds; the 95 %
    interval is mean ± t(0.975; n − 1) · se (see `verdict_row`)."""
    half = t95(n - 1) * se
    clear = abs(mean) > max(half, MIN_EFFECT)
    if n < 2:  # one seed has no spread to judge a difference against
        return "inconclusive", ""
    if expected == 0:
        tight = abs(mean) + half <= EQUIVALENCE
        return ("contradicted" if clear else "reproduced" if tight else "inconclusive"), ""
    if clear:
        agrees = (mean > 0) == (expected > 0)
        return ("reproduced", "") if agrees else ("contradicted", "opposite sign")
    if expected * mean + half < MIN_EFFECT:
        return "contradicted", "no effect"
    return "inconclusive", ""


def seeds_to_decide(mean: float, sd: float, n: int, expected: int, most: int = 200) -> int | None:
    """How many seeds would decide a claim whose paired differences keep this mean and spread: the
    smallest count (above `n`) at which `decide` is no longer inconclusive; None when none up to
    `most` would (a mean on a threshold stays undecided however narrow the interval)."""
    for m in range(max(n + 1, 2), most + 1):
        if decide(mean, sd / math.sqrt(m), m, expected)[0] != "inconclusive":
            return m
    return None


def verdict_row(
    diffs: list[float], expected: int, label: str, metric: str, a: str, b: str, reason: str, cross_device: int = 0
) -> dict:
    """The verdict on per-seed differences a − b (see `paired`), as a report row.

    expected=+1: the paper says a > b; -1: a < b; 0: no difference expected (a control, or a claim
    of "no need"). The 95 % interval of the mean difference is mean ± t(0.975; seeds − 1) · s.e.
    (Student's t: with 5 seeds, 2.78 s.e.). Reproduced when the interval excludes zero on the
    expected side and the mean exceeds MIN_EFFECT. Contradicted when it is that clear the other way,
    or when the interval shows that any effect in the paper's direction is smaller than MIN_EFFECT
    (a measured absence, `kind` "no effect"). "No difference" must be shown, not merely not refuted:
    it holds when the whole interval lies within ±EQUIVALENCE. What is neither, or rests on one seed,
    is inconclusive, and says how many seeds would decide an effect of its measured size."""
    d = mean_std(diffs)
    se = d["std"] / math.sqrt(max(1, d["n"]))
    verdict, kind = decide(d["mean"], se, d["n"], expected)
    need = seeds_to_decide(d["mean"], d["std"], d["n"], expected) if verdict == "inconclusive" and d["n"] > 1 else None
    return {
        "claim": label,
        "metric": metric,
        "a": a,
        "b": b,
        "diff_mean": d["mean"],
        "diff_se": se,
        "ci95": t95(d["n"] - 1) * se if d["n"] > 1 else None,
        "seeds": d["n"],
        "expected": expected,
        "verdict": verdict,
        "kind": kind,
        "seeds_to_decide": need,
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
