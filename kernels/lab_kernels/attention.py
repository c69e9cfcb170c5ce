"""Autograd wrappers and input checks for the cross-attention kernels."""

from __future__ import annotations

import torch
import triton
from einops import rearrange

from lab_kernels import reference
from lab_kernels.attention_triton import attn_bwd_dkdv, attn_bwd_dq, attn_fwd
from lab_kernels.dispatch import autocast, backend, check, check_same, dot_precision, launches

BLOCK_M = 32


def _blocks(nq: int, d: int) -> dict:
    """The tiles fixed by the shapes: small query counts (Q-Former: 32) fit one block, the head dim is
    padded to a power of two; tl.dot needs every dim >= 16. BLOCK_N and BLOCK_K are autotuned
    (`lab_kernels.tiles`)."""
    return dict(BLOCK_M=max(16, min(BLOCK_M, triton.next_power_of_2(nq))), BLOCK_D=max(16, triton.next_power_of_2(d)))


def _heads(t: torch.Tensor, h: int) -> tuple[int, int, int, int]:
    """Strides (b, head, token, dim) of a `b n (h d)` tensor viewed per head."""
    d = t.shape[-1] // h
    return t.stride(0), d * t.stride(2), t.stride(1), t.stride(2)


class _Attention(torch.autograd.Function):
    """Shared by both entry points: `project` is None (q/k/v given) or (x, wk, bk, wv, bv)."""

    @staticmethod
    def forward(ctx, q, k, v, x, wk, bk, wv, bv, mask, num_heads, scale, q_strides, nq, nk, d):
        project = x is not None
        b = q.shape[0]
        out = torch.empty_like(q)
        lse = torch.empty(b * num_heads * nq, device=q.device, dtype=torch.float32)
        mask_t = None if mask is None else mask.to(torch.int8).contiguous()
        kv, mask_p, strides, sizes, consts = _launch_args(
            q, k, v, x, wk, bk, wv, bv, mask_t, num_heads, scale, q_strides, nq, nk, d
        )
        grid = (triton.cdiv(nq, consts["BLOCK_M"]), b * num_heads)
        attn_fwd[grid](q, kv, mask_p, out, lse, *strides, *sizes, **consts)  # O: empty_like(q), Q's strides
        launches["attn_fwd_projected" if project else "attn_fwd"] += 1
        ctx.save_for_backward(q, k, v, x, wk, bk, wv, bv, mask_t, out, lse)  # never K/V when projecting
        ctx.cfg = (num_heads, scale, q_strides, nq, nk, d)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, x, wk, bk, wv, bv, mask_t, out, lse = ctx.saved_tensors
        num_heads, scale, q_strides, nq, nk, d = ctx.cfg
        project = x is not None
        b = q.shape[0]
        dout = dout.contiguous() if dout.stride() != out.stride() else dout
        # delta_i = Σ_d dO·O: the softmax-backward correction, one number per query and head.
        if project:
            delta = (dout.float() * out.float()).reshape(b, nq, num_heads, d).sum(-1).transpose(1, 2)
        else:
            delta = (dout.float() * out.float()).sum(-1)
        delta = delta.contiguous().reshape(-1)
        if project:  # gradients w.r.t. the (never stored) K and V, head-merged: b nk (h d)
            dk = torch.empty(b, nk, num_heads * d, device=q.device, dtype=q.dtype)
            dv = torch.empty_like(dk)
            dk_strides = _heads(dk, num_heads)
        else:
            dk = torch.empty(b, num_heads, nk, d, device=q.device, dtype=q.dtype)
            dv = torch.empty_like(dk)
            dk_strides = dk.stride()
        dq = torch.empty_like(q)
        kv, mask_p, strides, sizes, consts = _launch_args(
            q, k, v, x, wk, bk, wv, bv, mask_t, num_heads, scale, q_strides, nq, nk, d
        )
        common = (q, kv, mask_p, dout, lse, delta)  # dO and dQ have Q's strides, dV dK's
        grid_kv = lambda meta: (triton.cdiv(nk, meta["BLOCK_N"]), b * num_heads)  # noqa: E731
        attn_bwd_dkdv[grid_kv](*common, dk, dv, *strides, tuple(dk_strides), *sizes, **consts)
        grid_q = (triton.cdiv(nq, consts["BLOCK_M"]), b * num_heads)
        attn_bwd_dq[grid_q](*common, dq, *strides, *sizes, **consts)
        launches["attn_bwd"] += 1
        if not project:
            return dq, dk, dv, *([None] * 12)
        # Chain rule through the projections: dense GEMMs, cuBLAS does them best.
        dx = dk @ wk + dv @ wv
        dwk = rearrange(dk, "b n o -> o (b n)") @ rearrange(x, "b n i -> (b n) i")
        dwv = rearrange(dv, "b n o -> o (b n)") @ rearrange(x, "b n i -> (b n) i")
        return dq, None, None, dx, dwk, dk.sum((0, 1)), dwv, dv.sum((0, 1)), *([None] * 7)


