"""Where a kernel runs: natively on CUDA, under Triton's interpreter on the CPU when
TRITON_INTERPRET=1, otherwise the reference implementation, with a one-time warning."""

from __future__ import annotations

import collections
import os
import warnings

import torch

# Launch counts per kernel name: the proof that a Triton kernel (not the fallback) ran.
launches: collections.Counter[str] = collections.Counter()
_warned = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend(t: torch.Tensor) -> str:
    """ "triton" or "reference" for tensors on `t`'s device."""
    global _warned
    if t.is_cuda or interpreting():
        if interpreting() and t.dtype == torch.bfloat16:
            raise ValueError("bfloat16 is not supported by Triton's interpreter; use float32 or float16 on the CPU")
        return "triton"
    if not _warned:
        warnings.warn(
            "kernels: no CUDA device and TRITON_INTERPRET is not 1 (set it before importing triton); "
            "using the PyTorch reference implementation instead of the Triton kernels",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True
    return "reference"


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 GEMMs: exact ("ieee") under the interpreter, tf32 on a GPU like cuBLAS' default."""
    return "ieee" if interpreting() or dtype != torch.float32 else "tf32"


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def autocast(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The inputs as autocast would give them to a matmul: under `torch.autocast` on their device,
    floating tensors in the autocast dtype (else unchanged). Without this, a bf16 activation and an
    fp32 weight or image feature reach the kernel together (the eager path would have cast them)."""
    first = next(t for t in tensors if t is not None)
    kind = first.device.type
    if not torch.is_autocast_enabled(kind):
        return tensors
    dtype = torch.get_autocast_dtype(kind)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def check_same(name_tensors: dict[str, torch.Tensor]) -> None:
    """Same dtype and device for every tensor; the message names the odd one out."""
    items = [(n, t) for n, t in name_tensors.items() if t is not None]
    n0, t0 = items[0]
    for n, t in items[1:]:
        check(t.dtype == t0.dtype, f"dtype mismatch: {n} is {t.dtype} but {n0} is {t0.dtype}")
        check(t.device == t0.device, f"device mismatch: {n} is on {t.device} but {n0} is on {t0.device}")
    check(t0.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {t0.dtype}")
