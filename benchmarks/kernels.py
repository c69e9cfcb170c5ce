"""Kernel benchmark: Triton vs eager, SDPA, xformers (if installed) and torch.compile.

    python -m benchmarks.kernels               # CUDA: triton.testing.do_bench at the papers' shapes
    python -m benchmarks.kernels --gpu-check   # CUDA: correctness, timings, end to end (benchmarks/gpu_check.py)
    python -m benchmarks.kernels --cpu         # CPU: small shapes, Triton under the interpreter

Shapes (CUDA): Q-Former cross-attention B=256, Nq=32, Nk=257, Dx=1408, Dq=768, 12 heads;
LLaVA-1.5 projector 9,216 tokens, 1024 -> 4096 -> 4096. Writes benchmarks/results/kernels_<device>.json
and a plot. On the CPU the Triton numbers time the *interpreter* (numpy), not compiled kernels:
they show the path runs, not how fast the kernels are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from lab_kernels import reference

# Unfused baselines are the reference implementations themselves.
eager_attention = reference.projected_cross_attention
eager_mlp = reference.mlp_projector

RESULTS = Path(__file__).parent / "results"
PEAK = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}  # dense bf16/fp16 FLOP/s, B/s


def sdpa_attention(hq, x, wk, bk, wv, bv, heads):
    q = rearrange(hq, "b n (h d) -> b h n d", h=heads)
    k = rearrange(F.linear(x, wk, bk), "b n (h d) -> b h n d", h=heads)
    v = rearrange(F.linear(x, wv, bv), "b n (h d) -> b h n d", h=heads)
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


def xformers_attention(hq, x, wk, bk, wv, bv, heads):
    import xformers.ops as xops

    q = rearrange(hq, "b n (h d) -> b n h d", h=heads)
    k = rearrange(F.linear(x, wk, bk), "b n (h d) -> b n h d", h=heads)
    v = rearrange(F.linear(x, wv, bv), "b n (h d) -> b n h d", h=heads)
    return rearrange(xops.memory_efficient_attention(q, k, v), "b n h d -> b n (h d)")


def attention_cost(b, nq, nk, dx, dq, bytes_per):
    d_attn = 4 * b * nq * nk * dq  # 4·B·H·Nq·Nk·D with H·D = Dq
    proj = 2 * 2 * b * nk * dx * dq  # K and V projections
    fwd_flops = d_attn + proj
    bwd_flops = 2.5 * d_attn + 2 * proj
    io = bytes_per * (b * nq * dq * 2 + b * nk * dx + 2 * dq * dx)
    return fwd_flops, fwd_flops + bwd_flops, io, 3 * io


def mlp_cost(n, din, dh, dout, bytes_per):
    f = 2 * n * (din * dh + dh * dout)
    io = bytes_per * (n * din + din * dh + dh * dout + n * dout)
    return f, 3 * f, io, 3 * io


def timer(device):
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=100)

    def cpu(fn, reps=3):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1e3

    return cpu


def measure(device, name, fn, args, flops, io, backward):
    bench = timer(device)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]

    def fwd():
        with torch.no_grad():
            fn(*args)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fn(*args).float().sum().backward()

    row = {"impl": name}
    for mode, call, fl, by in (("fwd", fwd, flops[0], io[0]), ("fwd+bwd", fwd_bwd, flops[1], io[1])):
        if mode == "fwd+bwd" and not backward:
            continue
        try:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            ms = bench(call)
            mem = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else None
        except Exception as e:  # report, do not hide: a failed impl shows its error in the table
            row[mode] = {"error": f"{type(e).__name__}: {e}"[:200]}
            continue
        entry = {"ms": ms, "tflops": fl / ms / 1e9, "gbps": by / ms / 1e6, "peak_mem_mib": mem}
        if device == "cuda":
            peak = next((v for k, v in PEAK.items() if k in torch.cuda.get_device_name()), None)
            if peak:
                entry["pct_peak_flops"] = 100 * entry["tflops"] * 1e12 / peak[0]
                entry["pct_peak_bw"] = 100 * entry["gbps"] * 1e9 / peak[1]
        row[mode] = entry
    return row


def run(device: str, dtype: torch.dtype) -> dict:
    import lab_kernels

    torch.manual_seed(0)
    big = device == "cuda"
    b, nq, nk, dx, dq, heads = (256, 32, 257, 1408, 768, 12) if big else (2, 32, 33, 48, 64, 4)
    n, din, dh, dout = (9216, 1024, 4096, 4096) if big else (64, 32, 64, 64)
    bytes_per = torch.finfo(dtype).bits // 8
    mk = lambda *s, scale=1.0: (torch.randn(*s, device=device, dtype=dtype) * scale).requires_grad_()  # noqa: E731
    attn_args = (
        mk(b, nq, dq),
        mk(b, nk, dx),
        mk(dq, dx, scale=dx**-0.5),
        mk(dq),
        mk(dq, dx, scale=dx**-0.5),
        mk(dq),
        heads,
    )
    mlp_args = (mk(n, din), mk(dh, din, scale=din**-0.5), mk(dh), mk(dout, dh, scale=dh**-0.5), mk(dout))
    attn_impls = {
        "triton (fused)": lab_kernels.projected_cross_attention,
        "eager": eager_attention,
        "cuBLAS proj + SDPA": sdpa_attention,
    }
    mlp_impls = {"triton (fused GELU)": lab_kernels.mlp_projector, "eager": eager_mlp}
    try:
        import xformers.ops  # noqa: F401

        if device == "cuda":
            attn_impls["cuBLAS proj + xformers"] = xformers_attention
    except ImportError:
        pass
    if device == "cuda":
        attn_impls["torch.compile"] = torch.compile(sdpa_attention)
        mlp_impls["torch.compile"] = torch.compile(eager_mlp)
    a_cost = attention_cost(b, nq, nk, dx, dq, bytes_per)
    m_cost = mlp_cost(n, din, dh, dout, bytes_per)
    out = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
        "dtype": str(dtype),
        "attention_shape": dict(B=b, Nq=nq, Nk=nk, Dx=dx, Dq=dq, heads=heads),
        "mlp_shape": dict(tokens=n, din=din, dh=dh, dout=dout),
        "attention": [measure(device, k, f, attn_args, a_cost[:2], a_cost[2:], True) for k, f in attn_impls.items()],
        "mlp": [measure(device, k, f, mlp_args, m_cost[:2], m_cost[2:], True) for k, f in mlp_impls.items()],
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "torch": torch.__version__,
    }
    return out


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, key in zip(axes[:2], ("attention", "mlp"), strict=True):
        rows = [r for r in result[key] if "ms" in r.get("fwd", {})]
        names = [r["impl"] for r in rows]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["fwd"]["ms"] for r in rows], 0.4, label="fwd")
        ax.bar([x + 0.2 for x in xs], [r.get("fwd+bwd", {}).get("ms", 0) for r in rows], 0.4, label="fwd+bwd")
        ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("ms (lower is better)")
        ax.set_title(f"{key} — {result['device']}", fontsize=9)
        ax.legend()
    roofline(axes[2], result)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def roofline(ax, result: dict) -> None:
    """Achieved TFLOP/s against arithmetic intensity (FLOPs per byte that must move), under the
    device's compute and bandwidth roofs: how far each pass is from what the GPU allows."""
    peak = next((v for k, v in PEAK.items() if k in result["device"]), None)
    if peak is None:
        ax.set_title("roofline: no peak figures for this device")
        return
    xs = [1, 1e4]
    ax.loglog(xs, [min(peak[0], x * peak[1]) / 1e12 for x in xs], "k-", lw=1)
    ax.loglog([peak[0] / peak[1]] * 2, [1, peak[0] / 1e12], "k:", lw=0.8)
    for key in ("attention", "mlp"):
        for r in result[key]:
            for mode, marker in (("fwd", "o"), ("fwd+bwd", "s")):
                e = r.get(mode, {})
                if "tflops" in e and e.get("gbps"):
                    ax.scatter(e["tflops"] * 1e3 / e["gbps"], e["tflops"], marker=marker, s=18)
                    ax.annotate(
                        f"{key[:4]} {r['impl'][:12]} {mode}", (e["tflops"] * 1e3 / e["gbps"], e["tflops"]), fontsize=5
                    )
    ax.set_xlabel("FLOPs per byte")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"roofline — {result['device']}", fontsize=9)


