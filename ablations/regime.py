"""The small-scale regime: every value the suite sets beyond lab's defaults, in one place, and where each
value of a job's config came from.

A job step's config is built in layers, each a dict of dotted `TrainConfig` keys, later ones winning:

1. `lab default`: `TrainConfig()`;
2. `mode`: what the mode sets for the stage (`MODE`; quick mode warms up for 10 steps);
3. `--config`: a YAML file given to the suite (larger runs, real sizes);
4. `regime`: `REGIME` for every step, `STAGE` for the step's stage (chosen on val; REPORT.md's "Regime");
5. `comparison`: what every variant of the comparison sets alike for the step's stage;
6. `variant`: the rest of the step's overrides;
7. `budget`: seed, step count (`ablations.plan.Budget`).

`python -m ablations --plan` prints each job's keys that are not lab defaults with their layer.
"""

from __future__ import annotations

from typing import Any

from lab.data.tasks import HELD_IN, lm_mix

REGIME: dict[str, Any] = {
    "data.scene.image_size": 48,  # 3×3 cells of 16 px ...
    "model.vision.image_size": 48,
    "model.vision.patch_size": 8,  # ... each exactly 2×2 patches
    "model.vision.num_layers": 4,
    "model.llm.num_layers": 4,
}
# Stage 0's ViT: the CLIP-style loss plus a dense one, in which every patch token names its object's
# shape, colour and size and its cell (`clip.dense_targets="words"`). With the plain contrastive
# ViT every model answered about a random object once a scene held two or more (colour 0.59 / 0.46
# on 2 / 3 objects); with this one, 0.90 / 0.89 (val, seed 0, LLaVA recipe, 600 steps;
# HISTORY.md, "The dense objective with one word group per attribute"). lr 2e-3 in both modes: 1e-3 left
# the ViT under-trained after its 1,000 steps (cell shape probe 0.947 vs 0.977; full mode, seed 0, linear
# connector: colour 0.72 vs 0.95). The LM reads every family with its share (`lab.data.tasks.FAMILY`;
# "exists" twice) at lr 1e-3: 3e-3 never leaves the bag-of-words plateau.
STAGE: dict[str, dict[str, Any]] = {
    "vision": {"data.stream": "caption", "clip.dense_weight": 1.0, "clip.dense_targets": "words", "optim.lr": 2e-3},
    "lm": {"data.stream": "text", "optim.lr": 1e-3, "data.families": lm_mix()},
    "stage1": {"data.stream": "caption"},
    "stage2": {"data.stream": "caption"},
    "instruct": {"data.stream": "instruct", "optim.lr": 2e-3},
}
# Per mode and stage, set before `--config` (as lab's presets are). Quick: 10 warm-up steps, and the
# stage-1 and stage-2 learning rate 2e-3 (full: 1e-3); full mode names the instruction families.
MODE: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        stage: {"optim.warmup_steps": 10, **({"optim.lr": 2e-3} if stage in ("stage1", "stage2") else {})}
        for stage in STAGE
    },
    "full": {
        "vision": {},
        "lm": {},
        "stage1": {"optim.lr": 1e-3},
        "stage2": {"optim.lr": 1e-3},
        "instruct": {"data.families": list(HELD_IN)},
    },
}
LAYERS = ("lab default", "mode", "--config", "regime", "comparison", "variant", "budget")


def layers(
    stage: str, mode: str, config_file: dict, comparison: dict, variant: dict, budget: dict
) -> list[tuple[str, dict[str, Any]]]:
    """A step's override layers in the order they apply (the module doc), each as dotted keys."""
    return [
        ("mode", MODE[mode][stage]),
        ("--config", config_file),
        ("regime", {**REGIME, **STAGE[stage]}),
        ("comparison", comparison),
        ("variant", variant),
        ("budget", budget),
    ]


def provenance(resolved: dict[str, Any], steps: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[Any, str]]:
    """{dotted key: (its value in the resolved config, the last layer that set it)} for every key a layer
    set; every other key is a lab default."""
    out: dict[str, tuple[Any, str]] = {}
    for layer, values in steps:
        for key in values:
            value = _get(resolved, key)
            if value is not _ABSENT:  # a key the identity leaves out computes nothing (save_every)
                out[key] = (value, layer)
    return out


_ABSENT = object()


def check_keys(overrides: dict[str, Any], full: dict[str, Any], where: str) -> None:
    """Each override names one setting of `TrainConfig` by its full dotted path (`full`: the step's
    resolved `to_dict()`), one spelling per key: a section (`model.connector`) or a path that is no
    setting is a ConfigError naming the job, found when the suite is planned, before anything trains."""
    from lab.config import ConfigError

    for key in overrides:
        parent, _, leaf = key.rpartition(".")
        node = _get(full, parent) if parent else full
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"{where}: {key} is not a TrainConfig setting")
        if isinstance(node[leaf], dict):
            raise ConfigError(f"{where}: {key} is a section; name one of its settings (e.g. {key}.kind)")


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def shared_overrides(recipes: list[list[tuple[str, dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """{stage: the overrides every variant's steps of that stage set to one value}: a comparison's own
    settings, as distinct from what each variant changes (`recipes`: per variant, (stage, overrides))."""
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for recipe in recipes:
        for stage, overrides in recipe:
            by_stage.setdefault(stage, []).append(overrides)
    shared = {}
    for stage, all_overrides in by_stage.items():
        first = all_overrides[0]
        shared[stage] = {k: v for k, v in first.items() if all(k in o and o[k] == v for o in all_overrides)}
    return shared
