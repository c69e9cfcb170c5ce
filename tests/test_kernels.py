"""Triton kernels under the interpreter (see conftest.py) against float64 references."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lab_kernels
from lab_kernels import reference as R

SWEEP = settings(max_examples=12, deadline=None)


def _pairs(*shapes, seed=0, scale=1.0):
    """float64 leaves and float32 copies of random tensors with the given shapes."""
    g = torch.Generator().manual_seed(seed)
    ref = [(torch.randn(*s, generator=g, dtype=torch.float64) * scale).requires_grad_() for s in shapes]
    return ref, [t.detach().float().requires_grad_() for t in ref]


def _mask(b, nk, kind, seed=0):
    if kind == "none":
        return None
    if kind == "single":  # keeps exactly one key per row
        m = torch.zeros(b, nk, dtype=torch.bool)
        m[torch.arange(b), torch.randint(0, nk, (b,), generator=torch.Generator().manual_seed(seed))] = True
        return m
    m = torch.rand(b, nk, generator=torch.Generator().manual_seed(seed)) > 0.4
    m[:, 0] = True
    return m


def _compare(out, ref, ours, theirs, tol=2e-5):
    g = torch.randn_like(ref)
    assert (out.double() - ref).abs().max() < tol * max(1.0, ref.abs().max().item())
    out.backward(g.float())
    ref.backward(g)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.grad.double() - b.grad).abs().max() < tol * max(1.0, b.grad.abs().max().item())


@SWEEP
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    nq=st.sampled_from([1, 3, 17, 32, 33]),
    nk=st.sampled_from([1, 5, 31, 33, 70]),
    d=st.sampled_from([4, 16, 24, 64]),
    mask=st.sampled_from(["none", "random", "single"]),
)
def test_cross_attention_matches_float64(b, h, nq, nk, d, mask):
    theirs, ours = _pairs((b, h, nq, d), (b, h, nk, d), (b, h, nk, d))
    m = _mask(b, nk, mask)
    out = lab_kernels.cross_attention(*ours, key_padding_mask=m)
    _compare(out, R.cross_attention(*theirs, key_padding_mask=m), ours, theirs)


@SWEEP
@given(
    b=st.integers(1, 2),
    heads=st.sampled_from([1, 2, 4]),
    d=st.sampled_from([8, 16, 20]),
    nq=st.sampled_from([1, 8, 32]),
    nk=st.sampled_from([1, 7, 40]),
    dx=st.sampled_from([8, 33, 48]),
    mask=st.sampled_from(["none", "random", "single"]),
)
def test_projected_cross_attention_matches_float64(b, heads, d, nq, nk, dx, mask):
    dq = heads * d
    theirs, ours = _pairs((b, nq, dq), (b, nk, dx), (dq, dx), (dq,), (dq, dx), (dq,), scale=0.5)
    m = _mask(b, nk, mask)
    out = lab_kernels.projected_cross_attention(*ours[:6], heads, key_padding_mask=m)
    ref = R.projected_cross_attention(*theirs[:6], heads, key_padding_mask=m)
    _compare(out, ref, ours, theirs)


@SWEEP
@given(
    lead=st.sampled_from([(5,), (2, 3), (1, 40)]),
    din=st.sampled_from([3, 16, 40]),
    dh=st.sampled_from([8, 33]),
    dout=st.sampled_from([5, 32]),
)
def test_mlp_projector_matches_float64(lead, din, dh, dout):
    theirs, ours = _pairs((*lead, din), (dh, din), (dh,), (dout, dh), (dout,), scale=0.5)
    out = lab_kernels.mlp_projector(*ours)
    assert out.shape == (*lead, dout)
    _compare(out, R.mlp_projector(*theirs), ours, theirs)


def _strided(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: every other element of a wider tensor, the
    transpose of a transposed copy, or a broadcast (stride 0) of the first row."""
    if layout == "every_other":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.ndim >= 2 else t
    return t[:1].expand_as(t) if t.ndim >= 2 else t  # "expanded"


