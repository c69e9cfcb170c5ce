"""lab's model stack on its own: bad input, freezing, loss masking, decoding paths."""

from __future__ import annotations

import pytest
import torch

from lab.config import ConfigError
from lab.models import ConnectorConfig, QFormerConfig, VisionLanguageModel, VLMConfig


def tiny(kind="qformer", instruction_aware=False, **kw) -> VisionLanguageModel:
    torch.manual_seed(0)
    q = QFormerConfig(instruction_aware=instruction_aware, num_query_tokens=4) if kind == "qformer" else None
    return VisionLanguageModel(VLMConfig(connector=ConnectorConfig(kind=kind, qformer=q), **kw)).eval()


def batch(model, b=2, text=5):
    n = model.cfg.image_tokens
    ids = torch.randint(10, 100, (b, n + text))
    ids[:, 1 : n + 1] = model.cfg.image_token_id
    return torch.randn(b, 3, 32, 32), ids


def test_wrong_image_size_is_named():
    model = tiny()
    _, ids = batch(model)
    with pytest.raises(ValueError, match=r"pixel_values must have shape \[batch, 3, 32, 32\].*got \[2, 3, 24, 24\]"):
        model(torch.randn(2, 3, 24, 24), ids)


def test_raw_or_non_finite_pixels_are_named():
    model = tiny()
    px, ids = batch(model)
    with pytest.raises(ValueError, match="must be floating point.*uint8.*normalising"):
        model((px * 50 + 128).clamp(0, 255).to(torch.uint8), ids)
    px[1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite.*\[1\]"):
        model(px, ids)


def test_sequence_longer_than_the_positions_is_refused():
    from lab.models.llm import LanguageModel, LLMConfig

    cfg = LLMConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        max_position_embeddings=8,
    )
    llm = LanguageModel(cfg)
    assert llm(llm.embed(torch.randint(0, 32, (1, 8)))).shape == (1, 8, 32)
    with pytest.raises(ValueError, match="9 positions exceeds this LLM's max_position_embeddings=8"):
        llm(llm.embed(torch.randint(0, 32, (1, 9))))


def test_placeholder_count_mismatch_is_named():
    model = tiny()
    px, ids = batch(model)
    ids[0, 1] = 11
    with pytest.raises(ValueError, match=r"needs 4 image placeholder tokens.*got \[3, 4\]"):
        model(px, ids)


def test_instruction_ids_for_plain_queries_are_refused():
    for kind in ("qformer", "linear", "mlp"):
        model = tiny(kind)
        px, ids = batch(model)
        with pytest.raises(ValueError, match="instruction"):
            model(px, ids, instruction_ids=torch.ones(2, 3, dtype=torch.long))


def test_instruction_aware_needs_instruction():
    model = tiny(instruction_aware=True)
    px, ids = batch(model)
    with pytest.raises(ValueError, match="pass instruction_ids"):
        model(px, ids)
    out = model(px, ids, instruction_ids=torch.ones(2, 3, dtype=torch.long))
    assert out.logits.shape == (2, ids.shape[1], model.cfg.llm.vocab_size)


def test_unknown_config_key_and_bad_choice():
    with pytest.raises(ConfigError, match=r"unknown config key llm.hiden_size \(did you mean llm.hidden_size\?\)"):
        VLMConfig.from_dict({"llm": {"hiden_size": 3}})
    with pytest.raises(ConfigError, match="connector.kind='resampler' is not allowed"):
        VLMConfig.from_dict({"connector": {"kind": "resampler"}})
    with pytest.raises(ConfigError, match="attention_dropout"):
        QFormerConfig(attn_impl="triton", attention_dropout=0.1)


def test_config_dict_round_trip():
    cfg = VLMConfig(connector=ConnectorConfig(kind="qformer", qformer=QFormerConfig(num_query_tokens=3)))
    assert VLMConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("freeze_vision,freeze_llm", [(True, False), (False, True), (True, True), (False, False)])
