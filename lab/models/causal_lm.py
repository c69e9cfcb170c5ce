"""A language model on its own, called the way transformers calls one: what `from_transformers`
returns for `LlamaForCausalLM` and `OPTForCausalLM`, so a researcher can check lab's decoder
against a real checkpoint before putting it behind a vision encoder."""

from __future__ import annotations

import torch
from torch import nn

from lab.models.generation import generate, resolve_generation_args
from lab.models.llm import LLMConfig
from lab.models.opt import OPTConfig
from lab.models.vlm import VLMOutput, build_llm, check_text_inputs, next_token_loss


class CausalLM(nn.Module):
    def __init__(self, cfg: LLMConfig | OPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.generation_config: dict = {}  # the checkpoint's generate defaults (lab.convert fills it)
        self.llm = build_llm(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> VLMOutput:
        check_text_inputs(input_ids, attention_mask, labels)
        logits = self.llm(self.llm.embed(input_ids), attention_mask)
        return VLMOutput(logits=logits, loss=None if labels is None else next_token_loss(logits, labels))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Prompt plus new tokens per row, with the VLM's keywords and defaults (`VisionLanguageModel.generate`)."""
        args = resolve_generation_args(kwargs, self.generation_config, self.cfg)
        return generate(self.llm, input_ids, self.llm.embed(input_ids), attention_mask, generator=generator, **args)
