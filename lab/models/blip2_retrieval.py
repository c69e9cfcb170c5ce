"""BLIP-2's first stage as a retrieval model (transformers' `Blip2ForImageTextRetrieval`): the
vision encoder, the Q-Former with its text side, and the ITC projections and ITM head that stage 1
trains (`blip2_stage1.Stage1Heads`). It is how a stage-1 run is used, and checked, on its own:

- ITC (image-text contrastive): each image's query outputs and each text's [CLS] output are
  projected and normalised; an image-text score is the best match over the queries.
- ITM (image-text matching): queries and text attend to each other over the image; the 2-way head,
  averaged over the queries, says "not matched" / "matched".

The forward takes transformers' arguments and returns its fields, so the two can be compared.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lab.config import Config, ConfigError
from lab.models.qformer import QFormer, QFormerConfig
from lab.models.vision import VisionConfig, VisionEncoder


@dataclasses.dataclass
class RetrievalConfig(Config):
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    qformer: QFormerConfig = dataclasses.field(default_factory=lambda: QFormerConfig(text_input=True, text_ffn=True))
    embed_dim: int = 64  # transformers' image_text_hidden_size (stage 1's Stage1Config.embed_dim)
    # With an id, input_ids start with num_query_tokens image placeholders, which are dropped (as in
    # transformers when the config has an image_token_index); None: input_ids are the text alone.
    image_token_id: int | None = None

    def __post_init__(self) -> None:
        for name, cls in (("vision", VisionConfig), ("qformer", QFormerConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls.from_dict(getattr(self, name)))
        q = self.qformer
        if not (q.text_input and q.text_ffn) or q.instruction_aware:
            raise ConfigError("a retrieval model needs a Q-Former with text_input=True, text_ffn=True (BLIP-2 stage 1)")
        if q.encoder_hidden_size != self.vision.hidden_size:
            raise ConfigError(
                f"qformer.encoder_hidden_size={q.encoder_hidden_size} differs from vision.hidden_size="
                f"{self.vision.hidden_size}"
            )


@dataclasses.dataclass
class RetrievalOutput:
    logits_per_image: torch.Tensor  # ITC: `images texts` similarities; ITM: `b 2` logits
    logits_per_text: torch.Tensor  # its transpose
    image_embeds: torch.Tensor | None = None  # ITC: normalised query embeddings `b nq e`
    text_embeds: torch.Tensor | None = None  # ITC: normalised [CLS] embeddings `b e`


class Blip2Retrieval(nn.Module):
    def __init__(self, cfg: RetrievalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.qformer.hidden_size
        self.vision = VisionEncoder(cfg.vision)
        self.qformer = QFormer(cfg.qformer)
        self.vision_proj = nn.Linear(d, cfg.embed_dim)
        self.text_proj = nn.Linear(d, cfg.embed_dim)
        self.itm_head = nn.Linear(d, 2)

    def _text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, drop_mask: bool):
        """Strip leading image placeholders (when the config has an image token), as transformers does."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {list(attention_mask.shape)} must match input_ids {list(input_ids.shape)}"
            )
        if self.cfg.image_token_id is not None:
            nq = self.cfg.qformer.num_query_tokens
            if input_ids.shape[1] <= nq or bool((input_ids[:, :nq] != self.cfg.image_token_id).any()):
                raise ValueError(f"input_ids must start with {nq} image tokens (id {self.cfg.image_token_id})")
            input_ids = input_ids[:, nq:]
            attention_mask = attention_mask[:, nq:] if drop_mask else attention_mask
        return input_ids, attention_mask

    def get_qformer_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The Q-Former's query outputs `b nq d` (transformers' `get_qformer_features`)."""
        return self.qformer(self.vision(pixel_values))

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised ITC image embeddings `b nq e`, one per query."""
        return F.normalize(self.vision_proj(self.get_qformer_features(pixel_values)), dim=-1)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised ITC text embeddings `b e`: the projected [CLS] (first) position, text alone."""
        ids, mask = self._text(input_ids, attention_mask, drop_mask=True)
        out = self.qformer.encode(self.qformer.embed_text(ids), None, 0, mask.bool())
        return F.normalize(self.text_proj(out[:, 0]), dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        use_image_text_matching_head: bool = False,
    ) -> RetrievalOutput:
        if not use_image_text_matching_head:
            image, text = self.get_image_features(pixel_values), self.get_text_features(input_ids, attention_mask)
            sim = torch.einsum("iqe,te->itq", image, text).amax(-1)
            return RetrievalOutput(sim, sim.T, image, text)
        nq = self.cfg.qformer.num_query_tokens
        ids, mask = self._text(input_ids, attention_mask, drop_mask=False)
        features = self.vision(pixel_values)
        if features.shape[0] != ids.shape[0]:
            raise ValueError(f"ITM pairs image i with text i: {features.shape[0]} images, {ids.shape[0]} texts")
        queries = self.qformer.query_tokens.expand(ids.shape[0], -1, -1)
        if self.cfg.image_token_id is None:  # the placeholders' mask slots stand for the queries otherwise
            mask = torch.cat([mask.new_ones(mask.shape[0], nq), mask], dim=1)
        joint = self.qformer.encode(torch.cat([queries, self.qformer.embed_text(ids)], 1), features, nq, mask.bool())
        logits = self.itm_head(joint[:, :nq]).mean(1)
        return RetrievalOutput(logits, logits.T)
