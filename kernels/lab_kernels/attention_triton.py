"""Triton kernels for cross-attention, FlashAttention-style (online softmax, log-sum-exp saved for
the backward pass). With PROJECT=True the keys and values are computed inside the kernel from the
image features x and the K/V weights, block by block, so K and V never exist in memory; the
backward kernels recompute them the same way.

Arguments are grouped as the Triton tutorials group them, with strides passed as tuples:
  pointers  Q, O, DO, DQ (b h m d, all with Q's strides `sq`); KV = (K, V, X, WK, BK, WV, BV);
            MASK (b n, int8, nonzero = keep); LSE, DELTA (b·h·m, fp32)
  strides   skv = (K's (b h n d), V's (b h n d), X's (b n k), W's (n k), shared by WK and WV, both
            contiguous); sm (b n); sdk (b h n d), shared by DK and DV
  sizes     H heads, NQ queries, NK keys, D head dim, DX width of x (PROJECT only)
Unused pointers (K, V when projecting; X, W when not) point at a real tensor with zero strides.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lab_kernels.tiles import choices

# One tuning per problem shape and variant: the tiles that win depend on these, not on the batch.
TUNE_KEY = ["NQ", "NK", "D", "DX", "HAS_MASK", "PROJECT"]


@triton.jit
def _tile(s, b, h, offs_r, offs_d, NR, D):
    """Offsets and mask of the [rows, D] tile (b, h, offs_r, offs_d) of a (b, h, r, d) tensor with strides s."""
    at = b * s[0] + h * s[1] + offs_r[:, None] * s[2] + offs_d[None, :] * s[3]
    return at, (offs_r[:, None] < NR) & (offs_d[None, :] < D)


@triton.jit
def _project(X, W, Bias, sx, sw, b, h, offs_n, offs_d, NK, D, DX, BLOCK_N, BLOCK_D, BLOCK_K, PREC):  # fmt: skip
    """One head's K (or V) rows `offs_n`: x[b, n, :] @ W[h*D + d, :]ᵀ + bias, as fp32 [BLOCK_N, BLOCK_D]."""
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, DX, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x_ptr = X + b * sx[0] + offs_n[:, None] * sx[1] + offs_k[None, :] * sx[2]
        xb = tl.load(x_ptr, mask=(offs_n[:, None] < NK) & (offs_k[None, :] < DX), other=0.0)
        w_ptr = W + (h * D + offs_d)[None, :] * sw[0] + offs_k[:, None] * sw[1]
        wb = tl.load(w_ptr, mask=(offs_d[None, :] < D) & (offs_k[:, None] < DX), other=0.0)
        acc += tl.dot(xb, wb, input_precision=PREC)
    bias = tl.load(Bias + h * D + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    return acc + bias[None, :]


@triton.jit
def _load_kv(KV, skv, b, h, offs_n, offs_d, NK, D, DX, PROJECT, BLOCK_N, BLOCK_D, BLOCK_K, PREC):  # fmt: skip
    """The K and V tiles [BLOCK_N, BLOCK_D] of keys `offs_n`: loaded, or projected from x (PROJECT)."""
    K, V, X, WK, BK, WV, BV = KV
    sk, sv, sx, sw = skv
    if PROJECT:
        k = _project(X, WK, BK, sx, sw, b, h, offs_n, offs_d, NK, D, DX, BLOCK_N, BLOCK_D, BLOCK_K, PREC)
        v = _project(X, WV, BV, sx, sw, b, h, offs_n, offs_d, NK, D, DX, BLOCK_N, BLOCK_D, BLOCK_K, PREC)
        return k.to(X.dtype.element_ty), v.to(X.dtype.element_ty)
    k_at, kv_mask = _tile(sk, b, h, offs_n, offs_d, NK, D)
    v_at, _ = _tile(sv, b, h, offs_n, offs_d, NK, D)
    return tl.load(K + k_at, mask=kv_mask, other=0.0), tl.load(V + v_at, mask=kv_mask, other=0.0)


@triton.jit
def _key_valid(MASK, sm, b, offs_n, NK, HAS_MASK: tl.constexpr):
    valid = offs_n < NK
    if HAS_MASK:
        keep = tl.load(MASK + b * sm[0] + offs_n * sm[1], mask=valid, other=0)
        valid = valid & (keep != 0)
    return valid


@triton.jit
def _row_stats(LSE, DELTA, pid_bh, offs_m, NQ):
    """The saved log-sum-exp and δ of queries `offs_m` (both [BLOCK_M], fp32)."""
    at = pid_bh * NQ + offs_m
    return tl.load(LSE + at, mask=offs_m < NQ, other=0.0), tl.load(DELTA + at, mask=offs_m < NQ, other=0.0)


# ---- forward -------------------------------------------------------------------------------
# For one (batch b, head h) and a block of BLOCK_M queries, over keys n = 0..NK in blocks of BLOCK_N:
#
#     K_n = x_n Wkᵀ + bk,  V_n = x_n Wvᵀ + bv          (PROJECT: computed here, never stored)
#     s_mn = scale · q_m · K_n                         (masked keys: -inf)
#     m_m  = max_n s_mn,   l_m = Σ_n exp(s_mn - m_m)   (online: rescaled by exp(m_old - m_new))
#     o_m  = Σ_n exp(s_mn - m_m) V_n / l_m,   lse_m = m_m + log l_m   (kept for the backward)
#
# In SRAM: the Q tile [BLOCK_M, BLOCK_D], one K and one V tile [BLOCK_N, BLOCK_D] at a time (with
# PROJECT, built from x tiles [BLOCK_N, BLOCK_K] and weight tiles [BLOCK_K, BLOCK_D]), and the
# running m, l [BLOCK_M] and accumulator [BLOCK_M, BLOCK_D] in fp32. Grid: (query blocks, B·H).
@triton.autotune(configs=choices("attention"), key=TUNE_KEY)
@triton.jit
def attn_fwd(
    Q, KV, MASK, O, LSE,
    sq, skv, sm,
    H, NQ, NK, D, DX, scale,
    HAS_MASK: tl.constexpr, PROJECT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_at, q_mask = _tile(sq, b, h, offs_m, offs_d, NQ, D)
    q = tl.load(Q + q_at, mask=q_mask, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, NK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k, v = _load_kv(KV, skv, b, h, offs_n, offs_d, NK, D, DX, PROJECT, BLOCK_N, BLOCK_D, BLOCK_K, PREC)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        s = tl.where(_key_valid(MASK, sm, b, offs_n, NK, HAS_MASK)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: avoid inf - inf
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    tl.store(O + q_at, (acc / l_i[:, None]).to(O.dtype.element_ty), mask=q_mask)  # O has Q's strides
    tl.store(LSE + pid_bh * NQ + offs_m, m_i + tl.log(l_i), mask=offs_m < NQ)


# ---- backward ------------------------------------------------------------------------------
# With p_mn = exp(s_mn - lse_m) recomputed from the saved lse, dO the output gradient and
# δ_m = Σ_d dO_md O_md (computed outside, once):
#
#     dV_n = Σ_m p_mn dO_m,   dp_mn = dO_m · V_n,   ds_mn = p_mn (dp_mn - δ_m)
#     dK_n = scale · Σ_m ds_mn q_m,   dQ_m = scale · Σ_n ds_mn K_n
#
# Two kernels, so that no two programs add into the same rows: `attn_bwd_dkdv` owns a block of
# keys and loops over every query block (dK, dV tiles [BLOCK_N, BLOCK_D] in fp32 SRAM);
# `attn_bwd_dq` owns a block of queries and loops over every key block (dQ tile [BLOCK_M,
# BLOCK_D]). With PROJECT both recompute K and V from x exactly as the forward did; the weight
# and input gradients follow outside as dense GEMMs: dx = dK Wk + dV Wv, dWk = dKᵀ x, dbk = Σ dK.
@triton.autotune(configs=choices("attention"), key=TUNE_KEY)
@triton.jit
def attn_bwd_dkdv(
    Q, KV, MASK, DO, LSE, DELTA, DK, DV,
    sq, skv, sm, sdk,
    H, NQ, NK, D, DX, scale,
    HAS_MASK: tl.constexpr, PROJECT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """dK, dV for one block of keys, looping over all queries (K, V recomputed when PROJECT)."""
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k, v = _load_kv(KV, skv, b, h, offs_n, offs_d, NK, D, DX, PROJECT, BLOCK_N, BLOCK_D, BLOCK_K, PREC)
    valid = _key_valid(MASK, sm, b, offs_n, NK, HAS_MASK)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start in range(0, NQ, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q_at, q_mask = _tile(sq, b, h, offs_m, offs_d, NQ, D)
        q = tl.load(Q + q_at, mask=q_mask, other=0.0)
        do = tl.load(DO + q_at, mask=q_mask, other=0.0)  # dO has Q's strides
        lse, delta = _row_stats(LSE, DELTA, pid_bh, offs_m, NQ)
        p = tl.exp(tl.dot(q, tl.trans(k), input_precision=PREC) * scale - lse[:, None])
        p = tl.where(valid[None, :] & (offs_m[:, None] < NQ), p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    dk_at, kv_mask = _tile(sdk, b, h, offs_n, offs_d, NK, D)
    tl.store(DK + dk_at, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + dk_at, dv.to(DV.dtype.element_ty), mask=kv_mask)  # DV has DK's strides


@triton.autotune(configs=choices("attention"), key=TUNE_KEY)
@triton.jit
def attn_bwd_dq(
    Q, KV, MASK, DO, LSE, DELTA, DQ,
    sq, skv, sm,
    H, NQ, NK, D, DX, scale,
    HAS_MASK: tl.constexpr, PROJECT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """dQ for one block of queries, looping over all keys. DQ and DO have Q's strides."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_at, q_mask = _tile(sq, b, h, offs_m, offs_d, NQ, D)
    q = tl.load(Q + q_at, mask=q_mask, other=0.0)
    do = tl.load(DO + q_at, mask=q_mask, other=0.0)
    lse, delta = _row_stats(LSE, DELTA, pid_bh, offs_m, NQ)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, NK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k, v = _load_kv(KV, skv, b, h, offs_n, offs_d, NK, D, DX, PROJECT, BLOCK_N, BLOCK_D, BLOCK_K, PREC)
        valid = _key_valid(MASK, sm, b, offs_n, NK, HAS_MASK)
        p = tl.where(valid[None, :], tl.exp(tl.dot(q, tl.trans(k), input_precision=PREC) * scale - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + q_at, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)
