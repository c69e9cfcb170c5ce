"""OPT decoder (Zhang et al., 2022): BLIP-2's released language models (OPT-2.7b, OPT-6.7b).

What differs from Llama (`llm.py`), and why each is here:
- learned absolute positions, looked up at `position + 2` (fairseq reserved ids 0 and 1 for
  padding; the table has `max_position_embeddings + 2` rows), counted over real tokens only;
- LayerNorm with bias, before each block (`do_layer_norm_before`, most sizes) or after it (350m),
  and a final LayerNorm only in the pre-norm layout;
- a ReLU feed-forward (`fc1`, `fc2`) with biases, and biased attention projections;
- `project_in` / `project_out` when the word embeddings are narrower than the model
  (`word_embed_proj_dim`, 350m), with the head tied to the word embeddings.

The interface is `LanguageModel`'s: `embed(ids)` gives what the VLM writes visual tokens into,
`forward(embeds, attention_mask, position_ids, cache, last_only)` gives logits, and the KV cache
(`llm.KVCache`) and `generate` work unchanged. No dropout, like lab's Llama.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lab.config import Config, ConfigError, check_choice, check_range
from lab.models.attention import ATTN_IMPLS, attention
from lab.models.llm import KVCache, causal_padding_bias
from lab.models.vision import ACTIVATIONS

POSITION_OFFSET = 2


@dataclasses.dataclass
class OPTConfig(Config):
    family: str = "opt"
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 256  # transformers' ffn_dim
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 2048
    do_layer_norm_before: bool = True
    word_embed_proj_dim: int | None = None  # None: hidden_size (no project_in / project_out)
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    layer_norm_eps: float = 1e-5
    hidden_act: str = "relu"
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 2
    eos_token_id: int | None = 2
    pad_token_id: int | None = 1
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        check_choice("llm.family", self.family, ("opt",))
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            check_range(f"llm.{key}", getattr(self, key), 1)
        check_choice("llm.attn_impl", self.attn_impl, ATTN_IMPLS)
        check_choice("llm.hidden_act", self.hidden_act, tuple(ACTIVATIONS))
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"llm.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.word_embed_proj_dim is None:
            self.word_embed_proj_dim = self.hidden_size

    # what KVCache and the generation loop read
    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class OPTAttention(nn.Module):
    def __init__(self, cfg: OPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.enable_bias)  # q, k, v in one GEMM, as in llm.py
        self.o = nn.Linear(d, d, bias=cfg.enable_bias)

    def forward(self, x, mask, layer: int, cache: KVCache | None) -> torch.Tensor:
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=self.cfg.num_heads) for t in self.qkv(x).chunk(3, -1))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = attention(q, k, v, mask, self.cfg.attn_impl, is_causal=mask is None and q.shape[2] > 1)
        return self.o(rearrange(out, "b h t d -> b t (h d)"))


class OPTLayer(nn.Module):
    def __init__(self, cfg: OPTConfig) -> None:
        super().__init__()
        self.pre = cfg.do_layer_norm_before
        affine = cfg.layer_norm_elementwise_affine
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, elementwise_affine=affine)
        self.attn = OPTAttention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, elementwise_affine=affine)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.enable_bias)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.enable_bias)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x, mask, layer, cache):
        x = x + self.attn(self.attn_norm(x) if self.pre else x, mask, layer, cache)
        if not self.pre:
            x = self.attn_norm(x)
        x = x + self.fc2(self.act(self.fc1(self.mlp_norm(x) if self.pre else x)))
        return x if self.pre else self.mlp_norm(x)


class OPTDecoder(nn.Module):
    """Word embeddings `b t e` -> logits `b t vocab` (e = word_embed_proj_dim)."""

    def __init__(self, cfg: OPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, e = cfg.hidden_size, cfg.word_embed_proj_dim
        self.embed = nn.Embedding(cfg.vocab_size, e)
        self.pos_embed = nn.Embedding(cfg.max_position_embeddings + POSITION_OFFSET, d)
        self.project_in = nn.Linear(e, d, bias=False) if e != d else None
        self.layers = nn.ModuleList(OPTLayer(cfg) for _ in range(cfg.num_layers))
        affine = cfg.layer_norm_elementwise_affine
        self.norm = nn.LayerNorm(d, cfg.layer_norm_eps, elementwise_affine=affine) if cfg.do_layer_norm_before else None
        self.project_out = nn.Linear(d, e, bias=False) if e != d else None
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(e, cfg.vocab_size, bias=False)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.embed.weight if self.cfg.tie_word_embeddings else self.lm_head.weight)

    def forward(self, embeds, attention_mask=None, position_ids=None, cache=None, last_only=False) -> torch.Tensor:
        """embeds `b t e`; attention_mask `b (past + t)` over cached and new tokens (1 = real)."""
        x = self.hidden(embeds, attention_mask, position_ids, cache)
        return self.head(x[:, -1:] if last_only else x)

    def hidden(self, embeds, attention_mask=None, position_ids=None, cache=None) -> torch.Tensor:
        """The states the head reads, `b t e` (after the final norm and project_out)."""
        b, t, _ = embeds.shape
        past = cache.length if cache is not None else 0
        if past + t > self.cfg.max_position_embeddings:
            raise ValueError(
                f"a sequence of {past + t} positions exceeds this LLM's max_position_embeddings="
                f"{self.cfg.max_position_embeddings}; shorten the prompt"
            )
        if position_ids is None:
            position_ids = opt_positions(attention_mask, past, t, b, embeds.device)
        x = self.project_in(embeds) if self.project_in is not None else embeds
        x = x + self.pos_embed(position_ids + POSITION_OFFSET).to(x.dtype)
        mask = causal_padding_bias(attention_mask, past, t, x.dtype, x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, i, cache)
        if cache is not None:
            cache.length += t
        if self.norm is not None:
            x = self.norm(x)
        return self.project_out(x) if self.project_out is not None else x


def opt_positions(mask: torch.Tensor | None, past: int, t: int, b: int, device) -> torch.Tensor:
    """OPT's positions: the count of real tokens so far minus one; padding reads position -1."""
    if mask is None:
        return torch.arange(past, past + t, device=device).expand(b, t)
    return ((mask.long().cumsum(-1) * mask.long()) - 1)[:, past : past + t]
