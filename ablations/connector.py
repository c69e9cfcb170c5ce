"""Q-Former or Perceiver Resampler with K tokens vs linear and MLP projection of all patch
features (LLaVA, MM1, Flamingo, Idefics2).

Every connector gets the same recipe: the stage-0 ViT frozen, the connector and the stage-0 LLM
tuned on the instruction mix (LLaVA-1.5's stage 2, Prismatic's and MM1's connector comparisons).
Measured on val (seed 0, 600 steps, linear connector): 0.55 held-in with the LLM frozen, 0.73 with
it tuned. A frozen 4-layer LLM reads visual tokens poorly; the frozen-LLM recipes (BLIP-2,
InstructBLIP) are compared in `instruction_aware`, `stage1` and `frozen_encoders`.

`python -m ablations.connector [--quick] [--seeds N] [--workers N] [--out DIR] [--config YAML]`
"""

from __future__ import annotations

import sys

from ablations.plan import MLP_CONNECTOR, Comparison, Step, Variant, cli
from ablations.runner import run_one
from ablations.verdicts import paired

PAPER = {
    "MLP beats linear projection": "LLaVA-1.5: linear → MLP, GQA 46.8 → 47.3 (small gain)",
    "more visual tokens help (16 vs 4 queries)": "MM1: the number of visual tokens matters more "
    "than the connector type",
    "a perceiver resampler matches an MLP with fewer tokens (16 vs 37)": "Flamingo introduced the "
    "resampler; Idefics2 (2024): a 64-latent perceiver resampler keeps performance while cutting the "
    "visual tokens",
    "a Q-Former matches a linear projection at an equal token count (37)": "MM1 (2024): once the number of "
    "visual tokens and the resolution are fixed, the type of vision-language connector matters little",
    "a linear projection keeps position that a Q-Former loses (position questions, 37 tokens each)": "Honeybee "
    "(CVPR 2024): a projector must preserve the local context of visual features for spatial understanding; "
    "resampler-style queries (a Q-Former's) lose it, a linear or convolutional projector keeps it",
}
EQUAL_K = 37  # the linear connector's tokens: 6 × 6 patches and the CLS token (REGIME's 48 px, patch 8)
RECIPE = {"model.freeze_vision": True, "model.freeze_llm": False}


def variants(quick: bool) -> list[Variant]:
    # Full mode only, K = EQUAL_K: the quick suite is over its time budget, and its stage 0 is not
    # committed, so a quick job added now would start from another stage 0 than its pair.
    ks = (4, 16) if quick else (4, 8, 16, EQUAL_K)
    out = [
        Variant(
            f"qformer_K{k}",
            [
                Step(
                    "instruct",
                    {
                        **RECIPE,
                        "model.connector.qformer.num_query_tokens": k,
                        "model.connector.qformer.instruction_aware": False,
                    },
                )
            ],
            probe=k == 16,
        )
        for k in ks
    ]
    for k in (k for k in ks if k != EQUAL_K):  # Flamingo's resampler at the Q-Former's token counts
        step = Step(
            "instruct", {**RECIPE, "model.connector.kind": "perceiver", "model.connector.perceiver.num_latents": k}
        )
        out.append(Variant(f"perceiver_K{k}", [step]))
    out.append(Variant("linear", [Step("instruct", {**RECIPE, "model.connector.kind": "linear"})], probe=True))
    out.append(Variant("mlp", [Step("instruct", {**RECIPE, **MLP_CONNECTOR})]))
    return out


def verdicts(runs):
    rows = [
        paired(
            runs,
            "mlp",
            "linear",
            "held_in_acc",
            +1,
            "MLP beats linear projection",
            "a gain of 0.5 GQA points is far below what a few small-scale seeds can resolve",
        ),
        paired(
            runs,
            "qformer_K16",
            "qformer_K4",
            "held_in_acc",
            +1,
            "more visual tokens help (16 vs 4 queries)",
            "with 1-3 objects per scene, 4 queries may already carry everything the questions ask",
        ),
        paired(
            runs,
            "perceiver_K16",
            "mlp",
            "held_in_acc",
            0,
            "a perceiver resampler matches an MLP with fewer tokens (16 vs 37)",
            "16 latents trained from scratch in the instruction budget lose what 37 patch tokens carry",
        ),
    ]
    if any(r["variant"] == f"qformer_K{EQUAL_K}" for r in runs):  # full mode only
        rows += [
            paired(
                runs,
                f"qformer_K{EQUAL_K}",
                "linear",
                "held_in_acc",
                0,
                f"a Q-Former matches a linear projection at an equal token count ({EQUAL_K})",
                "queries trained from scratch in the instruction budget may not yet read what the patches hold",
            ),
            paired(
                runs,
                "linear",
                f"qformer_K{EQUAL_K}",
                "acc_position",
                +1,
                f"a linear projection keeps position that a Q-Former loses (position questions, {EQUAL_K} tokens each)",
                "the Q-Former's queries read the patches' position embeddings, which may be enough for a 3×3 grid",
            ),
        ]
    return rows


def comparison(quick: bool) -> Comparison:
    return Comparison("connector", variants(quick), PAPER, verdicts, ("train_samples_per_s",))


def main(argv: list[str] | None = None) -> int:
    args = cli(__doc__, argv)
    return run_one(comparison(args.quick), args)


if __name__ == "__main__":
    sys.exit(main())
