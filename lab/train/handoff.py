"""Hand-off distillation: a frozen LLM as its own teacher, from a scene's caption to its image.

Why: a frozen LLM that answers a question from a caption (it read captions in its text pretraining)
may not answer it from the connector's soft tokens. Through the model's own caption, the frozen
LLMs of `ablations.held_out` answer compare_count at 0.91-0.96, where the soft tokens give
0.55-0.85: the content crosses the connector, and the hand-off to the LLM loses it. This loss asks
the connector for tokens that the LLM reads as it reads the caption. The LLM's hidden states, at
every layer, on what follows the image (the same tokens in both: "assistant : answer <eos>", and
the question when it comes after the image) should equal its hidden states on that text when the
image is replaced by the true caption, written as the LM read scenes ("scene : <caption> ."). The
teacher pass runs without gradients. Only the training samples take part: held-in questions, so
held-out questions are never seen.

    loss = λ · Σ_rows  mean_{layers, suffix positions} ||h_image − h_text||²  /  mean ||h_text||²

Each row's error is relative to the teacher's state size, so λ does not depend on the LLM's scale.
"""

from __future__ import annotations

import torch

from lab.config import ConfigError
from lab.data import Collator
from lab.data.datasets import as_text
from lab.data.tasks import caption


def check(llm_cfg, stage: str, llava: bool) -> None:
    """The settings the loss needs, checked before training: one line naming what is missing."""
    if stage not in ("stage2", "instruct"):
        raise ConfigError(
            f"handoff_weight is for the stages that feed images to the LLM (stage2, instruct), not {stage}"
        )
    if llava:
        raise ConfigError(
            "handoff_weight needs each image's true caption: generated scenes have one, LLaVA JSON does not"
        )
    if llm_cfg.family not in ("llama",):
        raise ConfigError(f"handoff_weight reads each decoder layer of a Llama-family LLM, not {llm_cfg.family!r}")


def text_twins(samples, tok) -> dict[str, torch.Tensor]:
    """Each sample with its image replaced by its true caption as text: the teacher's batch."""
    if any(s.scene is None for s in samples):
        raise ConfigError("handoff_weight needs samples generated from scenes (their captions)")
    batch = Collator(tok, 0)([as_text(s, caption(s.scene)) for s in samples])
    return {"handoff_ids": batch["input_ids"], "handoff_mask": batch["attention_mask"]}


def suffix_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_id: int) -> torch.Tensor:
    """Per right-padded row, the number of real tokens after its last image placeholder."""
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = torch.where(input_ids == image_id, pos, -1).amax(1)
    return attention_mask.sum(1) - last - 1


def layer_states(llm, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, each decoder layer's output `b t d`)."""
    states: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: states.append(out)) for layer in llm.layers]
    try:
        logits = llm(embeds, mask)
    finally:
        for h in hooks:
            h.remove()
    return logits, states


def student_and_teacher(vlm, batch: dict) -> tuple[torch.Tensor, list, list, tuple, torch.Tensor]:
    """One batch (with its `text_twins`) through the LLM twice: from the image (the student, with
    gradients where the caller has them) and from the true caption (the teacher, without). Returns
    (student logits, student states, teacher states, (student mask, teacher mask), suffix lengths):
    what `loss` compares, for training (`Stage.forward_handoff`) and measurement (`lab.eval.handoff_gap`)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    visual = vlm.visual_embeddings(batch["pixel_values"], batch.get("instruction_ids"), batch.get("instruction_mask"))
    logits, student = layer_states(vlm.llm, vlm.input_embeddings(ids, visual), mask)
    with torch.no_grad():
        _, teacher = layer_states(vlm.llm, vlm.llm.embed(batch["handoff_ids"]), batch["handoff_mask"])
    suffix = suffix_lengths(ids, mask, vlm.cfg.image_token_id)
    return logits, student, teacher, (mask, batch["handoff_mask"]), suffix


def loss(student: list[torch.Tensor], teacher: list[torch.Tensor], masks, suffix: torch.Tensor) -> torch.Tensor:
    """Σ over rows of the relative squared error on the rows' last `suffix` real positions.

    Per row the mean over (layers, positions) of ||h_image − h_text||² over that of ||h_text||²: the
    two means share their count, so it is the ratio of the sums. One gather for the whole batch."""
    m = max(int(suffix.max()), 1)
    offsets = torch.arange(m, device=suffix.device) - m  # -m .. -1: the last m positions of a row
    valid = (offsets[None] >= -suffix[:, None]).float()  # b m: a row's own suffix only

    def last(states: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        pos = (mask.sum(1, keepdim=True).long() + offsets[None]).clamp(min=0)  # b m
        h = torch.stack(states).float()  # L b t d
        return h.gather(2, pos[None, :, :, None].expand(h.shape[0], -1, -1, h.shape[-1]))

    s, t = last(student, masks[0]), last(teacher, masks[1])
    err = ((s - t).pow(2).sum(-1) * valid).sum((0, 2))
    norm = (t.pow(2).sum(-1) * valid).sum((0, 2))
    return (err / norm).sum()