def _save(result: dict, timed: dict, device_name: str) -> None:
    """benchmarks/results/kernels_<device>.json, and the plot of its timings (`timed`) when it has some."""
    tag = next((k.lower() for k in PEAK if k in device_name), device_name.split()[-1].lower())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"kernels_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    if timed:
        plot(timed, RESULTS / f"kernels_{tag}.png")
    print(json.dumps(result, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run on the CPU under Triton's interpreter, small shapes")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--gpu-check", action="store_true", help="all the GPU work in one run (benchmarks/gpu_check.py)")
    args = ap.parse_args()
    if args.gpu_check:
        if not torch.cuda.is_available():
            sys.exit("--gpu-check needs a CUDA device")
        from benchmarks.gpu_check import gpu_check

        result = gpu_check()
        name = torch.cuda.get_device_name()
        timed = result.get("timings_bfloat16") or result.get("timings_float16") or {}
        _save(result | {"device": name, "commit": timed.get("commit"), "torch": torch.__version__}, timed, name)
        return
    if args.cpu:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("set TRITON_INTERPRET=1 for --cpu (before Python starts)")
        device, dtype = "cpu", torch.float32
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: use --cpu")
        device, dtype = "cuda", getattr(torch, args.dtype)
    result = run(device, dtype)
    _save(result, result, "cpu" if device == "cpu" else torch.cuda.get_device_name())


if __name__ == "__main__":
    main()
