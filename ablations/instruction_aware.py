"""InstructBLIP's instruction-aware queries vs BLIP-2's plain queries, a K sweep, a 1-object control.

A query budget smaller than the scene (K = 2 queries, 2-4 objects), questions that name one
object: reading the instruction should let the queries fetch the named object. The mechanism
check: as K grows the plain queries can carry the whole scene, so the gap should close. With one
object per image there is nothing to choose, so the gap should vanish.

`python -m ablations.instruction_aware [--quick] [--seeds N] [--workers N] [--out DIR]`
"""

from __future__ import annotations

import sys

from ablations.plan import Comparison, Step, Variant, cli
from ablations.runner import run_one
from ablations.verdicts import by_seed, cross_device, paired, verdict_row

PAPER = {
    "instruction-aware queries help held-in": "InstructBLIP Table 2 (FlanT5-XL): held-in avg 94.1 → 89.8 without",
    "instruction-aware queries help held-out": "InstructBLIP Table 2: ScienceQA 70.4 → 63.4 without",
    "mechanism: the gap closes as K grows (K=2 vs K=8)": "(our check: the papers use K = 32 throughout)",
    "control: no gap with one object per image": "(our control; the papers do not run it)",
}
FROZEN = {"model.freeze_vision": True, "model.freeze_llm": True}
MULTI = {"data.scene.min_objects": 2, "data.scene.max_objects": 4}
CONTROL = {"data.scene.min_objects": 1, "data.scene.max_objects": 1}
CONTROL_EVAL = {"scene.min_objects": 1, "scene.max_objects": 1}
MAIN_K = 2
# A Q-Former from scratch into a frozen LLM finds the named object late: at lr 2e-3, aware K=2 on
# 2-4 objects reaches 0.53 held-in after 600 steps and 0.94 after 1,800 (val, seed 0). The quick
# budget runs at 5e-3 (1e-2 fails at 0.44) for 2x the suite's steps (1,200): with 600, aware K=2 /
# K=8 read 0.55 / 0.66 on val (seeds 0-2), with 900 0.65 / 0.82, with 1,200 0.74 / 0.91 (K=8: seeds
# 0-1). The full budget trains this comparison 1.5x the suite's steps (1,800) at 2e-3. Both arms of
# every pair share rate and steps.
LR = {"quick": 5e-3, "full": 2e-3}
STEPS = {"quick": 2.0, "full": 1.5}


def _q(aware: bool, k: int, quick: bool) -> dict:
    return {
        **FROZEN,
        "optim.lr": LR["quick" if quick else "full"],
        "model.connector.qformer.instruction_aware": aware,
        "model.connector.qformer.num_query_tokens": k,
    }


def variants(quick: bool) -> list[Variant]:
    out, steps = [], STEPS["quick" if quick else "full"]
    for aware in (True, False):
        name = "aware" if aware else "plain"
        main = Step("instruct", {**_q(aware, MAIN_K, quick), **MULTI}, steps=steps)
        # plain queries at K=2 fall short because two queries cannot carry 2-4 objects: the effect
        # measured. Their witness is the same model on scenes that fit its budget (one object).
        shortfall = None if aware else ("plain queries under a tight query budget", f"{name}_K{MAIN_K}_1obj")
        out.append(Variant(f"{name}_K{MAIN_K}", [main], probe=True, shortfall=shortfall))
        control = Step("instruct", {**_q(aware, MAIN_K, quick), **CONTROL}, steps=steps)
        out.append(Variant(f"{name}_K{MAIN_K}_1obj", [control], CONTROL_EVAL, group="control"))
        for k in (8,) if quick else (4, 8):
            sweep = Step("instruct", {**_q(aware, k, quick), **MULTI}, steps=steps)
            out.append(Variant(f"{name}_K{k}", [sweep], group="sweep"))
    return out


def gap_closes(runs, small: int, large: int, label: str, reason: str) -> dict:
    """Per seed: (aware − plain) at K=small minus the same at K=large; reproduced when > 2 s.e."""
    names = [f"aware_K{small}", f"plain_K{small}", f"aware_K{large}", f"plain_K{large}"]
    diffs = [
        (s[names[0]] - s[names[1]]) - (s[names[2]] - s[names[3]])
        for s in by_seed(runs, "held_in_acc").values()
        if all(n in s for n in names)
    ]
    mixed = cross_device(runs, tuple(names))
    return verdict_row(diffs, +1, label, "held_in_acc gap", f"gap@K{small}", f"gap@K{large}", reason, mixed)


def verdicts(runs):
    why = "plain queries already carry what the questions ask at this budget"
    a, b = f"aware_K{MAIN_K}", f"plain_K{MAIN_K}"
    return [
        paired(runs, a, b, "held_in_acc", +1, "instruction-aware queries help held-in", why),
        paired(runs, a, b, "held_out_ranked_acc", +1, "instruction-aware queries help held-out", why),
        gap_closes(runs, MAIN_K, 8, "mechanism: the gap closes as K grows (K=2 vs K=8)", why),
        paired(
            runs,
            f"{a}_1obj",
            f"{b}_1obj",
            "held_in_acc",
            0,
            "control: no gap with one object per image",
            "the control shows a gap: an effect not tied to choosing among objects "
            "(e.g. extra Q-Former parameters for the text)",
        ),
    ]


def comparison(quick: bool) -> Comparison:
    return Comparison("instruction_aware", variants(quick), PAPER, verdicts)


def main(argv: list[str] | None = None) -> int:
    args = cli(__doc__, argv)
    return run_one(comparison(args.quick), args)


if __name__ == "__main__":
    sys.exit(main())