def _kernel_args(kernel: str) -> tuple[dict, callable, callable]:
    torch.manual_seed(0)
    if kernel == "mlp_projector":
        args = {"x": torch.randn(6, 8), "w1": torch.randn(16, 8), "b1": torch.randn(16), "w2": torch.randn(4, 16)}
        args["b2"] = torch.randn(4)
        return args, lab_kernels.mlp_projector, R.mlp_projector
    if kernel == "cross_attention":
        args = {k: torch.randn(2, 2, 5, 8) for k in ("q", "k", "v")}
        return args, lab_kernels.cross_attention, R.cross_attention
    args = {"hidden_q": torch.randn(2, 5, 8), "x": torch.randn(2, 7, 12), "wk": torch.randn(8, 12)}
    args |= {"bk": torch.randn(8), "wv": torch.randn(8, 12), "bv": torch.randn(8)}
    return args, lambda *a: lab_kernels.projected_cross_attention(*a, 2), lambda *a: R.projected_cross_attention(*a, 2)


ARGS = {
    "mlp_projector": ("x", "w1", "b1", "w2", "b2"),
    "cross_attention": ("q", "k", "v"),
    "projected_cross_attention": ("hidden_q", "x", "wk", "bk", "wv", "bv"),
}


@pytest.mark.parametrize("kernel,arg", [(k, a) for k, args in ARGS.items() for a in args])
@pytest.mark.parametrize("layout", ["every_other", "transposed", "expanded"])
def test_kernels_accept_any_stride(kernel, arg, layout):
    args, ours, ref = _kernel_args(kernel)
    args[arg] = _strided(args[arg], layout)
    want = ref(*(a.double() for a in args.values()))
    got = ours(*args.values())
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_triton_kernels_actually_ran(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("reference path used")

    for name in ("cross_attention", "projected_cross_attention", "mlp_projector"):
        monkeypatch.setattr(R, name, boom)
    before = lab_kernels.launches.copy()
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    lab_kernels.cross_attention(q, torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)).sum().backward()
    lab_kernels.projected_cross_attention(
        torch.randn(1, 4, 16),
        torch.randn(1, 6, 8),
        torch.randn(16, 8),
        torch.randn(16),
        torch.randn(16, 8),
        torch.randn(16),
        2,
    )
    lab_kernels.mlp_projector(
        torch.randn(3, 8), torch.randn(16, 8), torch.randn(16), torch.randn(4, 16), torch.randn(4)
    )
    ran = lab_kernels.launches - before
    assert ran["attn_fwd"] == 1 and ran["attn_bwd"] == 1 and ran["attn_fwd_projected"] == 1
    assert ran["linear_gelu"] == 1 and ran["linear"] == 1


def test_float16_runs_and_is_close():
    theirs, _ = _pairs((2, 2, 8, 16), (2, 2, 20, 16), (2, 2, 20, 16))
    half = [t.detach().half() for t in theirs]
    out = lab_kernels.cross_attention(*half)
    assert out.dtype == torch.float16
    assert (out.double() - R.cross_attention(*theirs)).abs().max() < 5e-3


def test_autocast_casts_inputs_like_a_matmul():
    """Under autocast an fp16 activation meets fp32 weights and image features (the eager path's
    matmuls would cast them): every wrapper casts its inputs to the autocast dtype, as autocast does."""
    theirs, ours = _pairs((2, 4, 16), (2, 6, 8), (16, 8), (16,), (16, 8), (16,), scale=0.5)
    ours[0] = ours[0].detach().half().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        out = lab_kernels.projected_cross_attention(*ours, 2)
        y = lab_kernels.mlp_projector(
            theirs[1].float(), torch.randn(16, 8), torch.randn(16), torch.randn(4, 16), torch.randn(4)
        )
    assert out.dtype == torch.float16 and y.dtype == torch.float16
    assert (out.double() - R.projected_cross_attention(*theirs, 2)).abs().max() < 1e-2
    out.float().sum().backward()
    assert ours[2].grad.dtype == torch.float32  # the fp32 weight gets an fp32 gradient through the cast


