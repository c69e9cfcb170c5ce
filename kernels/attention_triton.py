"""Triton kernels for cross-attention, FlashAttention-style (online softmax, log-sum-exp saved for
the backward pass). With PROJECT=True the keys and values are computed inside the kernel from the
image features x and the K/V weights, block by block, so K and V never exist in memory; the
backward kernels recompute them the same way."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _project(
    X,
    W,
    Bias,
    b,
    h,
    offs_n,
    offs_d,
    NK,
    D,
    DX,
    sxb,
    sxn,
    sxk,
    swn,
    swk,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    """One head's K (or V) rows `offs_n`: x[b, n, :] @ W[h*D + d, :]ᵀ + bias, as fp32 [BLOCK_N, BLOCK_D]."""
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, DX, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xb = tl.load(
            X + b * sxb + offs_n[:, None] * sxn + offs_k[None, :] * sxk,
            mask=(offs_n[:, None] < NK) & (offs_k[None, :] < DX),
            other=0.0,
        )
        wb = tl.load(
            W + (h * D + offs_d)[None, :] * swn + offs_k[:, None] * swk,
            mask=(offs_d[None, :] < D) & (offs_k[:, None] < DX),
            other=0.0,
        )
        acc += tl.dot(xb, wb, input_precision=PREC)
    bias = tl.load(Bias + h * D + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    return acc + bias[None, :]


@triton.jit
def _load_kv(
    K,
    V,
    X,
    WK,
    BK,
    WV,
    BV,
    b,
    h,
    offs_n,
    offs_d,
    NK,
    D,
    DX,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sxb,
    sxn,
    sxk,
    swn,
    swk,
    PROJECT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    if PROJECT:
        k = _project(
            X, WK, BK, b, h, offs_n, offs_d, NK, D, DX, sxb, sxn, sxk, swn, swk, BLOCK_N, BLOCK_D, BLOCK_K, PREC
        ).to(X.dtype.element_ty)
        v = _project(
            X, WV, BV, b, h, offs_n, offs_d, NK, D, DX, sxb, sxn, sxk, swn, swk, BLOCK_N, BLOCK_D, BLOCK_K, PREC
        ).to(X.dtype.element_ty)
    else:
        kv_mask = (offs_n[:, None] < NK) & (offs_d[None, :] < D)
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def _key_valid(MASK, b, offs_n, NK, smb, smn, HAS_MASK: tl.constexpr):
    valid = offs_n < NK
    if HAS_MASK:
        keep = tl.load(MASK + b * smb + offs_n * smn, mask=valid, other=0)
        valid = valid & (keep != 0)
    return valid


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
@triton.jit
def attn_fwd(
    Q,
    K,
    V,
    X,
    WK,
    BK,
    WV,
    BV,
    MASK,
    O,
    LSE,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sxb,
    sxn,
    sxk,
    swn,
    swk,
    smb,
    smn,
    sob,
    soh,
    som,
    sod,
    H,
    NQ,
    NK,
    D,
    DX,
    scale,
    HAS_MASK: tl.constexpr,
    PROJECT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < NQ) & (offs_d[None, :] < D)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=q_mask, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, NK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k, v = _load_kv(
            K,
            V,
            X,
            WK,
            BK,
            WV,
            BV,
            b,
            h,
            offs_n,
            offs_d,
            NK,
            D,
            DX,
            skb,
            skh,
            skn,
            skd,
            svb,
            svh,
            svn,
            svd,
            sxb,
            sxn,
            sxk,
            swn,
            swk,
            PROJECT,
            BLOCK_N,
            BLOCK_D,
            BLOCK_K,
            PREC,
        )
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        valid = _key_valid(MASK, b, offs_n, NK, smb, smn, HAS_MASK)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: avoid inf - inf
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, out.to(O.dtype.element_ty), mask=q_mask
    )
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
@triton.jit
def attn_bwd_dkdv(
    Q,
    K,
    V,
    X,
    WK,
    BK,
    WV,
    BV,
    MASK,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sxb,
    sxn,
    sxk,
    swn,
    swk,
    smb,
    smn,
    sdob,
    sdoh,
    sdom,
    sdod,
    sdkb,
    sdkh,
    sdkn,
    sdkd,
    H,
    NQ,
    NK,
    D,
    DX,
    scale,
    HAS_MASK: tl.constexpr,
    PROJECT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    """dK, dV for one block of keys, looping over all queries (K, V recomputed when PROJECT)."""
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k, v = _load_kv(
        K,
        V,
        X,
        WK,
        BK,
        WV,
        BV,
        b,
        h,
        offs_n,
        offs_d,
        NK,
        D,
        DX,
        skb,
        skh,
        skn,
        skd,
        svb,
        svh,
        svn,
        svd,
        sxb,
        sxn,
        sxk,
        swn,
        swk,
        PROJECT,
        BLOCK_N,
        BLOCK_D,
        BLOCK_K,
        PREC,
    )
    valid = _key_valid(MASK, b, offs_n, NK, smb, smn, HAS_MASK)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start in range(0, NQ, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q_mask = (offs_m[:, None] < NQ) & (offs_d[None, :] < D)
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=q_mask, other=0.0)
        do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_d[None, :] * sdod, mask=q_mask, other=0.0)
        lse = tl.load(LSE + pid_bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
        delta = tl.load(DELTA + pid_bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        p = tl.exp(s - lse[:, None])
        p = tl.where(valid[None, :] & (offs_m[:, None] < NQ), p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    kv_mask = (offs_n[:, None] < NK) & (offs_d[None, :] < D)
    ptr = b * sdkb + h * sdkh + offs_n[:, None] * sdkn + offs_d[None, :] * sdkd
    tl.store(DK + ptr, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + ptr, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def attn_bwd_dq(
    Q,
    K,
    V,
    X,
    WK,
    BK,
    WV,
    BV,
    MASK,
    DO,
    LSE,
    DELTA,
    DQ,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sxb,
    sxn,
    sxk,
    swn,
    swk,
    smb,
    smn,
    sdob,
    sdoh,
    sdom,
    sdod,
    H,
    NQ,
    NK,
    D,
    DX,
    scale,
    HAS_MASK: tl.constexpr,
    PROJECT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    """dQ for one block of queries, looping over all keys. DQ has Q's strides."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < NQ) & (offs_d[None, :] < D)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=q_mask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_d[None, :] * sdod, mask=q_mask, other=0.0)
    lse = tl.load(LSE + pid_bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
    delta = tl.load(DELTA + pid_bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, NK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k, v = _load_kv(
            K,
            V,
            X,
            WK,
            BK,
            WV,
            BV,
            b,
            h,
            offs_n,
            offs_d,
            NK,
            D,
            DX,
            skb,
            skh,
            skn,
            skd,
            svb,
            svh,
            svn,
            svd,
            sxb,
            sxn,
            sxk,
            swn,
            swk,
            PROJECT,
            BLOCK_N,
            BLOCK_D,
            BLOCK_K,
            PREC,
        )
        valid = _key_valid(MASK, b, offs_n, NK, smb, smn, HAS_MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        p = tl.where(valid[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(
        DQ + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
        (dq * scale).to(DQ.dtype.element_ty),
        mask=q_mask,
    )
