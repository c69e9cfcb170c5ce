"""The tile configurations the autotuner chooses among, per kernel, and the one the interpreter runs.

Chosen from the roofline of the papers' shapes (docs/kernels.md): the Q-Former's 32 queries fit one
query block (BLOCK_M is the query count rounded up, not tuned); the K/V projection is the bulk of
the work (x `b nk 1408` times a 1408 x 64 head slice per head, twice), so the key block BLOCK_N and
the reduction step BLOCK_K over x's width trade register pressure for reuse, and warps and pipeline
stages hide the loads. The projector's GEMMs are large and square-ish: the usual 64-128 tiles.

Triton's interpreter cannot autotune over several configurations, and times nothing worth tuning
for, so under TRITON_INTERPRET=1 each kernel gets one small configuration. `compile_check` lowers
every configuration listed here to sm_90 and reports its registers, spills and shared memory; a test
fails if any spills.
"""

from __future__ import annotations

import itertools

import triton

from lab_kernels.dispatch import interpreting

# Pruned by what ptxas reports for sm_90 (`compile_check`): with 4 warps, a 64-key block projected in
# 64-wide steps of x spills (255 registers and 700+ bytes of local memory in attn_fwd and attn_bwd_dq),
# and so does a 128-row GEMM tile (its fp32 accumulator alone is 64-128 registers a thread). Those
# tiles get 8 warps only.
ATTENTION = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for n, k, w, s in itertools.product((32, 64), (32, 64), (4, 8), (2, 3))
    if w == 8 or n * k <= 64 * 32
]
LINEAR = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for (m, n), k, w, s in itertools.product(((128, 128), (128, 64), (64, 128)), (32, 64), (4, 8), (3, 4))
    if w == 8 or m <= 64
]
INTERPRETER = {
    "attention": triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1),
    "linear": triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1),
}


def choices(kind: str) -> list[triton.Config]:
    """The configurations `kind` ("attention" or "linear") is autotuned over here."""
    if interpreting():
        return [INTERPRETER[kind]]
    return ATTENTION if kind == "attention" else LINEAR
