"""The report's sections beyond the claims: where the information goes (probes, per seed), and the held-out
sweep over stage-0 LMs (`ablations.held_out`), read from its results file. Like the report, they read
results only and import no comparison."""

from __future__ import annotations

import json
from pathlib import Path

from ablations.sweep_table import WAYS, table
from ablations.targets import frozen_llm, held_to_floors
from lab.data.tasks import HELD_OUT, QA_HELD_IN

QA_FAMILIES = QA_HELD_IN


PROBE_INTRO = (
    "Ridge probes on frozen features (fit on train, strength chosen on val, accuracy on test; the "
    "majority-class rate in brackets). Scene sites: attribute of the object in each grid cell "
    '("none" when empty), count, the cell of each shape. `llm`: the final hidden state at the answer '
    "position, per question family. `lm text` is the stage-0 LM answering from the *true caption as "
    "text*: what a frozen LLM reaches when a connector hands it the caption (a connector may do better: "
    "its tokens need not look like text)."
)


CELL_INTRO = (
    "Nonlinear probe (`ablations.probe.cell_probe`, stage 0, seed 0): a one-hidden-layer MLP reads "
    "the object in one grid cell from that cell's pixels or patch tokens; accuracy over cells holding "
    "an object (chance: 0.25 shape, 0.17 colour). `vit_random_init` is an untrained ViT of the same "
    "shape: what the architecture keeps before any training."
)


def probe_lines(stage0: dict, variants: dict[str, dict]) -> list[str]:
    """Stage 0's probes, then each probed variant's (its pixel row only where its scenes differ
    from stage 0's: the same images probe the same), then the LM's text accuracy."""
    from ablations.probe import probe_table

    pixels = stage0.get("vision", {}).get("pixels")
    probes = {"stage 0 (seed 0)": stage0["vision"]} if stage0.get("vision") else {}
    probes.update(
        {name: {k: v for k, v in p.items() if not (k == "pixels" and v == pixels)} for name, p in variants.items()}
    )
    lines = [probe_table(probes)] if probes else []
    if stage0.get("lm_text"):
        t = stage0["lm_text"]
        lines += ["| lm text (seed 0) | " + " | ".join(f"{k} {v:.2f}" for k, v in t.items()) + " |", ""]
    if stage0.get("cells"):
        lines += [CELL_INTRO, "", "| features | shape | colour |", "|---|---|---|"]
        lines += [f"| {site} | {a['shape']:.3f} | {a['color']:.3f} |" for site, a in stage0["cells"].items()]
        lines.append("")
    return lines


def probe_section(results: dict[str, dict]) -> list[str]:
    stage0 = next(iter(results.values())).get("stage0_probes") or {}
    variants = {
        f"{res['comparison']}/{r['variant']}": r["probe"]
        for res in results.values()
        for r in res["runs"]
        if r.get("probe")
    }
    lines = ["## Where the information goes: linear probes", "", PROBE_INTRO, "", *probe_lines(stage0, variants)]
    return lines + seed_lines(results, stage0.get("lm_text_by_seed") or {})


SEED_INTRO = (
    "Seed to seed. `lm text` is the stage-0 LM the seed starts from, answering from the true caption as "
    "text (val); `frozen LLM` is the mean, over the main variants whose LLM stays frozen, of their "
    "accuracy on the same family (test; the held-out families ranked, as the held-out target scores them); "
    "`held-in` is each comparison's mean over its main variants. Exempt variants (below the floors by design) "
    "are left out of both. Where a held-out family reads far lower from the image than from text, the LM knows "
    "it and the connector does not hand it on."
)
SEED_FAMILIES = (*QA_FAMILIES, *HELD_OUT)


