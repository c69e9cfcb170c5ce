"""Fused Triton kernels for Q-Former cross-attention (K/V projection fused in) and the projector MLP.

On CUDA the kernels compile natively; on the CPU they run under Triton's interpreter when
TRITON_INTERPRET=1 (set before importing triton), otherwise the PyTorch reference runs, with a
one-time warning. `lab_kernels.launches` counts Triton launches per kernel."""

from lab_kernels.attention import cross_attention, projected_cross_attention
from lab_kernels.dispatch import backend, launches
from lab_kernels.mlp import mlp_projector

__all__ = ["backend", "cross_attention", "launches", "mlp_projector", "projected_cross_attention"]
