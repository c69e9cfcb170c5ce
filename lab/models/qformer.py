"""Q-Former: BERT-style layers over learned query tokens that read the image by cross-attention.

BLIP-2 feeds only the queries. InstructBLIP (`instruction_aware=True`) also embeds the
instruction and appends its tokens after the queries, so self-attention lets the queries see
what is being asked before they look at the image. Queries and text tokens share attention
but have separate feed-forwards; only the queries cross-attend, every
`cross_attention_frequency`-th layer.
"""

from __future__ import annotations

import dataclasses

import torch
from einops import rearrange
from torch import nn

from lab.config import Config, ConfigError, check_choice, check_range
from lab.models.attention import attention, padding_bias
from lab.models.vision import ACTIVATIONS

QFORMER_ATTN_IMPLS = ("eager", "sdpa", "triton")


@dataclasses.dataclass
class QFormerConfig(Config):
    """Defaults: the one Q-Former of lab's scene model (every preset, `--model.connector qformer`
    and a YAML `connector: {kind: qformer}` get these); real checkpoints set every field."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    encoder_hidden_size: int = 64  # width of the image features it cross-attends to
    cross_attention_frequency: int = 1
    num_query_tokens: int = 8
    instruction_aware: bool = False
    text_input: bool = False  # word embeddings for BLIP-2 stage 1 (ITC/ITM/ITG); dropped in stage 2
    text_ffn: bool = False  # text-position feed-forwards; always present when instruction-aware
    vocab_size: int = 128  # instruction vocabulary (instruction-aware only): the scene word tokenizer's
    max_position_embeddings: int = 64
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    attn_impl: str = "sdpa"  # cross-attention: "eager" | "sdpa" | "triton" (fused K/V projection)

    def __post_init__(self) -> None:
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_query_tokens"):
            check_range(f"qformer.{key}", getattr(self, key), 1)
        for key in ("attention_dropout", "hidden_dropout"):
            check_range(f"qformer.{key}", getattr(self, key), 0, 0.999)
        check_choice("qformer.attn_impl", self.attn_impl, QFORMER_ATTN_IMPLS)
        check_choice("qformer.hidden_act", self.hidden_act, tuple(ACTIVATIONS))
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"qformer.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.cross_attention_frequency < 1:
            raise ConfigError("qformer.cross_attention_frequency must be >= 1")
        if self.attn_impl == "triton" and self.attention_dropout > 0:
            raise ConfigError(
                "qformer.attn_impl='triton' has no attention dropout; set qformer.attention_dropout=0.0 "
                f"(got {self.attention_dropout}) or use 'sdpa'"
            )
        if self.instruction_aware or self.text_input:
            self.text_ffn = True

    @property
    def reads_text(self) -> bool:
        return self.instruction_aware or self.text_input


class BertAttention(nn.Module):
    """Multi-head attention + output projection + post-LayerNorm residual (BERT's layout)."""

    def __init__(self, cfg: QFormerConfig, kv_dim: int, cross: bool) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads, self.dropout = cfg.num_heads, cfg.attention_dropout
        self.impl = cfg.attn_impl if cross else ("eager" if cfg.attn_impl == "eager" else "sdpa")
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(kv_dim, d)
        self.v = nn.Linear(kv_dim, d)
        self.o = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.hidden_dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: `b nq d`, kv: `b nk dkv`, key_mask: `b nk` bool (True = attend) or an additive
        float bias `b 1 nq nk` (stage-1's causal and query-only masks)."""
        dropout = self.dropout if self.training else 0.0
        if self.impl == "triton":
            from lab_kernels import projected_cross_attention

            out = projected_cross_attention(
                self.q(x),
                kv,
                self.k.weight,
                self.k.bias,
                self.v.weight,
                self.v.bias,
                self.num_heads,
                key_padding_mask=key_mask,
            )
        else:
            q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.num_heads)
            k = rearrange(self.k(kv), "b t (h d) -> b h t d", h=self.num_heads)
            v = rearrange(self.v(kv), "b t (h d) -> b h t d", h=self.num_heads)
            mask = key_mask
            if mask is not None and not mask.is_floating_point():
                mask = padding_bias(mask, q.dtype)
            out = rearrange(attention(q, k, v, mask, self.impl, dropout), "b h t d -> b t (h d)")
        return self.norm(self.hidden_dropout(self.o(out)) + x)


class BertFeedForward(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.fc2(self.act(self.fc1(x)))) + x)


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, index: int) -> None:
        super().__init__()
        self.self_attn = BertAttention(cfg, cfg.hidden_size, cross=False)
        has_cross = index % cfg.cross_attention_frequency == 0
        self.cross_attn = BertAttention(cfg, cfg.encoder_hidden_size, cross=True) if has_cross else None
        self.ffn_query = BertFeedForward(cfg)
        self.ffn_text = BertFeedForward(cfg) if cfg.text_ffn else None

    def forward(
        self,
        x: torch.Tensor,
        image: torch.Tensor,
        num_queries: int,
        key_mask: torch.Tensor | None,
        image_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = self.self_attn(x, x, key_mask)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if num_queries == 0:  # text alone (stage-1 ITC text side): no image, no query FFN
            return self.ffn_text(text)
        if self.cross_attn is not None:
            queries = self.cross_attn(queries, image, image_mask)
        queries = self.ffn_query(queries)
        if text.shape[1] == 0:
            return queries
        return torch.cat([queries, self.ffn_text(text)], dim=1)


class QFormer(nn.Module):
    """image features `b nk dv` (+ instruction `b ni`) -> query outputs `b nq d`."""

    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.query_tokens = nn.Parameter(torch.randn(cfg.num_query_tokens, d) * 0.02)
        if cfg.reads_text:
            self.word_embed = nn.Embedding(cfg.vocab_size, d)
            self.pos_embed = nn.Embedding(cfg.max_position_embeddings, d)
        self.embed_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.embed_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(QFormerLayer(cfg, i) for i in range(cfg.num_layers))

    def forward(
        self,
        image: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, nq = image.shape[0], self.cfg.num_query_tokens
        if image.ndim != 3 or image.shape[-1] != self.cfg.encoder_hidden_size:
            raise ValueError(
                f"Q-Former expects image features [batch, tokens, {self.cfg.encoder_hidden_size}], "
                f"got {list(image.shape)}"
            )
        x = self.query_tokens.expand(b, -1, -1)
        key_mask = None
        if instruction_ids is not None:
            if not self.cfg.instruction_aware:
                raise ValueError(
                    "instruction_ids were given, but this Q-Former has plain (BLIP-2) queries; "
                    "set qformer.instruction_aware=True to use instruction-aware queries"
                )
            if instruction_ids.ndim != 2 or instruction_ids.shape[0] != b:
                raise ValueError(f"instruction_ids must be [batch={b}, length], got {list(instruction_ids.shape)}")
            x = torch.cat([x, self.embed_text(instruction_ids).to(x.dtype)], dim=1)
            if instruction_mask is not None:
                ones = torch.ones(b, nq, dtype=torch.bool, device=x.device)
                key_mask = torch.cat([ones, instruction_mask.bool()], dim=1)
        elif self.cfg.instruction_aware:
            raise ValueError("this Q-Former is instruction-aware: pass instruction_ids (and instruction_mask)")
        return self.encode(x, image, nq, key_mask, image_mask)[:, :nq]

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Word + position embeddings `b t d` (before the shared LayerNorm)."""
        if not self.cfg.reads_text:
            raise ValueError("this Q-Former has no word embeddings (set instruction_aware or text_input)")
        n = ids.shape[1]
        if n > self.cfg.max_position_embeddings:
            raise ValueError(f"text of {n} tokens exceeds qformer.max_position_embeddings")
        return self.word_embed(ids) + self.pos_embed(torch.arange(n, device=ids.device))

    def encode(
        self,
        x: torch.Tensor,
        image: torch.Tensor | None,
        num_queries: int,
        mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the layers over `x` = [queries; text] embeddings `b (nq + t) d`. `mask` is a `b n`
        keep-mask or an additive `b 1 n n` bias; the first `num_queries` positions cross-attend."""
        x = self.embed_dropout(self.embed_norm(x))
        for layer in self.layers:
            x = layer(x, image, num_queries, mask, image_mask)
        return x


@torch.no_grad()
def cross_attention_maps(
    qformer: QFormer,
    image: torch.Tensor,
    instruction_ids: torch.Tensor | None = None,
    instruction_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Attention probabilities `b h nq nk` of the queries over image tokens, one per
    cross-attention layer (recomputed from each layer's inputs; for inspection, not training)."""
    captured: list[tuple[BertAttention, torch.Tensor, torch.Tensor]] = []
    hooks = [
        layer.cross_attn.register_forward_hook(lambda m, args, _out: captured.append((m, args[0], args[1])))
        for layer in qformer.layers
        if layer.cross_attn is not None
    ]
    try:
        qformer(image, instruction_ids, instruction_mask)
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for m, x, kv in captured:
        q = rearrange(m.q(x), "b t (h d) -> b h t d", h=m.num_heads)
        k = rearrange(m.k(kv), "b t (h d) -> b h t d", h=m.num_heads)
        maps.append(torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1))
    return maps
