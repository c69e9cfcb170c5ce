"""A language model on its own, called the way transformers calls one: what `from_transformers`
returns for `LlamaForCausalLM`, `OPTForCausalLM` (`CausalLM`) and `T5ForConditionalGeneration`
(`Seq2SeqLM`), so a researcher can check lab's language model against a real checkpoint before
putting it behind a vision encoder."""

from __future__ import annotations

import torch
from torch import nn

from lab.models.generation import resolve_generation_args
from lab.models.llm import LLMConfig
from lab.models.opt import OPTConfig
from lab.models.t5 import T5Config
from lab.models.vlm import VLMOutput, build_llm, generate_text, llm_logits


class CausalLM(nn.Module):
    def __init__(self, cfg: LLMConfig | OPTConfig | T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.generation_config: dict = {}  # the checkpoint's generate defaults (lab.convert fills it)
        self.llm = build_llm(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> VLMOutput:
        embeds = self.llm.embed(input_ids)
        return llm_logits(
            self.llm, embeds, input_ids, attention_mask, labels, decoder_input_ids, decoder_attention_mask
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """New tokens per row, with the VLM's keywords and defaults (`VisionLanguageModel.generate`)."""
        args = resolve_generation_args(kwargs, self.generation_config, self.cfg)
        embeds = self.llm.embed(input_ids)
        return generate_text(self.llm, input_ids, embeds, attention_mask, generator=generator, **args)


class Seq2SeqLM(CausalLM):
    """T5 on its own: `input_ids` feed the encoder; the decoder reads `decoder_input_ids` (default:
    `labels` shifted right), and `generate` returns decoder tokens from the start token."""
