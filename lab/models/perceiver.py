"""Flamingo's Perceiver Resampler: a fixed number of learned latents read the image.

Each layer lets the latents attend to the concatenation [image features; latents], so they read
the image and each other in one attention, then applies a feed-forward block; both are residual
with LayerNorm in front, and no projection has a bias (Alayrac et al. 2022, Flamingo §2.1 and
its appendix). K latents give K tokens whatever the number of patches, which is what makes it a
connector to compare with a Q-Former at equal token count (Idefics2 did so against an MLP).
"""

from __future__ import annotations

import dataclasses

import torch
from einops import rearrange
from torch import nn

from lab.config import Config, ConfigError, check_choice, check_range
from lab.models.attention import ATTN_IMPLS, attention

PERCEIVER_ATTN_IMPLS = (*ATTN_IMPLS, "triton")


@dataclasses.dataclass
class PerceiverConfig(Config):
    num_latents: int = 8  # the LLM tokens per image
    num_layers: int = 2
    num_heads: int = 4
    ff_mult: int = 4  # feed-forward width, in multiples of the image features' width
    layer_norm_eps: float = 1e-5
    attn_impl: str = "sdpa"  # "eager" | "sdpa" | "triton" (K/V projection fused into the kernel)

    def __post_init__(self) -> None:
        for key in ("num_latents", "num_layers", "num_heads", "ff_mult"):
            check_range(f"perceiver.{key}", getattr(self, key), 1)
        check_choice("perceiver.attn_impl", self.attn_impl, PERCEIVER_ATTN_IMPLS)


class PerceiverAttention(nn.Module):
    """Latents `b k d` attend to [features; latents] `b (n + k) d`."""

    def __init__(self, cfg: PerceiverConfig, dim: int) -> None:
        super().__init__()
        if dim % cfg.num_heads:
            raise ConfigError(f"vision.hidden_size {dim} not divisible by perceiver.num_heads {cfg.num_heads}")
        self.heads, self.impl = cfg.num_heads, cfg.attn_impl
        self.norm_media = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.norm_latents = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.norm_latents(latents)
        kv = torch.cat([self.norm_media(features), latents], dim=1)
        q = self.q(latents)
        if self.impl == "triton":
            from lab_kernels import projected_cross_attention

            zero = self.k.weight.new_zeros(self.k.weight.shape[0])  # no biases: the kernel adds zeros
            out = projected_cross_attention(q, kv, self.k.weight, zero, self.v.weight, zero, self.heads)
        else:
            q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, self.k(kv), self.v(kv)))
            out = rearrange(attention(q, k, v, impl=self.impl), "b h n d -> b n (h d)")
        return self.out(out)


class PerceiverLayer(nn.Module):
    def __init__(self, cfg: PerceiverConfig, dim: int) -> None:
        super().__init__()
        self.attn = PerceiverAttention(cfg, dim)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim, eps=cfg.layer_norm_eps),
            nn.Linear(dim, cfg.ff_mult * dim, bias=False),
            nn.GELU(),
            nn.Linear(cfg.ff_mult * dim, dim, bias=False),
        )

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(features, latents)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """Image features `b n d` -> `b k d`, k = num_latents, in the features' own width."""

    def __init__(self, cfg: PerceiverConfig, dim: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim) * dim**-0.5)
        self.layers = nn.ModuleList(PerceiverLayer(cfg, dim) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(features, latents)
        return self.norm(latents)
