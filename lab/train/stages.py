"""The papers' training stages. Each stage says which data it reads, which parts of the model
it trains, and which loss it adds up; the model math lives in `lab.models`.

Every stage holds a whole `VisionLanguageModel` (`self.vlm`) plus optional heads (`self.aux`),
so every checkpoint is a loadable VLM, and `components` records which of its parts hold
trained weights. `--init` copies exactly those parts into the next stage.
"""

from __future__ import annotations

import functools
import logging
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab.config import ConfigError
from lab.data import Collator, LlavaJSON, SceneTasks, Shuffled, pixels
from lab.data.collate import check_lengths, text_ids
from lab.data.tasks import dense_candidates, dense_target, hard_negative
from lab.models import VisionLanguageModel
from lab.models.blip2_stage1 import Stage1Heads
from lab.models.clip import ContrastiveHeads
from lab.train import handoff
from lab.train.config import TrainConfig
from lab.train.trainable import apply, decide, table

log = logging.getLogger("lab")
COMPONENTS = ("vision", "connector", "llm")


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled positions (the trainer divides by the
    global label count, so accumulation and data parallelism give the same step)."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )


def label_count(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


class Stage(nn.Module):
    name = ""

    def __init__(self, cfg: TrainConfig, tokenizer) -> None:
        super().__init__()
        self.cfg, self.tok = cfg, tokenizer
        model_cfg = self.model_config(cfg)
        if model_cfg.llm.family == "t5":
            raise ConfigError(
                "model.llm.family=t5: lab's training stages build decoder-only batches (prompt and answer in "
                "one sequence); T5 models convert and generate, but do not train here yet"
            )
        if model_cfg.llm.vocab_size < len(tokenizer):
            raise ConfigError(f"model.llm.vocab_size={model_cfg.llm.vocab_size} < tokenizer size {len(tokenizer)}")
        q = model_cfg.connector.qformer
        if q is not None and q.instruction_aware and q.vocab_size < len(tokenizer):
            raise ConfigError(
                f"model.connector.qformer.vocab_size={q.vocab_size} < tokenizer size {len(tokenizer)}: the "
                "instruction-aware Q-Former embeds the instruction with this tokenizer's ids; raise it, or set "
                "model.connector.qformer.instruction_aware=false"
            )
        # The stage, not the model, decides what trains (`set_trainable`), so no freeze flag is
        # applied here: "auto" needs to know what --init loaded.
        self.vlm = VisionLanguageModel(model_cfg.replace(freeze_vision=False, freeze_llm=False))
        self.model_cfg = model_cfg
        self.decisions: list = []
        self.aux: nn.Module | None = None
        q = model_cfg.connector.qformer
        self.collator = Collator(
            tokenizer,
            model_cfg.image_tokens,
            instruction=bool(q and q.instruction_aware),
            max_length=model_cfg.llm.max_position_embeddings,
            truncate=cfg.data.truncate,
        )

    def model_config(self, cfg: TrainConfig):
        return cfg.model

    def trained_components(self) -> tuple[str, ...]:
        return tuple(d.part for d in self.decisions if d.trainable)

    def set_trainable(self, inherited: set[str] | list[str] = ()) -> list:
        """What trains, decided and applied by `lab.train.trainable` (the one place), and its logged table."""
        self.decisions = decide(self.name, self.model_cfg, inherited)
        counts = apply(self.vlm, self.decisions, self.model_cfg, self.aux)
        if self.cfg.handoff_weight and any(p.requires_grad for p in self.vlm.llm.parameters()):
            raise ConfigError("handoff_weight: the LLM is its own teacher and must stay frozen (model.freeze_llm=true)")
        n = sum(p.numel() for p in self.parameters() if p.requires_grad)
        heads = " (plus the stage's heads)" if self.aux is not None else ""
        log.info("stage %s: %d trainable parameters%s\n%s", self.name, n, heads, table(self.decisions, counts))
        return self.decisions

    def dataset(self, split: str, workers: int = 1):
        """The split's samples; LLaVA JSON is checked before step 1 on `workers` processes."""
        if self.cfg.llava_data:
            data = LlavaJSON(
                self.cfg.llava_data,
                self.cfg.image_folder,
                self.cfg.model.vision.image_size,
                workers=max(1, workers),
                bad_images=self.cfg.bad_images,
            )
            cut = check_lengths(data, self.collator, self.cfg.llava_data, checked=data.lengths)
            if cut:
                log.info("data.truncate: %d of %d records cut to %d tokens", cut, len(data), self.collator.max_length)
            return Shuffled(data, self.cfg.seed) if split == "train" else data
        return SceneTasks(self.cfg.data, split)

    def batch_fn(self):
        """`collate` bound to what it reads (config, tokenizer, collator) and not to the model: what
        loader worker processes receive, pickled where they start by spawn (the ablation workers)."""
        light = types.SimpleNamespace(cfg=self.cfg, tok=self.tok, collator=getattr(self, "collator", None))
        return functools.partial(type(self).collate, light)

    def collate(self, samples) -> dict:
        batch = self.collator(samples)
        if self.cfg.handoff_weight:  # the teacher's text twin of each sample
            batch |= handoff.text_twins(samples, self.tok)
        return batch

    def count(self, batch: dict) -> int:
        return label_count(batch)

    def forward(self, batch: dict) -> torch.Tensor:
        if "handoff_ids" in batch:
            return self.forward_handoff(batch)
        out = self.vlm(
            batch["pixel_values"],
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("instruction_ids"),
            batch.get("instruction_mask"),
        )
        return lm_loss_sum(out.logits, batch["labels"])

    def forward_handoff(self, batch: dict) -> torch.Tensor:
        """The LM loss plus `handoff_weight` × the hand-off distillation loss (`lab.train.handoff`)."""
        logits, student, teacher, masks, suffix = handoff.student_and_teacher(self.vlm, batch)
        extra = handoff.loss(student, teacher, masks, suffix)
        return lm_loss_sum(logits, batch["labels"]) + self.cfg.handoff_weight * extra


class VisionStage(Stage):
    """Stage 0a: CLIP-style contrastive pretraining of the vision encoder on image-caption pairs."""

    name = "vision"

    def __init__(self, cfg, tokenizer) -> None:
        super().__init__(cfg, tokenizer)
        self.aux = ContrastiveHeads(cfg.clip, cfg.model.vision.hidden_size, len(tokenizer))

    def collate(self, samples) -> dict:
        batch = caption_batch(samples, self.tok)
        k, dense = self.cfg.clip.hard_negatives, self.cfg.clip.dense_weight
        if (k or dense) and any(s.scene is None for s in samples):
            raise ConfigError("clip.hard_negatives and clip.dense_weight need generated scenes (their objects)")
        if k:
            negs = []
            for s in samples:  # seeded by the scene, so a resumed run sees the same negatives
                rng = np.random.default_rng([s.scene.seed, 7])
                negs += [hard_negative(s.scene, rng) for _ in range(k)]
            ids, mask = text_ids(negs, self.tok)
            batch |= {"negative_ids": ids, "negative_mask": mask}
        if dense:
            kind = self.cfg.clip.dense_targets
            phrases, groups = dense_candidates(kind)
            target = [dense_target(s.scene, kind) for s in samples]
            ids, mask = text_ids(phrases, self.tok)
            batch |= {"cell_ids": ids, "cell_mask": mask, "cell_target": torch.tensor(target)}
            batch["cell_groups"] = torch.tensor(groups)
        return batch

    def count(self, batch: dict) -> int:
        return len(batch["input_ids"])

    def forward(self, batch: dict) -> torch.Tensor:
        image = self.vlm.vision(batch["pixel_values"])
        sim = self.aux.similarity(image, batch["input_ids"], batch["attention_mask"])
        neg = None
        if "negative_ids" in batch:
            neg = self.aux.similarity(image, batch["negative_ids"], batch["negative_mask"])
        loss = self.aux.loss(sim, neg)
        if "cell_ids" in batch:
            groups = [tuple(g) for g in batch["cell_groups"].tolist()]
            dense = self.aux.dense_loss(image, batch["cell_ids"], batch["cell_mask"], batch["cell_target"], groups)
            loss = loss + self.cfg.clip.dense_weight * dense
        return loss * len(image)


class LMStage(Stage):
    """Stage 0b: the Llama decoder learns the scene language from text alone."""

    name = "lm"

    def __init__(self, cfg, tokenizer) -> None:
        super().__init__(cfg, tokenizer)
        self.collator = Collator(tokenizer, 0, train_on="all" if cfg.lm_loss == "all" else "assistant")

    def dataset(self, split: str, workers: int = 1):
        """The split's samples; LLaVA JSON is checked before step 1 on `workers` processes."""
        if self.cfg.llava_data:
            raise ConfigError("stage 'lm' trains on scene text only; --data applies to stage2 and instruct")
        return SceneTasks(self.cfg.data.replace(stream="text"), split)

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.vlm.llm(self.vlm.llm.embed(batch["input_ids"]), batch["attention_mask"])
        return lm_loss_sum(logits, batch["labels"])


class Stage1(Stage):
    """BLIP-2 stage 1: Q-Former ITC + ITM + ITG against a frozen image encoder."""

    name = "stage1"

    def model_config(self, cfg):
        if cfg.model.connector.kind != "qformer":
            raise ConfigError(f"stage1 trains a Q-Former; model.connector.kind is {cfg.model.connector.kind!r}")
        q = cfg.model.connector.qformer.replace(text_input=True)
        return cfg.model.replace(connector=cfg.model.connector.replace(qformer=q))

    def __init__(self, cfg, tokenizer) -> None:
        super().__init__(cfg, tokenizer)
        q = self.vlm.cfg.connector.qformer
        if q.vocab_size < len(tokenizer):
            raise ConfigError(f"qformer.vocab_size={q.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
        self.aux = Stage1Heads(cfg.stage1, q.hidden_size, q.vocab_size)

    def dataset(self, split: str, workers: int = 1):
        """The split's samples; LLaVA JSON is checked before step 1 on `workers` processes."""
        if self.cfg.llava_data:
            raise ConfigError("stage1 trains on generated image-caption pairs; --data applies to stage2 and instruct")
        return SceneTasks(self.cfg.data.replace(stream="caption"), split)

    def collate(self, samples) -> dict:
        return caption_batch(samples, self.tok)

    def count(self, batch: dict) -> int:
        return len(batch["input_ids"])

    def forward(self, batch: dict) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and "vision" in self.trained_components()):
            image = self.vlm.vision(batch["pixel_values"])
        losses = self.aux.losses(self.vlm.connector.qformer, image, batch["input_ids"], batch["attention_mask"])
        return sum(losses.values()) * len(image)


class Stage2(Stage):
    """BLIP-2 stage 2 / LLaVA feature alignment: the connector learns to caption images for the
    LLM, which stays frozen when it is pretrained (`trainable.decide`)."""

    name = "stage2"

    def dataset(self, split: str, workers: int = 1):
        """The split's samples; LLaVA JSON is checked before step 1 on `workers` processes."""
        if self.cfg.llava_data:
            return super().dataset(split)
        return SceneTasks(self.cfg.data.replace(stream="caption"), split)


class InstructStage(Stage):
    """Instruction tuning on the held-in mix; `trainable.decide` says which parts learn."""

    name = "instruct"

    def dataset(self, split: str, workers: int = 1):
        """The split's samples; LLaVA JSON is checked before step 1 on `workers` processes."""
        if self.cfg.llava_data:
            return super().dataset(split)
        return SceneTasks(self.cfg.data.replace(stream="instruct"), split)


def caption_batch(samples, tok) -> dict:
    """Images and `<bos> caption <eos>` ids (for the contrastive and stage-1 text sides)."""
    ids, mask = text_ids([s.turns[-1][1] for s in samples], tok)
    return {"pixel_values": pixels([s.image for s in samples]), "input_ids": ids, "attention_mask": mask}


STAGES: dict[str, type[Stage]] = {s.name: s for s in (VisionStage, LMStage, Stage1, Stage2, InstructStage)}


def build_stage(cfg: TrainConfig, tokenizer) -> Stage:
    """The stage's modules; `set_trainable(inherited)` follows once `--init` has been loaded."""
    return STAGES[cfg.stage](cfg, tokenizer)
