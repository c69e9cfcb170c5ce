"""Held-out accuracy over several stage-0 LMs, read three ways: where a frozen LLM's transfer is lost.

The suite shares one stage-0 LM, and on one unchanged recipe three LMs gave held-out 0.54-0.67
(HISTORY.md, "What caps held-out is the transfer through the connector, not only the LM"): one LM is
one draw. This comparison puts the frozen-LLM recipe of `stage1/qformer_no_stage1` (plain Q-Former,
K = 8, ViT and LLM frozen, stage 2 then instruction tuning) on an axis over `--lms` stage-0 LMs
(`ablations.plan.over_lms`: seeds 0..N-1, each beside the suite's seed-0 ViT), in two arms (without
and with hand-off distillation), and each model answers the held-out families (relation,
compare_count; test split, answers ranked) three ways:

- `direct`: from the image's soft tokens, the suite's held-out score (InstructBLIP's transfer);
- `words`: through its own caption: the model describes the image, its LLM ranks from that text
  (`lab.eval.through_words`);
- `caption`: its LLM from the true caption, the ceiling of the LM itself.

`words` close to `caption` and far above `direct` says the image's content crosses the connector
and the loss is in handing it to the LLM as soft tokens.

`python -m ablations held_out [--quick] [--lms N] [--workers N] [--out DIR]`: the suite's runner,
ledger and stage 0 (the LMs of seeds 1..N-1 are trained beside seed 0's when a job needs them), so
it plans (`--plan`), resumes and reports like any comparison. Not part of `all`: its LMs are stage
0 the suite does not otherwise need.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ablations import stage1
from ablations.plan import Comparison, Variant, cli, over_lms
from ablations.runner import run_one
from ablations.stage1 import HANDOFF
from ablations.sweep_table import WAYS, gap_table, held_out, paired, summary, table
from lab.data.tasks import HELD_OUT

RECIPE = ("stage1", "qformer_no_stage1")  # (comparison, variant): its recipe, unchanged
# The arms: hand-off distillation (`lab.train.handoff`) per stage of the recipe, by name, at the suite's
# weight (`ablations.stage1.HANDOFF`, chosen on val). Tried on val through this sweep's LMs and not adopted
# (HISTORY.md, "Hand-off distillation: a larger weight ..."): weight 300, and distilling in stage 2
# (captions) as well: {"stage2": HANDOFF, ...}.
ARMS: dict[str, dict[str, float]] = {"plain": {}, "handoff": {"instruct": HANDOFF}}
GAP_SAMPLES = 128  # test samples per family for the hand-off gap (`lab.eval.handoff_gap`)


def variants(quick: bool, lms: int) -> list[Variant]:
    """The recipe in each arm (an arm's stages add hand-off distillation at their weight), on `lms` LMs."""
    recipe = next(v for v in stage1.variants(quick) if v.name == RECIPE[1])
    alike = {"group": "sweep", "probe": False, "shortfall": None, "measure": measure}
    arms = [dataclasses.replace(stage1.with_handoff(recipe, ARMS[arm]), name=arm, **alike) for arm in ARMS]
    return over_lms(arms, lms)


def measure(plan, model, final: Path, seed: int) -> dict:
    """A sweep job's measurement (`Variant.measure`): held-in, held-out read three ways, and the hand-off
    gap per family, held-out ones included (does a fit on held-in carry over?). Test split."""
    import torch

    from lab.data import SceneDataConfig, SceneTasks, load_tokenizer
    from lab.eval import evaluate_scenes, handoff_gap
    from lab.rundir import RunDir

    tok = load_tokenizer(final)
    data = SceneDataConfig.from_dict(RunDir(final).train_config()["data"])
    torch.manual_seed(seed)
    n = plan.budget.per_family
    res = evaluate_scenes(model, tok, data, per_family=n, split="test", caption_samples=64, words=True)
    ways = {"direct": res["acc_ranked"], "words": res["acc_words"], "caption": res["acc_from_caption"]}
    gap = {
        f: handoff_gap(model, tok, [SceneTasks(data.replace(families=[f]), "test")[i] for i in range(GAP_SAMPLES)])
        for f in (*data.families, *HELD_OUT)
    }
    metrics = metrics_of(res["held_in_acc"], ways, res["caption_slot_recall"], data)
    return {"metrics": metrics, **ways, "handoff_gap": gap}


def metrics_of(held_in: float, ways: dict[str, dict[str, float]], slot_recall: float, data) -> dict[str, float]:
    """A sweep job's numbers as the suite's job metrics: held-out per way averaged over the families
    (`held_out_ranked_acc` is `direct`, the suite's held-out score), and the chance levels of `data`."""
    from ablations.evaluate import chance

    return {
        "held_in_acc": held_in,
        "held_out_ranked_acc": held_out(ways, "direct"),
        "held_out_words_acc": held_out(ways, "words"),
        "held_out_caption_acc": held_out(ways, "caption"),
        "caption_slot_recall": slot_recall,
        **{f"chance_{f}": c for f, c in chance(data).items()},
    }


def rows(runs: list[dict], arm: str) -> list[dict]:
    """One arm's jobs as the sweep tables' rows (`ablations.sweep_table`), in LM order."""
    mine = sorted((r for r in runs if r["variant"].rsplit("_lm", 1)[0] == arm), key=lambda r: r["stage0_seeds"]["lm"])
    return [
        {
            "lm_seed": r["stage0_seeds"]["lm"],
            "arm": arm,
            "handoff_weight": ARMS[arm].get("instruct", 0.0),
            "handoff_stage2": ARMS[arm].get("stage2", 0.0),
            "held_in_acc": r["metrics"]["held_in_acc"],
            **{w: r[w] for w in WAYS},
            "caption_slot_recall": r["metrics"]["caption_slot_recall"],
            "handoff_gap": r.get("handoff_gap"),
            "stage0_weights": r["stage0_weights"],
            "wall_s": r["wall_s"],
        }
        for r in mine
    ]


def details(runs: list[dict]) -> tuple[dict, str]:
    """The sweep's tables (`Comparison.details`): per LM, each arm, the arms paired LM by LM."""
    arms = {arm: rows(runs, arm) for arm in ARMS}
    plain = arms["plain"]
    tried = {
        arm: {"stages": ARMS[arm], "weight": ARMS[arm].get("instruct", 0.0), "records": arms[arm],
              "summary": summary(arms[arm]), "paired": paired(plain, arms[arm])}
        for arm in ARMS
        if arm != "plain"
    }  # fmt: skip
    sweep = {
        "recipe": "/".join(RECIPE),
        "lms": len(plain),
        "records": plain,
        "summary": summary(plain),
        **tried,  # "handoff"
        "gap_table": gap_table(arms),
    }
    text = table(plain) + "".join(
        f"\nWith hand-off distillation (weight {HANDOFF:g}) in {' and '.join(ARMS[arm])}:\n\n" + table(arms[arm])
        for arm in tried
    )
    return {"sweep": sweep}, text


def no_claims(runs: list[dict]) -> list[dict]:
    """The sweep decides no claim of a paper: it measures where held-out transfer is lost (its tables)."""
    return []


def comparison(quick: bool, lms: int = 5) -> Comparison:
    return Comparison(
        "held_out",
        variants(quick, lms),
        paper={"InstructBLIP": "held-out transfer through a frozen LLM (no number: this measures where it is lost)"},
        verdicts=no_claims,
        extra_metrics=("held_out_words_acc", "held_out_caption_acc"),
        details=details,
    )


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)  # this comparison's own flag; the rest are the suite's
    own.add_argument("--lms", type=int, default=5, help="stage-0 LMs (seeds 0..N-1)")
    known, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.lms < 1:
        raise SystemExit(f"held_out: --lms must be at least 1, got {known.lms}")
    args = cli(__doc__, rest)
    if args.seeds or args.stage0_per_seed:
        raise SystemExit("held_out: --seeds and --stage0-per-seed do not apply; each LM trains seed 0 (--lms N)")
    args.seeds = 1
    return run_one(comparison(args.quick, known.lms), args)


if __name__ == "__main__":
    sys.exit(main())