def test_shape_dtype_device_errors_are_named():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"k/v \[1, 3, 6, 8\] must be \[B=1, H=2, Nk, D=8\]"):
        lab_kernels.cross_attention(q, torch.randn(1, 3, 6, 8), torch.randn(1, 3, 6, 8))
    with pytest.raises(ValueError, match="dtype mismatch: k is torch.float16"):
        lab_kernels.cross_attention(q, torch.randn(1, 2, 6, 8).half(), torch.randn(1, 2, 6, 8))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \[B=1, Nk=6\]"):
        lab_kernels.cross_attention(
            q, torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.ones(1, 5, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match=r"wk must be \[Dq=16, Dx=8\], got \[16, 9\]"):
        lab_kernels.projected_cross_attention(
            torch.randn(1, 4, 16),
            torch.randn(1, 6, 8),
            torch.randn(16, 9),
            torch.randn(16),
            torch.randn(16, 8),
            torch.randn(16),
            2,
        )
    with pytest.raises(ValueError, match=r"w1 must be \[Dh, Din=8\], got \[16, 7\]"):
        lab_kernels.mlp_projector(
            torch.randn(3, 8), torch.randn(16, 7), torch.randn(16), torch.randn(4, 16), torch.randn(4)
        )
    with pytest.raises(ValueError, match="masks every key"):
        lab_kernels.cross_attention(
            q, torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.zeros(1, 6, dtype=torch.bool)
        )


def test_without_interpreter_falls_back_with_one_warning():
    code = (
        "import warnings, torch, lab_kernels\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(2): lab_kernels.mlp_projector(torch.randn(3, 8), torch.randn(16, 8), torch.randn(16),"
        " torch.randn(4, 16), torch.randn(4))\n"
        "msgs = [str(x.message) for x in w if 'reference implementation' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert sum(lab_kernels.launches.values()) == 0\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_every_autotuning_configuration_compiles_for_sm90_without_spilling():
    """The interpreter is lenient where the GPU compiler is not, and says nothing of registers: lower
    every kernel, in every configuration the autotuner may pick and each variant the wrappers launch,
    to an sm_90 cubin (Triton ships ptxas), and refuse any that spills or overflows shared memory."""
    code = (
        "import json\n"
        "from lab_kernels.compile_check import compile_all, problems\n"
        "rows = compile_all(dtypes=('bf16',))\n"
        "regs = max(r['registers'] for r in rows)\n"
        "print(json.dumps({'rows': len(rows), 'problems': problems(rows), 'regs': regs}))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = __import__("json").loads(res.stdout.strip().splitlines()[-1])
    from lab_kernels import tiles

    assert out["rows"] == 3 * len(tiles.ATTENTION) * 2 + len(tiles.LINEAR) * 2  # kernels x configs x variants
    assert out["problems"] == [] and 0 < out["regs"] <= 255


def test_the_gpu_checks_plumbing_runs_on_the_cpu():
    """benchmarks/gpu_check.py runs on a lent GPU once, for minutes: its correctness and end-to-end
    parts are exercised here at tiny shapes, Triton under the interpreter."""
    from benchmarks.gpu_check import correctness, e2e

    checked = correctness(torch.float32, "cpu", small=True)
    assert all(row["ok"] for row in checked.values()), checked
    assert set(checked["projected_cross_attention"]["fused"]) == {"out", *(f"grad{i}" for i in range(6))}
    before = lab_kernels.launches.copy()
    rows = e2e("cpu", steps=2, batch=2, tiny=True)
    assert sum((lab_kernels.launches - before).values()) > 0  # the fused paths ran
    for name, row in rows.items():
        assert row["max_loss_diff"] < 1e-3, (name, row)
