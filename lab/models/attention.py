"""Scaled dot-product attention with a switch between an explicit (eager) and a fused (sdpa) path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import repeat

ATTN_IMPLS = ("eager", "sdpa")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    impl: str = "sdpa",
    dropout: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v for q: `b h tq d`, k/v: `b hkv tk d` (hkv divides h); the
    scale defaults to 1/√d (T5 passes 1).

    `mask` is additive (0 or a large negative value), broadcastable to `b h tq tk`. Keys are
    shared across head groups (grouped-query attention) by repeating them for eager.
    """
    groups = q.shape[1] // k.shape[1]
    if impl == "sdpa":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scale, enable_gqa=groups > 1
        )
    if groups > 1:
        k = repeat(k, "b h t d -> b (h g) t d", g=groups)
        v = repeat(v, "b h t d -> b (h g) t d", g=groups)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        tq, tk = scores.shape[-2:]
        causal = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0:
        probs = F.dropout(probs, p=dropout)
    return torch.matmul(probs, v)


def keep_bias(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias (0 where `keep`, the dtype's minimum elsewhere), the shape of the keep-mask."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep.bool(), torch.finfo(dtype).min)


def padding_bias(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias `b 1 1 tk` from a `b tk` keep-mask (True/1 = attend)."""
    return keep_bias(key_mask, dtype)[:, None, None, :]
