"""What each stage trains: the one place that decides (`decide`), applies it to the model's
parameters (`apply`), and the table it logs.

A stage has a default role for each part of the VLM: it trains it, keeps it frozen when it is
pretrained, or does not use it. The config's `freeze_vision` / `freeze_llm` flags are `true`,
`false` or `"auto"`. Auto follows the stage's default for a part loaded from `--init`, and trains
a part that starts from random weights, since a frozen random part is almost always a mistake
(a newcomer's `--stage instruct` with no `--init` would otherwise train the connector alone into
a random LLM). Freezing a random part explicitly is an error that names the flag and `--init`.

`model.freeze_qformer=true` (MiniGPT-4) trains only the projection of a Q-Former connector
loaded from --init; its Q-Former stays frozen.

`model.llm_lora.r` / `model.vision_lora.r` > 0 puts LoRA adapters on a pretrained part that the
stage would otherwise keep frozen: its weights stay frozen and the adapters train. LoRA on random
weights, on a part the stage trains fully, or beside `freeze_*=false` is an error naming both keys.
"""

from __future__ import annotations

import dataclasses
import logging

from lab.config import ConfigError
from lab.models import VLMConfig, lora

log = logging.getLogger("lab")
PARTS = ("vision", "connector", "llm")
FLAGS = {"vision": "freeze_vision", "llm": "freeze_llm"}  # the connector always trains where it is used
LORA = {"vision": "vision_lora", "llm": "llm_lora"}

# Per stage: "train" (the stage exists to train it), "freeze" (kept frozen when pretrained), or
# absent (the stage does not run that part; it is neither trained nor exported).
ROLES: dict[str, dict[str, str]] = {
    "vision": {"vision": "train"},
    "lm": {"llm": "train"},
    "stage1": {"vision": "freeze", "connector": "train"},
    "stage2": {"vision": "freeze", "connector": "train", "llm": "freeze"},
    "instruct": {"vision": "freeze", "connector": "train", "llm": "freeze"},
}


@dataclasses.dataclass(frozen=True)
class Decision:
    part: str
    trainable: bool
    used: bool
    pretrained: bool
    why: str
    lora: bool = False  # trainable through LoRA adapters only
    frozen_within: tuple[str, ...] = ()  # submodules that stay frozen inside a trainable part


def decide(stage: str, model: VLMConfig, inherited: set[str] | list[str]) -> list[Decision]:
    """One decision per part, from the stage's role, the freeze flag and what `--init` loaded."""
    out = []
    for part in PARTS:
        role = ROLES[stage].get(part)
        flag_name = FLAGS.get(part)
        flag = getattr(model, flag_name) if flag_name else "auto"
        pre = part in inherited
        start = "loaded from --init" if pre else "random weights"
        if role is None:
            out.append(Decision(part, False, False, pre, f"not used by stage {stage}"))
            continue
        if part == "connector" and model.freeze_qformer:
            out.append(_projection_only(stage, model, pre))
            continue
        lora = getattr(model, LORA[part]) if part in LORA else None
        if lora is not None and lora.on:
            out.append(_lora(stage, part, role, flag, flag_name, lora.r, pre))
            continue
        if flag is True:
            if role == "train":
                raise ConfigError(f"stage {stage} exists to train the {part}; model.{flag_name}=true contradicts it")
            if not pre:
                raise ConfigError(
                    f"model.{flag_name}=true but the {part} has random weights: give --init a run that "
                    f"trained it, or set model.{flag_name}=auto (train it) or false"
                )
            out.append(Decision(part, False, True, pre, f"{start}; model.{flag_name}=true"))
        elif flag is False:
            out.append(Decision(part, True, True, pre, f"{start}; model.{flag_name}=false"))
        elif role == "train":
            out.append(Decision(part, True, True, pre, f"{start}; stage {stage} trains it"))
        elif pre:
            out.append(Decision(part, False, True, pre, f"{start}; stage {stage} keeps it frozen (auto)"))
        else:
            out.append(Decision(part, True, True, pre, f"{start}; trained so it does not stay random (auto)"))
    return out


def _projection_only(stage: str, model: VLMConfig, pre: bool) -> Decision:
    if model.connector.kind != "qformer":
        raise ConfigError(f"model.freeze_qformer=true needs connector kind 'qformer', got {model.connector.kind!r}")
    if not pre:
        raise ConfigError(
            "model.freeze_qformer=true but the connector has random weights: give --init a run that trained "
            "the Q-Former (stage1 or stage2), or set model.freeze_qformer=false"
        )
    why = f"loaded from --init; model.freeze_qformer=true: the Q-Former stays frozen, its projection trains ({stage})"
    return Decision("connector", True, True, pre, why, frozen_within=("qformer",))


def _lora(stage: str, part: str, role: str, flag, flag_name: str, r: int, pre: bool) -> Decision:
    key = f"model.{LORA[part]}.r={r}"
    if role == "train":
        raise ConfigError(f"stage {stage} trains the {part} fully; {key} is for a later stage (set r=0 here)")
    if not pre:
        raise ConfigError(
            f"{key} needs a pretrained {part}: give --init a run that trained it (LoRA on random weights)"
        )
    if flag is False:
        raise ConfigError(
            f"model.{flag_name}=false trains the whole {part}, {key} trains adapters on a frozen one: choose one"
        )
    return Decision(part, True, True, pre, f"loaded from --init; {key}: adapters train, its weights stay frozen", True)


def apply(vlm, decisions: list[Decision], model: VLMConfig, heads=None) -> dict[str, int]:
    """Make the decisions true of `vlm`'s parameters: only what is trainable requires a gradient
    (LoRA adapters attached to a part that trains through them; submodules held frozen within a
    trainable part stay frozen); a stage's own heads (`heads`) train. Returns each part's trainable
    parameter count for `table`: a LoRA part counts its adapters."""
    vlm.requires_grad_(False)
    counts = {d.part: sum(p.numel() for p in getattr(vlm, d.part).parameters()) for d in decisions}
    for d in decisions:
        module = getattr(vlm, d.part)
        module.requires_grad_(d.trainable and not d.lora)
        if d.lora:  # adapters only: peft leaves the part's own weights frozen
            counts[d.part] = lora.attach(module, getattr(model, LORA[d.part]), d.part)
        for name in d.frozen_within:
            module.get_submodule(name).requires_grad_(False)
    if heads is not None:
        heads.requires_grad_(True)
    return counts


def table(decisions: list[Decision], counts: dict[str, int]) -> str:
    """The decisions as an aligned text table (part, trainable/frozen/lora, parameters, why); a
    LoRA row counts its adapters' parameters."""
    rows = [("part", "state", "parameters", "why")]
    for d in decisions:
        state = "lora" if d.lora else "trainable" if d.trainable else ("frozen" if d.used else "unused")
        rows.append((d.part, state, f"{counts.get(d.part, 0):,}", d.why))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {w}" for a, b, c, w in rows)
