"""Compile every kernel for a CUDA target on a machine without a GPU (Triton ships ptxas).

The interpreter runs the kernels on the CPU but accepts code the GPU compiler rejects (and the
other way round), so `python -m lab_kernels.compile_check` lowers each kernel, in every constexpr
combination the wrappers launch, to a cubin for sm_80 and sm_90. Run it without
TRITON_INTERPRET: interpreted kernels are not compilable objects."""

from __future__ import annotations

import itertools
import sys

ARCHS = (80, 90)


def _attention_signatures(kernel, dtype: str):
    ptr, i32 = f"*{dtype}", "i32"
    types = {
        "Q": ptr, "KV": (ptr,) * 7, "MASK": "*i8", "O": ptr, "LSE": "*fp32", "DO": ptr, "DELTA": "*fp32",
        "DK": ptr, "DV": ptr, "DQ": ptr, "sq": (i32,) * 4, "skv": ((i32,) * 4, (i32,) * 4, (i32,) * 3, (i32,) * 2),
        "sm": (i32,) * 2, "sdk": (i32,) * 4, "H": i32, "NQ": i32, "NK": i32, "D": i32, "DX": i32, "scale": "fp32",
    }  # fmt: skip
    for has_mask, project in itertools.product((False, True), repeat=2):
        consts = dict(HAS_MASK=has_mask, PROJECT=project, PREC="tf32" if dtype == "fp32" else "ieee")
        consts |= dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=64, BLOCK_K=32)
        yield {n: ("constexpr" if n in consts else types[n]) for n in kernel.arg_names}, consts


def _linear_signatures(kernel, dtype: str):
    for gelu in (False, True):
        consts = dict(GELU=gelu, PREC="tf32" if dtype == "fp32" else "ieee", BLOCK_M=128, BLOCK_N=128, BLOCK_K=32)
        ptrs = {"A", "W", "Bias", "C"}
        sig = {n: "constexpr" if n in consts else f"*{dtype}" if n in ptrs else "i32" for n in kernel.arg_names}
        yield sig, consts


def compile_all(archs=ARCHS, dtypes=("fp32", "fp16")) -> list[str]:
    """Every (kernel, dtype, constexprs, arch) lowered to a cubin; returns one line per compile."""
    import triton
    from triton.backends.compiler import GPUTarget

    from lab_kernels.attention_triton import attn_bwd_dkdv, attn_bwd_dq, attn_fwd
    from lab_kernels.mlp import linear_kernel

    if not isinstance(attn_fwd, triton.runtime.JITFunction):
        raise RuntimeError("lab_kernels.compile_check: unset TRITON_INTERPRET; interpreted kernels cannot be compiled")
    done = []
    plans = [(k, _attention_signatures) for k in (attn_fwd, attn_bwd_dkdv, attn_bwd_dq)]
    plans.append((linear_kernel, _linear_signatures))
    for (kernel, signatures), dtype, arch in itertools.product(plans, dtypes, archs):
        for sig, consts in signatures(kernel, dtype):
            src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=consts)
            out = triton.compile(src, target=GPUTarget("cuda", arch, 32))
            assert out.asm.get("cubin"), f"{kernel.__name__}: no cubin for sm_{arch}"
            done.append(f"{kernel.__name__} {dtype} sm_{arch} {consts}")
    return done


if __name__ == "__main__":
    lines = compile_all()
    print("\n".join(lines))
    print(f"{len(lines)} compiles for sm_{'/sm_'.join(map(str, ARCHS))}: ok", file=sys.stderr)
