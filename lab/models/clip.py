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
from einops import rearrange
from torch import nn

from lab.config import Config, check_choice


@dataclasses.dataclass
class ClipConfig(Config):
    embed_dim: int = 64
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 128
    init_temperature: float = 0.07
    # Hard-negative captions per image (NegCLIP): the same words bound wrongly. 0 = plain CLIP.
    hard_negatives: int = 0
    token_wise: bool = False  # FILIP's word-to-patch similarity instead of pooled embeddings
    # Weight of a dense, per-cell loss: every patch token must pick out the phrase of its own grid
    # cell ("large red circle at top left", "no objects at center") among all 441 cell phrases.
    dense_weight: float = 0.0
    # What each patch token must name: "phrase" (its cell's whole phrase, one of 441) or "words"
    # (its object's shape, colour and size and its cell's name, each among its own few words).
    dense_targets: str = "phrase"

    def __post_init__(self) -> None:
        check_choice("clip.dense_targets", self.dense_targets, ("phrase", "words"))


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

    def text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids `b t` (keep-mask `b t`) -> contextual text states `b t d`."""
        if ids.shape[1] > self.cfg.max_length:
            raise ValueError(f"caption of {ids.shape[1]} tokens exceeds clip max_length {self.cfg.max_length}")
        x = self.word_embed(ids) + self.pos_embed[: ids.shape[1]]
        return self.text_norm(self.text(x, src_key_padding_mask=~mask.bool()))

    def text_embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids `b t` (keep-mask `b t`) -> unit vectors `b e` (mean over real tokens)."""
        return F.normalize(self.text_proj(self._pooled(ids, mask)), dim=-1)

    def similarity(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image `i` × caption `j` similarity, `i j`, in [-1, 1].

        Global (CLIP): cosine of the mean-pooled embeddings. Token-wise (FILIP, Yao et al. 2022):
        each caption token's best-matching patch, averaged over the caption's tokens,

            s_ij = (1 / |t_j|) · Σ_t max_n <img_i,n , txt_j,t>

        so every word, "circle" included, must find its own patch: a mean-pooled embedding can
        match in-batch captions by colours and cells alone and leave shape out of the patches."""
        if not self.cfg.token_wise:
            return self.image_embed(features) @ self.text_embed(ids, mask).T
        img = F.normalize(self.image_proj(features), dim=-1)
        txt = F.normalize(self.text_proj(self.text_tokens(ids, mask)), dim=-1)
        best = torch.einsum("ine,jte->ijtn", img, txt).amax(-1)
        m = mask.to(best.dtype)
        return (best * m).sum(-1) / m.sum(-1)

    def dense_loss(
        self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, groups=None
    ) -> torch.Tensor:
        """Per-patch classification against text: features `b n dv` (patch tokens last, on a grid
        whose side is a multiple of 3), candidate phrases `p t`, and `target` `b 9 g`: for each cell
        and each group of candidates (`groups`: (start, end) slices of the phrases; one group of all
        by default), the index of the right one. Every patch token of cell c scores a group's
        phrases by cosine and must pick c's; the losses of the groups add up.

        Why: with a pooled loss, what a cell holds can stay spread over its patches, and an LLM
        reading one token at a time never finds "the circle" (ablations/HISTORY.md, "An oracle ViT locates
        the cause")."""
        b, n, _ = features.shape
        g = math.isqrt(n)  # patches per side, CLS (if any) dropped below
        tokens = features[:, n - g * g :] if g * g != n else features
        if (g * g != n and g * g != n - 1) or g % 3:
            raise ValueError(f"dense clip loss needs a patch grid aligned with the 3x3 cells, got {n} tokens")
        cells = rearrange(tokens, "b (r i q j) d -> b (r q) (i j) d", r=3, q=3, i=g // 3, j=g // 3)
        img = F.normalize(self.image_proj(cells), dim=-1)
        txt = F.normalize(self.text_proj(self._pooled(ids, mask)), dim=-1)
        logits = torch.einsum("bcke,pe->bckp", img, txt) * self.logit_scale.exp().clamp(max=100)
        target = target[..., None] if target.ndim == 2 else target
        loss = logits.new_zeros(())
        for g, (lo, hi) in enumerate(groups or [(0, len(txt))]):
            labels = (target[:, :, None, g] - lo).expand(-1, -1, logits.shape[2])
            loss = loss + F.cross_entropy(logits[..., lo:hi].flatten(0, 2), labels.flatten())
        return loss

    def _pooled(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, m = self.text_tokens(ids, mask), mask[..., None].to(torch.float32)
        return (x * m).sum(1) / m.sum(1)

    def loss(self, sim: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        """Symmetric InfoNCE over a square similarity matrix: caption i belongs to image i.
        `negatives` (`b m`, images × hard-negative captions) join every image's candidates, not
        the caption-to-image side: they describe no image of the batch."""
        scale = self.logit_scale.exp().clamp(max=100)
        logits = sim * scale
        target = torch.arange(len(sim), device=sim.device)
        to_text = logits if negatives is None else torch.cat([logits, negatives * scale], dim=1)
        return (F.cross_entropy(to_text, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def retrieval_accuracy(sim: torch.Tensor) -> float:
    """Top-1 image->text retrieval within the batch from its `i j` similarity (chance = 1 / batch)."""
    return sim.argmax(1).eq(torch.arange(len(sim), device=sim.device)).float().mean().item()
