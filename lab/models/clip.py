"""CLIP-style contrastive heads: how stage 0 pretrains the vision encoder on image-caption pairs.

A small bidirectional text transformer and two projections into a shared space. Only the vision
encoder is kept for later stages; the heads stay in the stage's checkpoint so a tuned encoder's
image-text retrieval can be measured against them later (how much it forgot).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from lab.config import Config


@dataclasses.dataclass
class ClipConfig(Config):
    embed_dim: int = 64
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 128
    init_temperature: float = 0.07


class ContrastiveHeads(nn.Module):
    def __init__(self, cfg: ClipConfig, vision_dim: int, vocab_size: int) -> None:
        super().__init__()
        d = cfg.text_hidden_size
        self.cfg = cfg
        self.word_embed = nn.Embedding(vocab_size, d)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.text_heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.text = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(d)
        self.image_proj = nn.Linear(vision_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(d, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    def image_embed(self, features: torch.Tensor) -> torch.Tensor:
        """Vision tokens `b n dv` -> unit vectors `b e` (mean over tokens)."""
        return F.normalize(self.image_proj(features.mean(1)), dim=-1)

    def text_embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids `b t` (keep-mask `b t`) -> unit vectors `b e` (mean over real tokens)."""
        if ids.shape[1] > self.cfg.max_length:
            raise ValueError(f"caption of {ids.shape[1]} tokens exceeds clip max_length {self.cfg.max_length}")
        x = self.word_embed(ids) + self.pos_embed[: ids.shape[1]]
        x = self.text_norm(self.text(x, src_key_padding_mask=~mask.bool()))
        m = mask[..., None].to(x.dtype)
        return F.normalize(self.text_proj((x * m).sum(1) / m.sum(1)), dim=-1)

    def loss(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch: the i-th caption belongs to the i-th image."""
        logits = image @ text.T * self.logit_scale.exp().clamp(max=100)
        target = torch.arange(len(image), device=image.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def retrieval_accuracy(image: torch.Tensor, text: torch.Tensor) -> float:
    """Top-1 image->text retrieval within the batch (chance = 1 / batch)."""
    return (image @ text.T).argmax(1).eq(torch.arange(len(image), device=image.device)).float().mean().item()
