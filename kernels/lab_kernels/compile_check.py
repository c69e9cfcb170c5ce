"""Compile every kernel, in every configuration the autotuner may pick, for a GPU that is not here.

The interpreter runs the kernels on the CPU but accepts code the GPU compiler rejects (and the
other way round), and it says nothing of registers or shared memory. So this lowers each kernel,
for each of its autotuning configurations (`lab_kernels.tiles`) and each constexpr variant the
wrappers launch, to PTX and a cubin for sm_90 (Triton ships ptxas), and reports per configuration
the registers per thread, the bytes spilled to local memory and the shared memory it needs.

    python -m lab_kernels.compile_check                    # every configuration, sm_90, bf16: the table
    python -m lab_kernels.compile_check --json report.json # and the rows as JSON

Run it without TRITON_INTERPRET: interpreted kernels are not compilable objects.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ARCHS = (90,)
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90


def _attention_signatures(kernel, dtype: str):
    """(signature, constexprs) for each variant the wrappers launch: with and without the fused K/V
    projection, with a key mask (the variant with more live values)."""
    ptr, i32 = f"*{dtype}", "i32"
    types = {
        "Q": ptr, "KV": (ptr,) * 7, "MASK": "*i8", "O": ptr, "LSE": "*fp32", "DO": ptr, "DELTA": "*fp32",
        "DK": ptr, "DV": ptr, "DQ": ptr, "sq": (i32,) * 4, "skv": ((i32,) * 4, (i32,) * 4, (i32,) * 3, (i32,) * 2),
        "sm": (i32,) * 2, "sdk": (i32,) * 4, "H": i32, "NQ": i32, "NK": i32, "D": i32, "DX": i32, "scale": "fp32",
    }  # fmt: skip
    for project in (True, False):
        consts = dict(HAS_MASK=True, PROJECT=project, PREC="tf32" if dtype == "fp32" else "ieee")
        consts |= dict(BLOCK_M=32, BLOCK_D=64)  # the papers' shapes: 32 queries, head dim 64
        yield consts, {n: types[n] for n in kernel.arg_names if n in types}


def _linear_signatures(kernel, dtype: str):
    ptrs = {"A", "W", "Bias", "C"}
    for gelu in (True, False):
        consts = dict(GELU=gelu, PREC="tf32" if dtype == "fp32" else "ieee")
        yield consts, {n: f"*{dtype}" if n in ptrs else "i32" for n in kernel.arg_names if n not in ("GELU", "PREC")}


def _kernels():
    from lab_kernels.attention_triton import attn_bwd_dkdv, attn_bwd_dq, attn_fwd
    from lab_kernels.mlp import linear_kernel

    return [(k, _attention_signatures) for k in (attn_fwd, attn_bwd_dkdv, attn_bwd_dq)] + [
        (linear_kernel, _linear_signatures)
    ]


def _jobs(archs, dtypes):
    """Every (kernel index, dtype, arch, config index, variant index) to compile."""
    out = []
    for ki, (tuner, signatures) in enumerate(_kernels()):
        variants = len(list(signatures(tuner.fn, "fp32")))
        for dtype, arch, ci, vi in itertools.product(dtypes, archs, range(len(tuner.configs)), range(variants)):
            out.append((ki, dtype, arch, ci, vi))
    return out


def _ptxas_resources(ptx: str, arch: int) -> dict:
    """Registers and spills as ptxas reports them (`-v`) for this PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        cmd = [get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}a", str(src), "-o", str(Path(tmp) / "k.cubin")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_stores": int(stores.group(1)) if stores else 0,
        "spill_loads": int(loads.group(1)) if loads else 0,
    }


def _compile(job) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    ki, dtype, arch, ci, vi = job
    tuner, signatures = _kernels()[ki]
    kernel, config = tuner.fn, tuner.configs[ci]
    if not isinstance(kernel, triton.runtime.JITFunction):
        raise RuntimeError("compile_check: unset TRITON_INTERPRET; interpreted kernels cannot be compiled")
    consts, types = list(signatures(kernel, dtype))[vi]
    consts = {**consts, **config.kwargs}
    sig = {n: "constexpr" if n in consts else types[n] for n in kernel.arg_names}
    src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=consts)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    out = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    if not out.asm.get("cubin"):
        raise RuntimeError(f"{kernel.__name__}: no cubin for sm_{arch}")
    variant = {k: v for k, v in consts.items() if k in ("HAS_MASK", "PROJECT", "GELU")}
    return {
        "kernel": kernel.__name__, "dtype": dtype, "arch": f"sm_{arch}", "variant": variant,
        "config": {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages},
        "shared_bytes": out.metadata.shared, **_ptxas_resources(out.asm["ptx"], arch),
    }  # fmt: skip


def compile_all(archs=ARCHS, dtypes=("bf16",), workers: int = 2) -> list[dict]:
    """One row per (kernel, dtype, arch, autotuning configuration, variant): its resources."""
    jobs = _jobs(archs, dtypes)
    if workers <= 1:
        return [_compile(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        return list(pool.map(_compile, jobs))


def problems(rows: list[dict]) -> list[str]:
    """Configurations that spill registers or need more shared memory than a block may have."""
    bad = []
    for r in rows:
        spilled = r["spill_stores"] + r["spill_loads"]
        if spilled or r["shared_bytes"] > SMEM_LIMIT:
            bad.append(f"{r['kernel']} {r['variant']} {r['config']}: {spilled} bytes spilled, {r['shared_bytes']} smem")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--dtype", action="append", help="fp32, fp16 or bf16 (repeatable; default bf16)")
    args = p.parse_args()
    rows = compile_all(dtypes=tuple(args.dtype or ["bf16"]))
    print(f"{'kernel':15} {'variant':34} {'config':64} regs spill smem")
    for r in rows:
        variant, cfg = json.dumps(r["variant"]), json.dumps(r["config"])
        spill = r["spill_stores"] + r["spill_loads"]
        print(f"{r['kernel']:15} {variant:34} {cfg:64} {r['registers']:4} {spill:5} {r['shared_bytes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    bad = problems(rows)
    print(f"{len(rows)} configurations compiled for sm_90; {len(bad)} spill or exceed shared memory", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
