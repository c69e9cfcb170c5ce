"""Every registered connector, through what a new one must support: a config choice, training,
save and load, its token count, and transformers conversion where an architecture is built on it."""

from __future__ import annotations

import pytest
import torch

import lab
from lab.convert import UnsupportedModelError, family_of_lab, from_transformers, to_transformers
from lab.models.connectors import CONNECTORS, ConnectorConfig, sections
from lab.train import build_config, train

# What transformers' LLaVA expects of the vision tower beside its MLP projector (CLIP's layout).
CLIP_VISION = {
    "model.vision.pre_norm": True,
    "model.vision.post_norm": False,
    "model.vision.qkv_bias": "qkv",
    "model.vision.patch_bias": False,
}


@pytest.mark.parametrize("kind", list(CONNECTORS))
def test_every_connector_trains_saves_loads_and_converts(kind, tmp_path):
    entry = CONNECTORS[kind]
    vision = CLIP_VISION if "llava" in entry.transformers else {}
    overrides = {"model.connector.kind": kind, "max_steps": 3, "batch_size": 4, "model.llm.num_layers": 1}
    cfg = build_config("instruct", quick=True, overrides={**overrides, **vision})
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["trainable_parameters"] > 0 and summary["steps"] == 3

    model = lab.load_pretrained(tmp_path / "run").eval()
    assert model.cfg.connector.kind == kind
    features = model.cfg.vision.features
    assert model.cfg.image_tokens == entry.tokens(model.cfg.connector, features)
    x = torch.rand(2, 3, model.cfg.vision.image_size, model.cfg.vision.image_size)
    q = model.cfg.connector.qformer
    kw = {"instruction_ids": torch.ones(2, 3, dtype=torch.long)} if q and q.instruction_aware else {}
    with torch.no_grad():
        tokens = model.connector(model.vision(x), **kw)
    assert tokens.shape == (2, model.cfg.image_tokens, model.cfg.llm.hidden_size)

    if not entry.transformers:
        with pytest.raises(UnsupportedModelError, match=f"connector={kind!r}"):
            family_of_lab(model.cfg)
        return
    assert family_of_lab(model.cfg) in entry.transformers
    back = from_transformers(to_transformers(model)).eval()
    ids = torch.tensor([[1] + [model.cfg.image_token_id] * model.cfg.image_tokens + [7, 8]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(back(x, ids, **kw).logits, model(x, ids, **kw).logits)


@pytest.mark.parametrize("kind", list(CONNECTORS))
def test_a_kind_keeps_only_its_own_section(kind):
    """Choosing a kind fills its section with defaults and drops every other kind's."""
    cfg = build_config("instruct", quick=True, overrides={"model.connector": kind}).model.connector
    for name in sections():
        assert (getattr(cfg, name) is not None) == (CONNECTORS[kind].section == name)
    other = next((s for s in sections() if s != CONNECTORS[kind].section), None)
    if other is not None:
        with pytest.raises(lab.config.ConfigError, match=f"connector.{other} is set"):
            ConnectorConfig.from_dict({"kind": kind, other: {}})


def test_the_docs_list_every_connector():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "extending.md").read_text()
    for kind in CONNECTORS:
        assert f"`{kind}`" in text, f"docs/extending.md does not list the connector {kind!r}"
