"""VisionLanguageModel: vision encoder -> connector -> visual embeddings placed at the image
placeholder tokens of `input_ids` -> language model: a Llama or OPT decoder, or a T5 encoder
(whose decoder then writes the answer, as in BLIP-2's and InstructBLIP's Flan-T5 models). The
placeholder convention is the one transformers uses today, so converted checkpoints see exactly the
same sequence."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lab.config import Config, ConfigError
from lab.models.connectors import ConnectorConfig, build_connector
from lab.models.generation import generate, generate_causal, resolve_generation_args
from lab.models.llm import LanguageModel, LLMConfig
from lab.models.lora import LoRAConfig
from lab.models.opt import OPTConfig, OPTDecoder
from lab.models.t5 import T5Config, T5Decoding, T5Model
from lab.models.vision import VisionConfig, VisionEncoder

LLM_CONFIGS = {"llama": LLMConfig, "opt": OPTConfig, "t5": T5Config}  # a config's "family" key picks


@dataclasses.dataclass
class VLMConfig(Config):
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    connector: ConnectorConfig = dataclasses.field(default_factory=ConnectorConfig)
    llm: LLMConfig | OPTConfig | T5Config = dataclasses.field(default_factory=LLMConfig)  # Llama/Vicuna, OPT, T5
    image_token_id: int = 3
    # True / False, or "auto": read by the training stage (`lab.train.trainable`, which decides and
    # applies what trains): with "auto", a part loaded from --init keeps the stage's default, a part
    # with random weights is trained.
    freeze_vision: bool | str = False
    freeze_llm: bool | str = False
    # MiniGPT-4: the Q-Former connector's Q-Former stays frozen and only its projection into the
    # LLM trains (`lab.train.trainable` checks that the Q-Former was loaded from --init).
    freeze_qformer: bool = False
    # LoRA adapters (r > 0) on a pretrained part: its weights stay frozen and the adapters train
    # (`lab.train.trainable` decides, `lab.models.lora` attaches them through peft).
    llm_lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    vision_lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        if isinstance(self.llm, dict):
            self.llm = LLM_CONFIGS.get(self.llm.get("family", "llama"), LLMConfig).from_dict(self.llm)
        parts = (("vision", VisionConfig), ("connector", ConnectorConfig))
        for name, cls in (*parts, ("llm_lora", LoRAConfig), ("vision_lora", LoRAConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls.from_dict(getattr(self, name)))
        for flag in ("freeze_vision", "freeze_llm"):
            if getattr(self, flag) not in (True, False, "auto"):
                raise ConfigError(f"{flag}={getattr(self, flag)!r} is not allowed; choose true, false or 'auto'")
        if not 0 <= self.image_token_id < self.llm.vocab_size:
            raise ConfigError(f"image_token_id {self.image_token_id} outside the vocabulary of {self.llm.vocab_size}")

    @property
    def image_tokens(self) -> int:
        """LLM placeholder tokens per image."""
        return self.connector.num_tokens(self.vision.features)


@dataclasses.dataclass
class VLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


def build_llm(cfg: LLMConfig | OPTConfig | T5Config) -> LanguageModel | OPTDecoder | T5Model:
    return {"opt": OPTDecoder, "t5": T5Model}.get(cfg.family, LanguageModel)(cfg)


def check_text_inputs(input_ids: torch.Tensor, attention_mask=None, labels=None, name: str = "input_ids") -> None:
    for key, t in (("attention_mask", attention_mask), ("labels", labels)):
        if t is not None and t.shape != input_ids.shape:
            raise ValueError(f"{key} {list(t.shape)} must match {name} {list(input_ids.shape)}")


def llm_logits(
    llm, embeds, input_ids, attention_mask=None, labels=None, decoder_input_ids=None, decoder_attention_mask=None
) -> VLMOutput:
    """The language model's logits and loss. A decoder scores each position against the next label;
    T5's decoder reads `decoder_input_ids` (by default the labels shifted right after the start
    token) and scores each position against its own label, as transformers does."""
    check_text_inputs(input_ids, attention_mask)
    if llm.cfg.family != "t5":
        if decoder_input_ids is not None or decoder_attention_mask is not None:
            raise ValueError(f"decoder_input_ids / decoder_attention_mask are for T5, not a {llm.cfg.family} LLM")
        check_text_inputs(input_ids, attention_mask, labels)
        logits = llm(embeds, attention_mask)
        return VLMOutput(logits=logits, loss=None if labels is None else next_token_loss(logits, labels))
    if decoder_input_ids is None and labels is not None:
        decoder_input_ids = llm.shift_right(labels)
    if decoder_input_ids is not None:
        check_text_inputs(decoder_input_ids, decoder_attention_mask, labels, "decoder_input_ids")
    logits = llm(embeds, attention_mask, decoder_input_ids, decoder_attention_mask)
    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    return VLMOutput(logits=logits, loss=loss)


def generate_text(llm, input_ids, embeds, attention_mask, **args) -> torch.Tensor:
    """A decoder's prompt plus new tokens, or T5's decoder start token plus new tokens (as transformers)."""
    if llm.cfg.family != "t5":
        return generate_causal(llm, input_ids, embeds, attention_mask, **args)
    decoding = T5Decoding(llm, embeds, attention_mask, max(args.get("max_new_tokens", 20), 0))
    return generate(decoding, decoding.start, **args)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each position's logits against the next label (-100: not scored)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig) -> None:
        super().__init__()
        self.generation_config: dict = {}  # a checkpoint's generate defaults (lab.convert fills it)
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.connector = build_connector(cfg.connector, cfg.vision.features, cfg.llm.hidden_size)
        if cfg.llm.family == "opt" and cfg.llm.word_embed_proj_dim != cfg.llm.hidden_size:
            raise ConfigError(
                f"llm.word_embed_proj_dim={cfg.llm.word_embed_proj_dim} differs from llm.hidden_size="
                f"{cfg.llm.hidden_size}: visual tokens (hidden_size wide, as in transformers' BLIP-2) cannot be "
                "written into narrower word embeddings; use an OPT whose two sizes match (2.7b, 6.7b)"
            )
        self.llm = build_llm(cfg.llm)
        # The freeze flags are read by a training stage only: `lab.train.trainable` decides what trains
        # and applies it. A model built or loaded here has every parameter trainable, as torch's are.

    def visual_embeddings(self, pixel_values, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        """pixels `b 3 H W` -> visual embeddings `b nv d_llm`."""
        features = self.vision(pixel_values)
        return self.connector(features, instruction_ids, instruction_mask)

    def get_image_features(self, pixel_values, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        """What the LLM receives for each image, `b nv d_llm` (transformers' `get_image_features(...)
        .pooler_output` for BLIP-2 and InstructBLIP)."""
        return self.visual_embeddings(pixel_values, instruction_ids, instruction_mask)

    def input_embeddings(self, input_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Token embeddings with `visual` written over the image placeholders, row by row."""
        if input_ids.ndim != 2 or input_ids.shape[0] != visual.shape[0]:
            raise ValueError(
                f"input_ids must be [batch={visual.shape[0]}, length] to match pixel_values, "
                f"got {list(input_ids.shape)}"
            )
        is_image = input_ids == self.cfg.image_token_id
        counts = is_image.sum(1)
        if bool((counts != visual.shape[1]).any()):
            raise ValueError(
                f"each row of input_ids needs {visual.shape[1]} image placeholder tokens "
                f"(id {self.cfg.image_token_id}) for the visual features, got {counts.tolist()}"
            )
        embeds = self.llm.embed(input_ids)
        return embeds.masked_scatter(is_image[..., None], visual.to(embeds.dtype))

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> VLMOutput:
        """Logits (and the loss, with labels). With a T5 LLM, `input_ids` is the encoder's prompt and
        the decoder reads `decoder_input_ids` (default: the labels shifted right), as in transformers."""
        visual = self.visual_embeddings(pixel_values, instruction_ids, instruction_mask)
        embeds = self.input_embeddings(input_ids, visual)
        return llm_logits(
            self.llm, embeds, input_ids, attention_mask, labels, decoder_input_ids, decoder_attention_mask
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Prompt plus new tokens per row `b (t + new)`, with transformers' keywords and meaning:
        max_new_tokens, min_new_tokens, eos_token_id (int or list; [] never stops), pad_token_id,
        do_sample, temperature, top_k, top_p, num_beams, length_penalty, repetition_penalty.

        A keyword left out (or None) comes from `self.generation_config` (a checkpoint's
        generation_config.json, set by lab.convert), then, for eos and pad, from the LLM's config.
        Padded prompts must be left-padded; rows that finish are filled with pad (default: eos).
        With a T5 LLM the result is the decoder's tokens, from its start token, as in transformers."""
        args = resolve_generation_args(kwargs, self.generation_config, self.cfg.llm)
        visual = self.visual_embeddings(pixel_values, instruction_ids, instruction_mask)
        embeds = self.input_embeddings(input_ids, visual)
        return generate_text(self.llm, input_ids, embeds, attention_mask, generator=generator, **args)
