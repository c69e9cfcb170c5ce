"""lab with the Triton kernels (interpreter) still matches transformers, and trains through them."""

from __future__ import annotations

import pytest
import torch

import lab_kernels
from lab.convert import from_transformers
from tests import hf_factory as F

OVERRIDES = {
    "blip2": (
        lambda: F.blip2(freq=2, queries=6),
        {"connector": {"qformer": {"attn_impl": "triton", "attention_dropout": 0.0}}},
    ),
    "instructblip": (
        lambda: F.blip2(instruct=True),
        {"connector": {"qformer": {"attn_impl": "triton", "attention_dropout": 0.0}}},
    ),
    "llava": (lambda: F.llava(), {"connector": {"mlp_impl": "triton"}}),
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_triton_impl_matches_transformers(name):
    make, overrides = OVERRIDES[name]
    hf = make()
    model = from_transformers(hf, **overrides)
    px = F.pixels(hf.config)
    ids, mask = F.prompt(hf.config, pad_rows=(1,))
    hf_kw, lab_kw = {}, {}
    if name == "instructblip":
        instr = torch.randint(3, 60, (2, 5))
        instr_mask = torch.ones_like(instr)
        instr_mask[0, -1] = 0
        hf_kw = dict(qformer_input_ids=instr, qformer_attention_mask=instr_mask)
        lab_kw = dict(instruction_ids=instr, instruction_mask=instr_mask)
    before = lab_kernels.launches.copy()
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, **hf_kw).logits
        out = model(px, ids, mask, **lab_kw).logits
    assert sum((lab_kernels.launches - before).values()) > 0
    keep = mask.bool()
    assert (ref - out)[keep].norm() / ref[keep].norm() < 1e-4


def test_training_through_triton_matches_sdpa():
    hf = F.blip2(freq=1)
    tri = from_transformers(
        hf, connector={"qformer": {"attn_impl": "triton", "attention_dropout": 0.0, "hidden_dropout": 0.0}}
    )
    sdpa = from_transformers(hf, connector={"qformer": {"attention_dropout": 0.0, "hidden_dropout": 0.0}})
    px = F.pixels(hf.config)
    ids, mask = F.prompt(hf.config)
    for m in (tri, sdpa):
        m.train()
        m(px, ids, mask, labels=ids.masked_fill(ids == F.IMAGE_TOKEN, -100)).loss.backward()
    for (name, a), b in zip(tri.named_parameters(), sdpa.parameters(), strict=True):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5), name