def seed_lines(results: dict[str, dict], lm_by_seed: dict) -> list[str]:
    """Per seed: the stage-0 LM's text accuracy beside what the variants trained on it reached.
    With one shared stage 0 (`Budget.shared_stage0`) every seed reads the same LM."""
    if not lm_by_seed:
        return []
    lm_by_seed = {str(k): v for k, v in lm_by_seed.items()}
    shared = next(iter(lm_by_seed.values())) if len(lm_by_seed) == 1 else None
    per_seed: dict[str, dict[str, list[float]]] = {}
    for name, res in results.items():
        for r in res["runs"]:
            if not held_to_floors(res, r["variant"]):
                continue
            row = per_seed.setdefault(str(r["seed"]), {})
            row.setdefault(name, []).append(r["metrics"]["held_in_acc"])
            for f in SEED_FAMILIES if frozen_llm(res, r["variant"]) else ():
                m = r["metrics"]
                row.setdefault(f, []).append(m.get(f"ranked_{f}", m.get(f"acc_{f}", float("nan"))))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    head = [f"{f}: lm text / frozen LLM" for f in SEED_FAMILIES] + [f"{n} held-in" for n in results]
    intro = SEED_INTRO + (" Every seed starts from the same stage 0." if shared else "")
    lines = ["", intro, "", "| seed | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for seed in sorted(set(per_seed) | set(lm_by_seed), key=int):
        lm, row = shared or lm_by_seed.get(seed, {}), per_seed.get(seed, {})
        cells = [f"{lm.get(f, float('nan')):.2f} / {mean(row.get(f, [])):.2f}" for f in SEED_FAMILIES]
        cells += [f"{mean(row.get(n, [])):.3f}" for n in results]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines + [""]


def held_out_section(folder: Path) -> list[str]:
    """The held-out sweep over stage-0 LMs (`ablations.held_out`), when it has run into `folder`."""

    f = folder / "results.json"
    if not f.exists():
        return []
    whole = json.loads(f.read_text())
    res = {**whole["sweep"], "git_commit": whole["git_commit"], "wall_s": whole["wall_s"]}
    got = "; ".join(f"{WAYS[w]} **{m:.3f} ± {sd:.3f}**" for w, (m, sd) in res["summary"].items())
    return (
        [
            f"### Held-out over {res['lms']} stage-0 LMs",
            "",
            f"`python -m ablations held_out` (commit `{res['git_commit'][:10]}`, {res['wall_s'] / 60:.0f} min of jobs "
            f"plus stage 0): the recipe of `{res['recipe']}` on {res['lms']} LMs (seeds 0..{res['lms'] - 1}, each "
            "beside the seed-0 ViT), each model's held-out answers (test split, ranked) read three ways: from the "
            "image's soft tokens (the suite's score); through its own caption (the model describes the image, its "
            "LLM answers from that text, `lab.eval.through_words`); and its LLM from the true caption. Held-out, "
            f"mean ± s.d. over LMs: {got}.",
            "",
            table(res["records"]),
        ]
        + [line for arm in arms_of(res) for line in handoff_lines(res[arm])]
        + gap_lines(res)
    )


def arms_of(res: dict) -> list[str]:
    """The sweep's arms beside its plain recipe: the entries of its results that pair against it."""
    return [k for k, v in res.items() if isinstance(v, dict) and "paired" in v]


def handoff_lines(arm: dict | None) -> list[str]:
    """One of the sweep's hand-off arms: the same recipe with hand-off distillation (`lab.train.handoff`)."""

    if not arm:
        return []
    stages = arm.get("stages", {"instruct": arm["weight"]})  # the first hand-off records predate `stages`
    where = " and ".join({"stage2": "stage 2", "instruct": "instruction tuning"}[s] for s in stages)
    (di, si), (do, so) = arm["paired"]["held_in"], arm["paired"]["held_out_direct"]
    return [
        f"With hand-off distillation in {where} (`handoff_weight={arm['weight']:g}`: the frozen LLM's "
        "states after the image matched to its own after the true caption, training samples only, so no held-out "
        "question), the same LMs. "
        f"Paired over LMs (with minus without, mean ± s.e.): held-in {di:+.3f} ± {si:.3f}, held-out from the image "
        f"{do:+.3f} ± {so:.3f}.",
        "",
        table(arm["records"]),
    ]


def gap_lines(res: dict) -> list[str]:
    """The sweep's hand-off gap table (`ablations.held_out.gap_table`), when its records measured it."""
    if not res.get("gap_table"):
        return []
    return [
        "The hand-off gap (`lab.eval.handoff_gap`: the relative distance of the frozen LLM's last-layer states "
        "after the image from its own after the true caption, 128 test samples per family). Distillation fits it on "
        "held-in questions; on a held-out family it says whether that fit carried over.",
        "",
        res["gap_table"],
    ]
