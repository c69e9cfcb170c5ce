"""Reference implementations in plain PyTorch: the ground truth for the Triton kernels (run them in
float64 to check), and the CPU path when Triton's interpreter is off."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def cross_attention(q, k, v, key_padding_mask=None, scale=None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v; q `b h nq d`, k/v `b h nk d`, key_padding_mask `b nk` (True = attend)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask.bool()[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


def projected_cross_attention(hidden_q, x, wk, bk, wv, bv, num_heads, key_padding_mask=None) -> torch.Tensor:
    """Multi-head attention of `hidden_q` (b nq dq) over K = x wkᵀ + bk, V = x wvᵀ + bv (x: b nk dx)."""
    q = rearrange(hidden_q, "b n (h d) -> b h n d", h=num_heads)
    k = rearrange(F.linear(x, wk, bk), "b n (h d) -> b h n d", h=num_heads)
    v = rearrange(F.linear(x, wv, bv), "b n (h d) -> b h n d", h=num_heads)
    return rearrange(cross_attention(q, k, v, key_padding_mask), "b h n d -> b n (h d)")


def mlp_projector(x, w1, b1, w2, b2) -> torch.Tensor:
    """Linear, exact (erf) GELU, Linear over `... din`."""
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
