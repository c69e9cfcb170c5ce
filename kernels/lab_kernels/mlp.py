"""Projector MLP (Linear, exact GELU, Linear) with the GELU fused as the first GEMM's epilogue.

Forward writes only gelu(x w1ᵀ + b1), never its input. Backward recomputes the GELU input with
the same kernel (one GEMM) instead of keeping it alive between forward and backward."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lab_kernels import reference
from lab_kernels.dispatch import autocast, backend, check, check_same, dot_precision, launches
from lab_kernels.tiles import choices


# C[m, n] = Σ_k A[m, k] W[n, k] + bias[n], then optionally GELU(c) = c · Φ(c) = ½ c (1 + erf(c / √2)).
#
# One program owns a [BLOCK_M, BLOCK_N] tile of C and walks K in steps of BLOCK_K: an A tile
# [BLOCK_M, BLOCK_K] and a Wᵀ tile [BLOCK_K, BLOCK_N] in SRAM, the accumulator in fp32. Bias and
# GELU are the epilogue, applied to the accumulator before the single store, so the GELU input
# never reaches memory. Grid: (M / BLOCK_M, N / BLOCK_N).
@triton.autotune(configs=choices("linear"), key=["M", "N", "K", "GELU"])
@triton.jit
def linear_kernel(
    A,
    W,
    Bias,
    C,
    M,
    N,
    K,
    sam,
    sak,
    swn,
    swk,
    scm,
    scn,
    GELU: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    """C = A Wᵀ + bias, optionally followed by exact GELU, with fp32 accumulation."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            A + offs_m[:, None] * sam + offs_k[None, :] * sak,
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
            other=0.0,
        )
        w = tl.load(
            W + offs_n[None, :] * swn + offs_k[:, None] * swk,
            mask=(offs_n[None, :] < N) & (offs_k[:, None] < K),
            other=0.0,
        )
        acc += tl.dot(a, w, input_precision=PREC)
    acc += tl.load(Bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    tl.store(
        C + offs_m[:, None] * scm + offs_n[None, :] * scn,
        acc.to(C.dtype.element_ty),
        mask=(offs_m[:, None] < M) & (offs_n[None, :] < N),
    )


def linear(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, gelu: bool) -> torch.Tensor:
    """a `m k`, w `n k` -> `m n` through the Triton GEMM."""
    m, k = a.shape
    n = w.shape[0]
    c = torch.empty(m, n, device=a.device, dtype=a.dtype)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    linear_kernel[grid](
        a, w, bias, c, m, n, k, *a.stride(), *w.stride(), *c.stride(), GELU=gelu, PREC=dot_precision(a.dtype)
    )
    launches["linear_gelu" if gelu else "linear"] += 1
    return c


class _MLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        h = linear(x, w1, b1, gelu=True)
        y = linear(h, w2, b2, gelu=False)
        ctx.save_for_backward(x, w1, b1, w2)  # not the GELU input, not its output
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w1, b1, w2 = ctx.saved_tensors
        pre = linear(x, w1, b1, gelu=False)  # recomputed GELU input
        pre32 = pre.float()
        cdf = 0.5 * (1.0 + torch.erf(pre32 * 0.7071067811865476))
        act = (pre32 * cdf).to(x.dtype)
        dgelu = cdf + pre32 * torch.exp(-0.5 * pre32 * pre32) * 0.3989422804014327
        dh = ((dy @ w2).float() * dgelu).to(x.dtype)
        return dh @ w1, dh.t() @ x, dh.sum(0), dy.t() @ act, dy.sum(0)


def mlp_projector(x, w1, b1, w2, b2) -> torch.Tensor:
    """Linear(din→dh), exact GELU, Linear(dh→dout) over x `... din`."""
    check(x.ndim >= 2, f"x must be [..., Din] with at least 2 dims, got {list(x.shape)}")
    din, dh = x.shape[-1], w1.shape[0]
    check(w1.ndim == 2 and w1.shape[1] == din, f"w1 must be [Dh, Din={din}], got {list(w1.shape)}")
    check(tuple(b1.shape) == (dh,), f"b1 must be [Dh={dh}], got {list(b1.shape)}")
    check(w2.ndim == 2 and w2.shape[1] == dh, f"w2 must be [Dout, Dh={dh}], got {list(w2.shape)}")
    check(tuple(b2.shape) == (w2.shape[0],), f"b2 must be [Dout={w2.shape[0]}], got {list(b2.shape)}")
    x, w1, b1, w2, b2 = autocast(x, w1, b1, w2, b2)
    check_same({"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2})
    if backend(x) == "reference":
        return reference.mlp_projector(x, w1, b1, w2, b2)
    lead = x.shape[:-1]
    # the kernel reads a bias as a dense vector; a strided view (e.g. every other element) is copied
    y = _MLP.apply(x.reshape(-1, din).contiguous(), w1, b1.contiguous(), w2, b2.contiguous())
    return y.reshape(*lead, w2.shape[0])
