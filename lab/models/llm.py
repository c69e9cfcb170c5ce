"""Llama-family decoder: RMSNorm, rotary positions, SwiGLU, grouped-query attention, KV cache."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lab.config import Config, ConfigError, check_choice, check_range
from lab.models.attention import ATTN_IMPLS, attention
from lab.models.vision import ACTIVATIONS


@dataclasses.dataclass
class LLMConfig(Config):
    family: str = "llama"  # "opt": `opt.OPTConfig` (a config's "family" key picks the class)
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 172
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # defaults to hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        check_choice("llm.family", self.family, ("llama",))
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            check_range(f"llm.{key}", getattr(self, key), 1)
        check_choice("llm.attn_impl", self.attn_impl, ATTN_IMPLS)
        check_choice("llm.hidden_act", self.hidden_act, tuple(ACTIVATIONS))
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"llm.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"llm.num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"llm.head_dim {self.head_dim} must be even for rotary embeddings")


class KVCache:
    """Preallocated keys/values `b hkv tmax d` per layer; `length` tokens are filled."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, batch: int, max_len: int, device, dtype) -> None:
        shape = (batch, kv_heads, max_len, head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.length = 0
        self.max_len = max_len

    @classmethod
    def for_decoder(cls, cfg, batch: int, max_len: int, device, dtype) -> KVCache:
        """A cache shaped for a decoder-only LLM's config (Llama or OPT)."""
        return cls(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, batch, max_len, device, dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} positions cannot hold {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]


class Rotary(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions `b t` -> cos, sin `b 1 t d`."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.sizes = (h * d, hkv * d, hkv * d)
        # q, k and v in one GEMM: fewer, larger matmuls are what small-batch decoding is bound by.
        self.qkv = nn.Linear(cfg.hidden_size, sum(self.sizes), bias=cfg.attention_bias)
        self.o = nn.Linear(h * d, cfg.hidden_size, bias=cfg.attention_bias)

    def forward(self, x, cos, sin, mask, layer: int, cache: KVCache | None) -> torch.Tensor:
        q, k, v = self.qkv(x).split(self.sizes, dim=-1)
        q = rearrange(q, "b t (h d) -> b h t d", d=self.cfg.head_dim)
        k = rearrange(k, "b t (h d) -> b h t d", d=self.cfg.head_dim)
        v = rearrange(v, "b t (h d) -> b h t d", d=self.cfg.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        is_causal = mask is None and q.shape[2] > 1
        out = attention(q, k, v, mask, self.cfg.attn_impl, is_causal=is_causal)
        return self.o(rearrange(out, "b h t d -> b t (h d)"))


class SwiGLU(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)  # one GEMM
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 like Llama, then scale in the input dtype.
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * y


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = LlamaAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, mask, layer, cache):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, layer, cache)
        return x + self.mlp(self.mlp_norm(x))


class LanguageModel(nn.Module):
    """Embeddings `b t d` -> logits `b t vocab`; positions and padding come from the caller."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        return F.linear(h, weight)

    def forward(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """embeds `b t d`; attention_mask `b (past + t)` over cached and new tokens (1 = real)."""
        x = self.hidden(embeds, attention_mask, position_ids, cache)
        return self.head(x[:, -1:] if last_only else x)

    def hidden(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The final normed hidden states `b t d` that the head reads (what the probes read too)."""
        b, t, _ = embeds.shape
        past = cache.length if cache is not None else 0
        if past + t > self.cfg.max_position_embeddings:
            raise ValueError(
                f"a sequence of {past + t} positions exceeds this LLM's max_position_embeddings="
                f"{self.cfg.max_position_embeddings}; shorten the prompt"
            )
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past, t, b, embeds.device)
        cos, sin = self.rotary(position_ids, embeds.dtype)
        mask = causal_padding_bias(attention_mask, past, t, embeds.dtype, embeds.device)
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, i, cache)
        if cache is not None:
            cache.length += t
        return self.norm(x)


def positions_from_mask(mask: torch.Tensor | None, past: int, t: int, b: int, device) -> torch.Tensor:
    """Rotary positions that skip padding, so a left-padded row starts at position 0."""
    if mask is None:
        return torch.arange(past, past + t, device=device).expand(b, t)
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)[:, past : past + t]


def causal_padding_bias(mask, past: int, t: int, dtype, device) -> torch.Tensor | None:
    """Additive `b 1 t (past+t)` bias; None when plain causal attention suffices. Under torch.compile
    the bias is always built: testing the mask would read a tensor on the host and break the graph."""
    if mask is None or (not torch.compiler.is_compiling() and bool(mask.all())):
        if t == 1 or past == 0:
            return None  # decode step sees everything; prefill uses is_causal
        keep = torch.ones(1, past + t, dtype=torch.bool, device=device)
    else:
        keep = mask.bool()
    total = past + t
    causal = torch.ones(t, total, dtype=torch.bool, device=device).tril(past)
    allowed = causal[None] & keep[:, None, :]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias[:, None]
