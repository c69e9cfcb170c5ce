"""T5 encoder-decoder (Raffel et al., 2020), as Flan-T5 (Chung et al., 2022) uses it: the language
model of BLIP-2's and InstructBLIP's Flan-T5 checkpoints.

What differs from the decoders (`llm.py`, `opt.py`), and why each is here:
- an encoder reads the prompt (with the visual tokens written into its embeddings, as BLIP-2 and
  InstructBLIP do) and a decoder writes the answer, cross-attending to the encoder's states;
- no position embeddings: each stack's first layer owns a table of learned biases, one per head and
  per *bucket* of relative distance (`relative_bucket`), added to every layer's attention logits;
  the encoder's buckets are bidirectional, the decoder's causal. Cross-attention has no bias;
- no 1/√d scaling of the attention logits (T5 folds it into the initialisation);
- T5's RMS norm (no mean, no bias), a gated-GELU feed-forward (Flan-T5, T5 v1.1) or a ReLU one
  (T5 v1.0), no biases anywhere;
- a head tied to the word embeddings scales its input by d_model^-0.5 (T5 v1.0); Flan-T5's head
  is untied and unscaled.

Interface: `embed(ids)` gives the encoder's input embeddings (what the VLM writes visual tokens
into), `forward(embeds, attention_mask, decoder_input_ids, decoder_attention_mask)` gives the
decoder's logits, and `T5Decoding` runs the encoder and the cross-attention projections once and
then decodes one token at a time with a self-attention KV cache (`generation.generate`). No dropout.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lab.config import Config, check_choice, check_range
from lab.models.attention import ATTN_IMPLS, attention, padding_bias
from lab.models.llm import KVCache, RMSNorm
from lab.models.vision import ACTIVATIONS


@dataclasses.dataclass
class T5Config(Config):
    family: str = "t5"
    vocab_size: int = 512
    hidden_size: int = 64  # transformers' d_model
    head_dim: int = 16  # d_kv: num_heads * head_dim need not equal hidden_size
    intermediate_size: int = 128  # d_ff
    num_layers: int = 2  # encoder layers
    num_decoder_layers: int | None = None  # None: num_layers
    num_heads: int = 4
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_eps: float = 1e-6
    gated: bool = True  # "gated-gelu" (Flan-T5) vs a plain "relu" feed-forward (T5 v1.0)
    hidden_act: str = "gelu_tanh"  # transformers' gelu_new
    # A tied head reads the shared embeddings and scales by hidden_size**-0.5 (T5 v1.0); Flan-T5's is
    # untied and unscaled. Every released T5 pairs the two, as transformers' config flag does.
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 512  # no position table; the longest prompt lab's tokenizer builds
    bos_token_id: int | None = None
    eos_token_id: int | None = 1
    pad_token_id: int | None = 0
    decoder_start_token_id: int = 0
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        check_choice("llm.family", self.family, ("t5",))
        for key in ("vocab_size", "hidden_size", "head_dim", "intermediate_size", "num_layers", "num_heads"):
            check_range(f"llm.{key}", getattr(self, key), 1)
        check_range("llm.relative_attention_num_buckets", self.relative_attention_num_buckets, 4)
        check_range("llm.relative_attention_max_distance", self.relative_attention_max_distance, 2)
        check_choice("llm.attn_impl", self.attn_impl, ATTN_IMPLS)
        check_choice("llm.hidden_act", self.hidden_act, tuple(ACTIVATIONS))
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        check_range("llm.num_decoder_layers", self.num_decoder_layers, 1)


def relative_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative distance (key position - query position).

    Bidirectional: half the buckets for keys after the query, half for keys before. Within a half,
    distances below n/2 get a bucket each; larger ones share log-spaced buckets up to
    `max_distance`, beyond which all fall in the last. Causal: only keys at or before the query."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class RelativeBias(nn.Module):
    """Learned bias `1 h tq tk` per head and relative-distance bucket; one per stack, every layer adds it."""

    def __init__(self, cfg: T5Config, bidirectional: bool) -> None:
        super().__init__()
        self.cfg, self.bidirectional = cfg, bidirectional
        self.weight = nn.Parameter(torch.zeros(cfg.relative_attention_num_buckets, cfg.num_heads))

    def forward(self, tq: int, tk: int, past: int = 0) -> torch.Tensor:
        query = torch.arange(past, past + tq, device=self.weight.device)[:, None]
        key = torch.arange(tk, device=self.weight.device)[None, :]
        cfg = self.cfg
        bucket = relative_bucket(
            key - query, self.bidirectional, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        return rearrange(F.embedding(bucket, self.weight), "q k h -> 1 h q k")


class T5Attention(nn.Module):
    """Unscaled multi-head attention; `bias` carries the position bias and the masks."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        inner = cfg.num_heads * cfg.head_dim
        self.q = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.k = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.v = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.o = nn.Linear(inner, cfg.hidden_size, bias=False)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b t (h d) -> b h t d", h=self.cfg.num_heads)

    def kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k(states)), self.heads(self.v(states))

    def forward(self, x, bias, k=None, v=None, layer: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """Self-attention when k, v are None (keys from `x`, cached if `cache`); else cross-attention."""
        q = self.heads(self.q(x))
        if k is None:
            k, v = self.kv(x)
            if cache is not None:
                k, v = cache.update(layer, k, v)
        out = attention(q, k, v, bias.to(q.dtype), self.cfg.attn_impl, scale=1.0)
        return self.o(rearrange(out, "b h t d -> b t (h d)"))


class T5FeedForward(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.gated = cfg.gated
        self.wi = nn.Linear(cfg.hidden_size, (2 if cfg.gated else 1) * cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.wo(self.act(self.wi(x)))
        gate, up = self.wi(x).chunk(2, dim=-1)  # wi_0 and wi_1 in one GEMM
        return self.wo(self.act(gate) * up)


class T5Layer(nn.Module):
    def __init__(self, cfg: T5Config, decoder: bool) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.attn = T5Attention(cfg)
        if decoder:
            self.cross_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps)
            self.cross = T5Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.mlp = T5FeedForward(cfg)

    def forward(self, x, bias, layer=0, cache=None, cross_kv=None, cross_bias=None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), bias, layer=layer, cache=cache)
        if cross_kv is not None:
            x = x + self.cross(self.cross_norm(x), cross_bias, *cross_kv)
        return x + self.mlp(self.mlp_norm(x))


class T5Stack(nn.Module):
    def __init__(self, cfg: T5Config, decoder: bool) -> None:
        super().__init__()
        self.decoder = decoder
        n = cfg.num_decoder_layers if decoder else cfg.num_layers
        self.rel_bias = RelativeBias(cfg, bidirectional=not decoder)
        self.layers = nn.ModuleList(T5Layer(cfg, decoder) for _ in range(n))
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps)


