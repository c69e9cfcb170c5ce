"""InstructBLIP's instruction-aware queries vs BLIP-2's plain queries, with a 1-object control.

Small query budget (4), multi-object scenes, questions that name one object: reading the
instruction should let the queries fetch the named object. With one object per image there
is nothing to choose, so the gap should vanish.

`python -m ablations.instruction_aware [--quick] [--seeds N] [--out DIR] [--config YAML]`
"""

from __future__ import annotations

from ablations.runner import Runner, Step, Variant, cli, paired

PAPER = {
    "instruction-aware queries help held-in": "InstructBLIP Table 2 (FlanT5-XL): held-in avg 94.1 → 89.8 without",
    "instruction-aware queries help held-out": "InstructBLIP Table 2: ScienceQA 70.4 → 63.4 without",
    "control: no gap with one object per image": "(our control; the papers do not run it)",
}
BASE = {"model.freeze_vision": True, "model.freeze_llm": True, "model.connector.qformer.num_query_tokens": 4}
MULTI = {"data.scene.min_objects": 2, "data.scene.max_objects": 4}
CONTROL = {"data.scene.min_objects": 1, "data.scene.max_objects": 1}
CONTROL_EVAL = {"scene.min_objects": 1, "scene.max_objects": 1}


def variants(quick: bool) -> list[Variant]:
    out = []
    for aware in (True, False):
        o = {**BASE, "model.connector.qformer.instruction_aware": aware}
        name = "instruction_aware" if aware else "plain_queries"
        out.append(Variant(name, [Step("instruct", {**o, **MULTI})]))
        out.append(Variant(f"{name}_1obj", [Step("instruct", {**o, **CONTROL})], CONTROL_EVAL, group="control"))
    return out


def verdicts(runs):
    why = (
        "at this scale the LLM prompt already carries the question, and 4 queries can hold a whole "
        "2-4 object scene, so plain queries lose little"
    )
    return [
        paired(
            runs, "instruction_aware", "plain_queries", "held_in_acc", +1, "instruction-aware queries help held-in", why
        ),
        paired(
            runs,
            "instruction_aware",
            "plain_queries",
            "held_out_acc",
            +1,
            "instruction-aware queries help held-out",
            why,
        ),
        paired(
            runs,
            "instruction_aware_1obj",
            "plain_queries_1obj",
            "held_in_acc",
            0,
            "control: no gap with one object per image",
            "the control shows a gap: an effect not tied to "
            "choosing among objects (e.g. extra Q-Former parameters for the text)",
        ),
    ]


def main() -> None:
    args = cli(__doc__)
    Runner(args).run("instruction_aware", variants(args.quick), PAPER, verdicts)


if __name__ == "__main__":
    main()
