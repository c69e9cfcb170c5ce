"""pytest-benchmark for the kernel CPU paths (small shapes, Triton under the interpreter).

    TRITON_INTERPRET=1 python -m pytest benchmarks/test_kernel_speed.py --benchmark-enable -p no:cacheprovider

Interpreter timings measure numpy emulation, not the kernels: use benchmarks/kernels.py on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.kernels import eager_attention, eager_mlp, sdpa_attention

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("set TRITON_INTERPRET=1 before Python starts", allow_module_level=True)

import lab_kernels  # noqa: E402


@pytest.fixture(scope="module")
def attn_args():
    torch.manual_seed(0)
    return (
        torch.randn(2, 32, 64),
        torch.randn(2, 33, 48),
        torch.randn(64, 48) * 0.1,
        torch.randn(64),
        torch.randn(64, 48) * 0.1,
        torch.randn(64),
        4,
    )


@pytest.mark.parametrize("impl", ["triton", "eager", "sdpa"])
def test_projected_cross_attention(benchmark, attn_args, impl):
    fn = {"triton": lab_kernels.projected_cross_attention, "eager": eager_attention, "sdpa": sdpa_attention}[impl]
    benchmark.group = "projected cross-attention fwd (CPU)"
    out = benchmark(fn, *attn_args)
    assert out.shape == (2, 32, 64)


@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_mlp_projector(benchmark, impl):
    torch.manual_seed(0)
    args = (torch.randn(64, 32), torch.randn(64, 32), torch.randn(64), torch.randn(64, 64), torch.randn(64))
    fn = {"triton": lab_kernels.mlp_projector, "eager": eager_mlp}[impl]
    benchmark.group = "mlp projector fwd (CPU)"
    assert benchmark(fn, *args).shape == (64, 64)