class T5Model(nn.Module):
    """Encoder embeddings `b s d` + decoder ids `b t` -> decoder logits `b t vocab`."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)  # shared by encoder, decoder (and tied head)
        self.encoder = T5Stack(cfg, decoder=False)
        self.decoder = T5Stack(cfg, decoder=True)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.cfg.tie_word_embeddings:
            return F.linear(h * self.cfg.hidden_size**-0.5, self.embed.weight)
        return self.lm_head(h)

    def encode(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's final normed states `b s d` (bidirectional; padding keys masked)."""
        s = embeds.shape[1]
        bias = self.encoder.rel_bias(s, s)
        if attention_mask is not None:
            bias = bias + padding_bias(attention_mask, bias.dtype)
        x = embeds
        for layer in self.encoder.layers:
            x = layer(x, bias)
        return self.encoder.norm(x)

    def cross_kv(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values: computed once per prompt."""
        return [layer.cross.kv(encoded) for layer in self.decoder.layers]

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        cross_kv: list[tuple[torch.Tensor, torch.Tensor]],
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Decoder logits `b t vocab` for new decoder tokens after `cache.length` cached ones."""
        t = decoder_input_ids.shape[1]
        past = cache.length if cache is not None else 0
        x = self.embed(decoder_input_ids)
        bias = self.decoder.rel_bias(t, past + t, past)
        causal = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
        bias = bias.masked_fill(~causal, torch.finfo(bias.dtype).min)
        if decoder_attention_mask is not None:
            bias = bias + padding_bias(decoder_attention_mask, bias.dtype)
        cross_bias = torch.zeros(1, 1, 1, 1, dtype=x.dtype, device=x.device)
        if attention_mask is not None:
            cross_bias = padding_bias(attention_mask, x.dtype)
        for i, layer in enumerate(self.decoder.layers):
            x = layer(x, bias, i, cache, cross_kv[i], cross_bias)
        if cache is not None:
            cache.length += t
        return self.head(self.decoder.norm(x))

    def forward(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if decoder_input_ids is None:
            raise ValueError("a T5 forward needs decoder_input_ids or labels (which shift right into them)")
        encoded = self.encode(embeds, attention_mask)
        return self.decode(decoder_input_ids, self.cross_kv(encoded), attention_mask, decoder_attention_mask)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from labels: the start token, then the labels less the last (-100 read as pad)."""
        start = labels.new_full((labels.shape[0], 1), self.cfg.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.cfg.pad_token_id or 0)


class T5Decoding:
    """One generation's state for `generation.generate`: the encoder runs once, each decoder layer's
    cross-attention keys and values are projected once, and the decoder's self-attention keys and
    values grow in a KV cache. Rows start from the decoder start token."""

    def __init__(self, model: T5Model, embeds, attention_mask, max_new_tokens: int) -> None:
        cfg = model.cfg
        self.model, self.mask = model, attention_mask
        self.cross = model.cross_kv(model.encode(embeds, attention_mask))
        b = embeds.shape[0]
        layers, heads, d = cfg.num_decoder_layers, cfg.num_heads, cfg.head_dim
        self.cache = KVCache(layers, heads, d, b, max_new_tokens + 1, embeds.device, embeds.dtype)
        self.start = torch.full((b, 1), cfg.decoder_start_token_id, dtype=torch.long, device=embeds.device)

    def first(self) -> torch.Tensor:
        return self.step(self.start)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        return self.model.decode(token, self.cross, self.mask, cache=self.cache)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        self.cross = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross]
        self.mask = None if self.mask is None else self.mask.index_select(0, index)
