"""The Perceiver Resampler connector: shapes, its attention over [features; latents], the three
attention implementations agreeing (Triton under the interpreter), training from the CLI config."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from lab.config import ConfigError
from lab.models import ConnectorConfig, PerceiverConfig, VisionLanguageModel, VLMConfig
from lab.models.perceiver import PerceiverAttention, PerceiverResampler
from lab.train import build_config


def test_k_latents_whatever_the_patch_count():
    torch.manual_seed(0)
    r = PerceiverResampler(PerceiverConfig(num_latents=5), 32)
    for n in (3, 17, 64):
        assert r(torch.randn(2, n, 32)).shape == (2, 5, 32)


def test_attention_reads_features_and_latents_together():
    """softmax over the concatenation [norm(features); norm(latents)], one set of keys."""
    torch.manual_seed(0)
    attn = PerceiverAttention(PerceiverConfig(num_heads=2), 16).eval()
    x, lat = torch.randn(2, 7, 16), torch.randn(2, 3, 16)
    ln_x, ln_l = attn.norm_media(x), attn.norm_latents(lat)
    kv = torch.cat([ln_x, ln_l], 1)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=2) for t in (attn.q(ln_l), attn.k(kv), attn.v(kv)))
    p = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1)
    ref = attn.out(rearrange(p @ v, "b h n d -> b n (h d)"))
    assert torch.allclose(attn(x, lat), ref, atol=1e-5)


@pytest.mark.parametrize("impl", ["eager", "triton"])
def test_implementations_agree_forward_and_backward(impl):
    torch.manual_seed(0)
    ref = PerceiverResampler(PerceiverConfig(num_latents=4, attn_impl="sdpa"), 32)
    other = PerceiverResampler(PerceiverConfig(num_latents=4, attn_impl=impl), 32)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 32)
    a, b = ref(x), other(x)
    assert torch.allclose(a, b, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), other.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-4), name


def test_connector_config_and_vlm():
    cfg = VLMConfig(connector=ConnectorConfig(kind="perceiver", perceiver=PerceiverConfig(num_latents=6)))
    assert cfg.image_tokens == 6
    model = VisionLanguageModel(cfg)
    ids = torch.full((1, 10), 5)
    ids[0, 1:7] = cfg.image_token_id
    assert model(torch.randn(1, 3, 32, 32), ids).logits.shape == (1, 10, cfg.llm.vocab_size)
    with pytest.raises(ConfigError, match="connector.perceiver is set"):
        ConnectorConfig(kind="mlp", perceiver=PerceiverConfig())
    with pytest.raises(ConfigError, match="perceiver.num_latents"):
        PerceiverConfig(num_latents=0)


def test_cli_switches_connector_sections():
    c = build_config("instruct", quick=True, overrides={"model.connector": "perceiver"})
    assert c.model.connector.qformer is None and c.model.connector.perceiver == PerceiverConfig()
    back = build_config(
        "instruct", quick=True, overrides={"model.connector": "perceiver", "model.connector.kind": "mlp"}
    )
    assert back.model.connector.perceiver is None


def test_trains_saves_and_loads(tmp_path):
    import lab
    from lab.train import train

    c = build_config(
        "instruct", quick=True, overrides={"model.connector": "perceiver", "max_steps": 3, "batch_size": 4}
    )
    train(c, tmp_path / "run", progress=False)
    model = lab.load_pretrained(tmp_path / "run")
    assert model.cfg.connector.perceiver == PerceiverConfig()
    assert any(p.abs().sum() > 0 for p in model.connector.resampler.parameters())