def _launch_args(q, k, v, x, wk, bk, wv, bv, mask_t, num_heads, scale, q_strides, nq, nk, d):
    """What every attention kernel shares: KV = (K, V, X, WK, BK, WV, BV), the mask pointer, the
    stride tuples (sq, skv, sm), the sizes and the constexprs (layout: attention_triton's docstring).

    Unused pointers point at a real tensor with zero strides, so Triton gets a valid address."""
    project = x is not None
    ref = x if project else q
    if project:
        kv = (ref, ref, x, wk, bk, wv, bv)
        skv = ((0,) * 4, (0,) * 4, tuple(x.stride()), tuple(wk.stride()))
        dx = x.shape[-1]
    else:
        kv = (k, v, ref, ref, ref, ref, ref)
        skv = (tuple(k.stride()), tuple(v.stride()), (0,) * 3, (0,) * 2)
        dx = 0
    sm = (0, 0) if mask_t is None else tuple(mask_t.stride())
    consts = dict(HAS_MASK=mask_t is not None, PROJECT=project, PREC=dot_precision(q.dtype), **_blocks(nq, d))
    mask_p = ref if mask_t is None else mask_t
    return kv, mask_p, (tuple(q_strides), skv, sm), (num_heads, nq, nk, d, dx, scale), consts


def _check_mask(mask, b, nk):
    if mask is None:
        return
    check(mask.shape == (b, nk), f"key_padding_mask must be [B={b}, Nk={nk}], got {list(mask.shape)}")
    check(mask.dtype == torch.bool, f"key_padding_mask must be bool, got {mask.dtype}")
    check(bool(mask.any(1).all()), "key_padding_mask masks every key of some row: attention is undefined there")


def cross_attention(q, k, v, key_padding_mask=None, scale=None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v for q `b h nq d`, k/v `b h nk d` (scale 1/√d by default)."""
    check(
        q.ndim == 4 and k.ndim == 4 and v.ndim == 4,
        f"q, k, v must be 4-d [B, H, N, D], got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}",
    )
    b, h, nq, d = q.shape
    check(k.shape == v.shape, f"k {list(k.shape)} and v {list(v.shape)} must have the same shape")
    check(
        k.shape[:2] == (b, h) and k.shape[3] == d,
        f"k/v {list(k.shape)} must be [B={b}, H={h}, Nk, D={d}] to match q {list(q.shape)}",
    )
    check(d <= 128, f"head dim D={d} > 128 is not supported")
    check(nq >= 1 and k.shape[2] >= 1, f"need Nq >= 1 and Nk >= 1, got {nq} and {k.shape[2]}")
    q, k, v = autocast(q, k, v)
    check_same({"q": q, "k": k, "v": v, "key_padding_mask": None})
    if key_padding_mask is not None:
        check(key_padding_mask.device == q.device, "key_padding_mask must be on q's device")
    _check_mask(key_padding_mask, b, k.shape[2])
    scale = d**-0.5 if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if backend(q) == "reference":
        return reference.cross_attention(q, k, v, key_padding_mask, scale)
    return _Attention.apply(
        q, k, v, None, None, None, None, None, key_padding_mask, h, scale, q.stride(), nq, k.shape[2], d
    )


def projected_cross_attention(hidden_q, x, wk, bk, wv, bv, num_heads, key_padding_mask=None) -> torch.Tensor:
    """Attention of `hidden_q` (b nq dq) over K = x wkᵀ + bk, V = x wvᵀ + bv, with x `b nk dx`.
    The K/V projection runs inside the attention kernel: K and V are never stored."""
    check(
        hidden_q.ndim == 3 and x.ndim == 3,
        f"hidden_q must be [B, Nq, Dq] and x [B, Nk, Dx], got {list(hidden_q.shape)} and {list(x.shape)}",
    )
    b, nq, dq = hidden_q.shape
    nk, dx = x.shape[1], x.shape[2]
    check(x.shape[0] == b, f"x batch {x.shape[0]} != hidden_q batch {b}")
    for name, w in (("wk", wk), ("wv", wv)):
        check(tuple(w.shape) == (dq, dx), f"{name} must be [Dq={dq}, Dx={dx}], got {list(w.shape)}")
    for name, bias in (("bk", bk), ("bv", bv)):
        check(tuple(bias.shape) == (dq,), f"{name} must be [Dq={dq}], got {list(bias.shape)}")
    check(dq % num_heads == 0, f"Dq={dq} is not divisible by num_heads={num_heads}")
    d = dq // num_heads
    check(d <= 128, f"head dim D={d} > 128 is not supported")
    check(nq >= 1 and nk >= 1, f"need Nq >= 1 and Nk >= 1, got {nq} and {nk}")
    hidden_q, x, wk, bk, wv, bv = autocast(hidden_q, x, wk, bk, wv, bv)
    check_same({"hidden_q": hidden_q, "x": x, "wk": wk, "bk": bk, "wv": wv, "bv": bv})
    _check_mask(key_padding_mask, b, nk)
    if backend(x) == "reference":
        return reference.projected_cross_attention(hidden_q, x, wk, bk, wv, bv, num_heads, key_padding_mask)
    hidden_q, x = hidden_q.contiguous(), x.contiguous()
    wk, wv = wk.contiguous(), wv.contiguous()
    return _Attention.apply(
        hidden_q,
        None,
        None,
        x,
        wk,
        bk.contiguous(),
        wv,
        bv.contiguous(),
        key_padding_mask,
        num_heads,
        d**-0.5,
        _heads(hidden_q, num_heads),
        nq,
        nk,
        d,
    )
