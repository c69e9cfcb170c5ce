"""The kernels compiled for a GPU, against float64 references: forward and both gradients, each
dtype the model trains in, odd sizes, padding masks, strided inputs, and a whole training step.

Skipped on machines without CUDA, and under the interpreter (conftest sets TRITON_INTERPRET=1
unless the environment says otherwise). Run on a GPU with

    TRITON_INTERPRET=0 python -m pytest tests/test_kernels_cuda.py
"""

from __future__ import annotations

import os

import pytest
import torch

import lab_kernels
from lab_kernels import reference as R

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA GPU and TRITON_INTERPRET=0 (compiled kernels)",
)
# Largest error allowed, relative to the reference's largest magnitude. fp32 inputs go through
# tl.dot in TF32 (10-bit mantissa) unless the wrapper asks for IEEE, so fp32 is not held to 1e-5.
TOL = {torch.float32: 5e-3, torch.float16: 1e-2, torch.bfloat16: 4e-2}
DTYPES = list(TOL)


def _leaves(*shapes, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    ref = [(torch.randn(*s, generator=g, dtype=torch.float64) * scale).cuda().requires_grad_() for s in shapes]
    return ref, [t.detach().to(dtype).requires_grad_() for t in ref]


def _mask(b, nk, seed=0):
    m = torch.rand(b, nk, generator=torch.Generator().manual_seed(seed)) > 0.4
    m[:, 0] = True
    return m.cuda()


def _check(out, ref, ours, theirs, dtype):
    tol = TOL[dtype]
    assert out.dtype == dtype and out.is_cuda
    err = (out.double() - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), f"forward error {err:.2e}"
    g = torch.randn_like(ref)
    out.backward(g.to(dtype))
    ref.backward(g)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        err = (a.grad.double() - b.grad).abs().max().item()
        assert err <= tol * max(1.0, b.grad.abs().max().item()), f"gradient {i} error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,h,nq,nk,d", [(2, 3, 32, 257, 64), (1, 2, 17, 33, 24), (3, 1, 1, 5, 16)])
@pytest.mark.parametrize("masked", [False, True])
def test_cross_attention(dtype, b, h, nq, nk, d, masked):
    theirs, ours = _leaves((b, h, nq, d), (b, h, nk, d), (b, h, nk, d), dtype=dtype)
    m = _mask(b, nk) if masked else None
    out = lab_kernels.cross_attention(*ours, key_padding_mask=m)
    _check(out, R.cross_attention(*theirs, key_padding_mask=m), ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,heads,d,nq,nk,dx", [(4, 12, 64, 32, 257, 1408), (2, 2, 20, 8, 40, 33)])
@pytest.mark.parametrize("masked", [False, True])
def test_projected_cross_attention(dtype, b, heads, d, nq, nk, dx, masked):
    dq = heads * d
    shapes = (b, nq, dq), (b, nk, dx), (dq, dx), (dq,), (dq, dx), (dq,)
    theirs, ours = _leaves(*shapes, dtype=dtype, scale=dx**-0.25)
    m = _mask(b, nk) if masked else None
    out = lab_kernels.projected_cross_attention(*ours, heads, key_padding_mask=m)
    _check(out, R.projected_cross_attention(*theirs, heads, key_padding_mask=m), ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,din,dh,dout", [((576,), 1024, 4096, 512), ((2, 37), 40, 33, 5)])
def test_mlp_projector(dtype, lead, din, dh, dout):
    shapes = (*lead, din), (dh, din), (dh,), (dout, dh), (dout,)
    theirs, ours = _leaves(*shapes, dtype=dtype, scale=din**-0.25)
    out = lab_kernels.mlp_projector(*ours)
    _check(out, R.mlp_projector(*theirs), ours, theirs, dtype)


def test_strided_inputs():
    """Every other column of a wider tensor, on the GPU (the CPU tests cover more layouts)."""
    x = torch.randn(6, 16, device="cuda")[:, ::2]
    w1, b1 = torch.randn(16, 8, device="cuda"), torch.randn(16, device="cuda")
    w2, b2 = torch.randn(4, 32, device="cuda")[:, ::2], torch.randn(4, device="cuda")
    want = R.mlp_projector(*(t.double() for t in (x, w1, b1, w2, b2)))
    torch.testing.assert_close(lab_kernels.mlp_projector(x, w1, b1, w2, b2).double(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", ["blip2", "llava"])
def test_model_trains_through_kernels_like_sdpa(name):
    """One bf16-autocast training step of a small BLIP-2 (Q-Former kernel) and LLaVA (MLP kernel)
    on the GPU: the Triton path's loss and gradients match the default path's, and kernels ran."""
    from lab.convert import from_transformers
    from tests import hf_factory as F

    hf = F.blip2(freq=1) if name == "blip2" else F.llava()
    no_dropout = {"attention_dropout": 0.0, "hidden_dropout": 0.0}
    impl = {"qformer": {"attn_impl": "triton", **no_dropout}} if name == "blip2" else {"mlp_impl": "triton"}
    base = {"qformer": no_dropout} if name == "blip2" else {}
    px, (ids, mask) = F.pixels(hf.config).cuda(), (t.cuda() for t in F.prompt(hf.config))
    labels = ids.masked_fill(ids == F.IMAGE_TOKEN, -100)
    losses, grads = [], []
    for connector in (impl, base):
        model = from_transformers(hf, connector=connector).cuda().train()
        before = lab_kernels.launches.copy()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(px, ids, mask, labels=labels).loss
        loss.backward()
        ran = sum((lab_kernels.launches - before).values())
        assert (ran > 0) == (connector is impl), f"{name}: {ran} Triton launches"
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
    assert abs(losses[0] - losses[1]) < 2e-2 * abs(losses[1]), losses
    assert torch.nn.functional.cosine_similarity(*grads, dim=0).item() > 0.99