def test_gradients_reach_only_unfrozen_parts(freeze_vision, freeze_llm):
    """The freeze flags act through `lab.train.trainable` (decided, then applied), not the model."""
    from lab.train.trainable import apply, decide

    model = tiny(freeze_vision=freeze_vision, freeze_llm=freeze_llm).train()
    assert all(p.requires_grad for p in model.parameters())  # a built model trains everything, as torch's do
    apply(model, decide("instruct", model.cfg, {"vision", "llm"}), model.cfg)
    px, ids = batch(model)
    model(px, ids, labels=ids).loss.backward()
    for part, frozen in (("vision", freeze_vision), ("llm", freeze_llm), ("connector", False)):
        grads = [p.grad for p in getattr(model, part).parameters()]
        if frozen:
            assert all(g is None for g in grads), part
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), part


def test_loss_ignores_minus_100():
    model = tiny("mlp")
    px, ids = batch(model)
    labels = ids.clone()
    labels[:, :-2] = -100
    out = model(px, ids, labels=labels)
    logits = out.logits[:, -3:-1]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, -2:].reshape(-1))
    assert torch.allclose(out.loss, ref, rtol=1e-5)


def test_kv_cache_greedy_matches_full_recompute():
    model = tiny("linear")
    px, ids = batch(model, b=1)
    out = model.generate(px, ids, max_new_tokens=6)
    seq = ids
    for _ in range(6):
        nxt = model(px, seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_eager_and_sdpa_agree():
    model = tiny(instruction_aware=True)
    px, ids = batch(model)
    instr = torch.randint(1, 50, (2, 4))
    ref = model(px, ids, instruction_ids=instr).logits
    eager = VLMConfig.from_dict(
        {
            **model.cfg.to_dict(),
            "vision": {**model.cfg.vision.to_dict(), "attn_impl": "eager"},
            "llm": {**model.cfg.llm.to_dict(), "attn_impl": "eager"},
        }
    )
    other = VisionLanguageModel(eager).eval()
    other.load_state_dict(model.state_dict())
    assert torch.allclose(other(px, ids, instruction_ids=instr).logits, ref, atol=1e-5)


def test_sampling_and_beams():
    model = tiny("mlp")
    px, ids = batch(model)
    g = torch.Generator().manual_seed(0)
    a = model.generate(px, ids, do_sample=True, top_k=1, max_new_tokens=5, generator=g)
    assert torch.equal(a, model.generate(px, ids, max_new_tokens=5))  # top-1 sampling is greedy
    s1 = model.generate(
        px,
        ids,
        do_sample=True,
        top_p=0.9,
        temperature=0.7,
        max_new_tokens=5,
        generator=torch.Generator().manual_seed(1),
    )
    s2 = model.generate(
        px,
        ids,
        do_sample=True,
        top_p=0.9,
        temperature=0.7,
        max_new_tokens=5,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(s1, s2) and s1.shape == (2, ids.shape[1] + 5)
    beams = model.generate(px, ids, num_beams=3, max_new_tokens=5)
    assert beams.shape == (2, ids.shape[1] + 5)

    def logp(seq):
        """Log-probability of seq's new tokens, fed back as generate feeds them: as embeddings (a
        random model may emit the image placeholder id, which `forward` would take for an image slot)."""
        prompt = model.input_embeddings(ids[:1], model.visual_embeddings(px[:1]))
        new = seq[None, ids.shape[1] :]
        lp = model.llm(torch.cat([prompt, model.llm.embed(new)], 1))[0, ids.shape[1] - 1 : -1].log_softmax(-1)
        return lp.gather(-1, new[0, :, None]).sum()

    greedy = model.generate(px, ids, max_new_tokens=5)
    assert (
        logp(beams[0]) >= logp(greedy[0]) - 1e-5
    )  # on this model beam search finds a sequence at least as likely as greedy


def test_right_padding_refused_in_generate():
    model = tiny("mlp")
    px, ids = batch(model)
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(px, ids, mask)


def test_contrastive_hard_negatives_only_add_candidates():
    from lab.models.clip import ClipConfig, ContrastiveHeads

    torch.manual_seed(0)
    heads = ContrastiveHeads(ClipConfig(), 16, 32)
    sim = torch.randn(4, 4).clamp(-1, 1)
    plain = heads.loss(sim)
    far = heads.loss(sim, torch.full((4, 2), -1.0))  # negatives far from every image: little extra mass
    near = heads.loss(sim, sim.diagonal()[:, None].expand(4, 2))  # as close as the true captions
    assert plain <= far < near


@pytest.mark.parametrize("token_wise", [False, True])
def test_contrastive_similarity_is_a_bounded_image_by_caption_matrix(token_wise):
    from lab.models.clip import ClipConfig, ContrastiveHeads

    torch.manual_seed(0)
    heads = ContrastiveHeads(ClipConfig(token_wise=token_wise), 16, 32)
    ids, mask = torch.randint(0, 32, (5, 7)), torch.ones(5, 7, dtype=torch.long)
    mask[0, 3:] = 0
    image = torch.randn(3, 10, 16)
    sim = heads.similarity(image, ids, mask)
    assert sim.shape == (3, 5) and sim.abs().max() <= 1 + 1e-5
    ids2 = ids.clone()  # a padded token of caption 0 changes: its similarities do not
    ids2[0, 5] = (ids[0, 5] + 1) % 32
    assert torch.allclose(heads.similarity(image, ids2, mask), sim, atol=1e-6)


def test_dense_clip_loss_scores_each_patch_against_its_cell_phrase():
    from lab.models.clip import ClipConfig, ContrastiveHeads

    torch.manual_seed(0)
    heads = ContrastiveHeads(ClipConfig(), 16, 32)
    ids, mask = torch.randint(0, 32, (5, 4)), torch.ones(5, 4, dtype=torch.long)
    target = torch.randint(0, 5, (2, 9))
    features = torch.randn(2, 37, 16)  # CLS + a 6x6 patch grid: 2x2 patches per cell
    loss = heads.dense_loss(features, ids, mask, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # a patch grid that does not tile the 3x3 cells is refused
    with pytest.raises(ValueError, match="aligned with the 3x3 cells"):
        heads.dense_loss(torch.randn(2, 17, 16), ids, mask, target)
    # the loss reads the cell layout: features that equal their cell's phrase embedding score better
    with torch.no_grad():
        heads.image_proj.weight.copy_(torch.eye(64, 16))
        heads.image_proj.bias.zero_()
    txt = torch.nn.functional.normalize(heads.text_proj(heads._pooled(ids, mask)), dim=-1)
    from einops import rearrange

    aligned = rearrange(txt[target][..., :16], "b (r q) d -> b r q d", r=3)
    aligned = aligned.repeat_interleave(2, 1).repeat_interleave(2, 2).flatten(1, 2)
    good = heads.dense_loss(torch.cat([torch.zeros(2, 1, 16), aligned], 1), ids, mask, target)
    assert good < heads.dense_loss(torch.cat([torch.zeros(2, 1, 16), aligned.flip(1)], 1), ids, mask, target)


def test_renamed_config_key_still_loads_and_both_names_are_refused():
    """`connector.impl` became `connector.mlp_impl`: older run folders load, mixing both is an error."""
    assert ConnectorConfig.from_dict({"kind": "mlp", "impl": "triton"}).mlp_impl == "triton"
    with pytest.raises(ConfigError, match="give mlp_impl only"):
        ConnectorConfig.from_dict({"kind": "mlp", "impl": "triton", "mlp_impl": "eager"})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_mlp_projector_starts_near_its_inputs_scale(seed):
    """LeCun-uniform layers keep a unit-scale feature near unit scale through Linear-GELU-Linear;
    nn.Linear's default init shrinks it about five-fold (what made the MLP learn slowly)."""
    from lab.models.connectors import MLPConnector
    from lab.models.vision import Features

    torch.manual_seed(seed)
    x = torch.randn(8, 37, 64)

    def rms(init):
        with torch.no_grad():
            y = MLPConnector(ConnectorConfig(kind="mlp", mlp_init=init), Features(64, 6, True), 96)(x)
        return y.pow(2).mean().sqrt().item()

    assert 0.45 < rms("lecun") < 0.9  # GELU keeps ~0.65 of a unit Gaussian's RMS
    assert rms("torch") < 0.3
    with pytest.raises(ConfigError, match="mlp_init"):
        ConnectorConfig(kind="mlp", mlp_init="xavier")
