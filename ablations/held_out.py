"""Held-out accuracy over several stage-0 LMs, read three ways: where a frozen LLM's transfer is lost.

The suite shares one stage-0 LM, and on one unchanged recipe three LMs gave held-out 0.54-0.67
(HISTORY.md, "What caps held-out is the transfer through the connector, not only the LM"): one LM is
one draw. Here the frozen-LLM recipe of `stage1/qformer_no_stage1`
(plain Q-Former, K = 8, ViT and LLM frozen, stage 2 then instruction tuning) runs on `--lms` LMs
(seeds 0..N-1; every one beside the seed-0 ViT), and each model answers the held-out families
(relation, compare_count; test split, answers ranked) three ways:

- `direct`: from the image's soft tokens, the suite's held-out score (InstructBLIP's transfer);
- `words`: through its own caption: the model describes the image, its LLM ranks from that text
  (`lab.eval.through_words`);
- `caption`: its LLM from the true caption, the ceiling of the LM itself.

`words` close to `caption` and far above `direct` says the image's content crosses the connector
and the loss is in handing it to the LLM as soft tokens.

`python -m ablations.held_out [--quick] [--lms N] [--workers N] [--out DIR]`. Resumable: finished LMs
are kept in `OUT/jobs.jsonl` (`ablations.ledger`); stage 0 and run folders are scratch (`OUT/_runs`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from ablations.ledger import Ledger, weights_digest
from ablations.plan import PROTOCOL, ROOT, Variant, cli, key_of
from ablations.pool import call, finished, open_pool
from ablations.runner import Runner, git_commit
from ablations.stage1 import HANDOFF
from ablations.sweep_table import gap_table, paired, summary, table
from lab.data.tasks import HELD_OUT

RECIPE = ("stage1", "qformer_no_stage1")  # (comparison, variant): its recipe, unchanged
# The arms: hand-off distillation (`lab.train.handoff`) per stage of the recipe, by name, at the suite's
# weight (`ablations.stage1.HANDOFF`, chosen on val). Tried on val through this sweep's LMs and not adopted
# (HISTORY.md, "Hand-off distillation: a larger weight ..."): weight 300, and distilling in stage 2
# (captions) as well: {"stage2": HANDOFF, ...}.
ARMS: dict[str, dict[str, float]] = {"plain": {}, "handoff": {"instruct": HANDOFF}}
GAP_SAMPLES = 128  # test samples per family for the hand-off gap (`lab.eval.handoff_gap`)


class Sweep(Runner):
    """The suite's runner with one stage 0 per LM seed (the ViT always seed 0's), kept in the scratch
    folder: the ledger keeps each finished LM's result and the digest of the weights it used."""

    def stage0_dir(self, seed: int) -> Path:
        return self.work / "stage0" / f"seed{seed}"

    def variant(self, arm: str = "plain") -> Variant:
        """The recipe; an arm's stages add hand-off distillation at their weight."""
        from ablations import stage1

        v = next(v for v in stage1.variants(self.args.quick) if v.name == RECIPE[1])
        return stage1.with_handoff(v, ARMS[arm])

    def key(self, lm: int, arm: str = "plain") -> str:
        parts = [self.stage0_key(0, "vision"), self.stage0_key(lm, "lm")]
        return key_of([PROTOCOL, "held_out", parts, self.plan(self.variant(arm), 0), self.budget.per_family])

    def lm_job(self, lm: int, arm: str = "plain") -> dict:
        """The recipe (seed 0, one arm) on the LM of seed `lm`, scored on test: the ledger record."""
        import torch

        import lab
        from lab.data import SceneDataConfig, SceneTasks, load_tokenizer
        from lab.eval import evaluate_scenes, handoff_gap
        from lab.rundir import RunDir

        t0 = time.perf_counter()
        stage0 = {"vision": self.stage0_dir(0) / "vision", "lm": self.stage0_dir(lm) / "lm"}
        folder = self.work / f"lm{lm}_{arm}"
        v = self.variant(arm)
        outputs, _ = self.train_recipe(v, 0, folder, stage0)
        final = outputs[v.recipe[-1].stage]
        model, tok = lab.load_pretrained(final).to(self.args.device), load_tokenizer(final)
        data = SceneDataConfig.from_dict(RunDir(final).train_config()["data"])
        torch.manual_seed(0)
        n = self.budget.per_family
        res = evaluate_scenes(model, tok, data, per_family=n, split="test", caption_samples=64, words=True)
        gap = {  # the hand-off gap per family, held-out ones included: does a fit on held-in carry over?
            f: handoff_gap(model, tok, [SceneTasks(data.replace(families=[f]), "test")[i] for i in range(GAP_SAMPLES)])
            for f in (*data.families, *HELD_OUT)
        }
        rec = {
            "kind": "held_out",
            "lm_seed": lm,
            "arm": arm,
            "handoff_weight": ARMS[arm].get("instruct", 0.0),
            "handoff_stage2": ARMS[arm].get("stage2", 0.0),
            "held_in_acc": res["held_in_acc"],
            "direct": res["acc_ranked"],
            "words": res["acc_words"],
            "caption": res["acc_from_caption"],
            "caption_slot_recall": res["caption_slot_recall"],
            "handoff_gap": gap,
            "per_family": n,
            "stage0_weights": {part: weights_digest(path) for part, path in stage0.items()},
            "wall_s": time.perf_counter() - t0,
        }
        shutil.rmtree(folder, ignore_errors=True)  # scratch: the record is the result
        return rec

    def keys(self, lms: int) -> dict[tuple[int, str], str]:
        """{(LM seed, arm): fingerprint} of every job of the sweep."""
        return {(lm, arm): self.key(lm, arm) for arm in ARMS for lm in range(lms)}

    def sweep_plan(self, lms: int) -> list[str]:
        """`--plan`: each (LM, arm) job, whether the ledger holds it; trains nothing."""
        ledger = Ledger(self.out / "jobs.jsonl")
        keys = self.keys(lms)
        state = {k: "in the ledger" if k in ledger else "trains" for k in keys.values()}
        lines = [f"LM {lm}, arm {arm} [{k}]: {state[k]}" for (lm, arm), k in keys.items()]
        return lines + [f"ledger {ledger.path}: {sum(k in ledger for k in keys.values())} of {len(keys)} jobs found"]

    def run(self, lms: int) -> dict[str, list[dict]]:
        """Every (LM, arm) the ledger lacks: stage 0 first (the ViT, then the LMs), then the recipes.
        Returns each arm's records (arm -> one record per LM)."""
        ledger = Ledger(self.out / "jobs.jsonl")
        keys = self.keys(lms)
        todo = [job for job, key in keys.items() if key not in ledger]
        with open_pool(self.args.workers) as pool:
            if todo:
                lm_parts = [(self, "stage0", (lm, "lm")) for lm in sorted({lm for lm, _ in todo})]
                list(pool.map(call, [(self, "stage0", (0, "vision")), *lm_parts]))
            for rec in finished(pool, call, [(self, "lm_job", job) for job in todo]):
                ledger.add({**rec, "fingerprint": keys[rec["lm_seed"], rec["arm"]]})
                print(f"held-out: LM {rec['lm_seed']}, arm {rec['arm']}: {rec['wall_s']:.0f} s", flush=True)
        # records of the first two arms predate the arm's name in the record: the key finds them
        return {arm: [{**ledger[keys[lm, arm]], "arm": arm} for lm in range(lms)] for arm in ARMS}


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)  # this script's own flag; the rest are the suite's
    own.add_argument("--lms", type=int, default=5, help="stage-0 LMs (seeds 0..N-1)")
    known, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    lms = known.lms
    if lms < 1:
        raise SystemExit(f"held_out: --lms must be at least 1, got {lms}")
    args = cli(__doc__, rest)
    if args.seeds or args.config or args.stage0_per_seed:
        raise SystemExit("held_out: --seeds, --config and --stage0-per-seed do not apply; --lms sets the LMs")
    results = ROOT / "ablations" / "results"
    if args.out is None:
        args.out = str(results / ("quick" if args.quick else "") / "held_out")
    sweep = Sweep(args)
    if args.plan:
        print("\n".join(sweep.sweep_plan(lms)))
        return 0
    arms = sweep.run(lms)
    records = arms["plain"]
    tried = {
        arm: {
            "stages": ARMS[arm],
            "weight": ARMS[arm].get("instruct", 0.0),
            "records": arms[arm],
            "summary": summary(arms[arm]),
            "paired": paired(records, arms[arm]),
        }
        for arm in ARMS
        if arm != "plain"
    }
    result = {
        "gap_table": gap_table(arms),
        "recipe": "/".join(RECIPE),
        "lms": lms,
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "records": records,
        "summary": summary(records),
        **tried,  # "handoff"
        "wall_s": sum(r["wall_s"] for rs in arms.values() for r in rs),
        "git_commit": git_commit(),
    }
    (sweep.out / "results.json").write_text(json.dumps(result, indent=2))
    text = table(records) + "".join(
        f"\nWith hand-off distillation (weight {HANDOFF:g}) in {' and '.join(ARMS[arm])}:\n\n" + table(arms[arm])
        for arm in tried
    )
    (sweep.out / "table.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
