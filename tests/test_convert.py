"""lab against transformers on the same weights: logits, greedy tokens, round trips, folders."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import lab
from lab.convert import CheckpointError, UnsupportedModelError, from_transformers, to_transformers
from tests import hf_factory as F

CASES = {
    "blip2-base": lambda: F.blip2(),
    "blip2-wide-mha-freq2": lambda: F.blip2(
        text=F.llama(hidden=48, heads=6, kv_heads=6), q_hidden=48, q_heads=3, q_layers=3, freq=2, queries=8
    ),
    "blip2-mqa-1query": lambda: F.blip2(text=F.llama(hidden=32, heads=4, kv_heads=1, tie=True), queries=1),
    "instructblip-base": lambda: F.blip2(instruct=True),
    "instructblip-gqa3-freq3": lambda: F.blip2(
        instruct=True,
        vis=F.vision(hidden=48, heads=6, image=24, patch=6),
        text=F.llama(hidden=48, heads=6, kv_heads=2, head_dim=16),
        q_layers=4,
        freq=3,
        queries=6,
    ),
    "blip2-opt": lambda: F.blip2(text=F.opt()),
    "blip2-opt-postnorm-untied": lambda: F.blip2(text=F.opt(hidden=48, heads=6, layers=3, pre_norm=False, tie=False)),
    "instructblip-opt": lambda: F.blip2(instruct=True, text=F.opt(heads=2)),
    "llava-base": lambda: F.llava(),
    "llava-last-full": lambda: F.llava(
        feature_layer=-1, strategy="full", text=F.llama(hidden=40, heads=5, kv_heads=5, theta=500000.0)
    ),
    "llava-layer1-gqa4": lambda: F.llava(
        vis=F.vision(layers=3), feature_layer=1, text=F.llama(hidden=64, heads=8, kv_heads=2, layers=3)
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request):
    hf = CASES[request.param]()
    return hf, from_transformers(hf).eval()


def test_logits_match(pair):
    hf, model = pair
    px = F.pixels(hf.config)
    ids, mask = F.prompt(hf.config, pad_rows=(1,))
    hf_kw, lab_kw = F.instruction(hf)
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, **hf_kw).logits
        out = model(px, ids, mask, **lab_kw).logits
    keep = mask.bool()
    rel = (ref - out)[keep].norm() / ref[keep].norm()
    assert rel < 1e-4, rel


def test_image_features_match(pair):
    hf, model = pair
    if hf.config.model_type == "llava":
        pytest.skip("LLaVA's get_image_features returns per-image lists in transformers")
    px = F.pixels(hf.config)
    hf_kw, lab_kw = F.instruction(hf)
    with torch.no_grad():
        ref = hf.get_image_features(px, **hf_kw).pooler_output
        out = model.get_image_features(px, **lab_kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_loss_matches(pair):
    hf, model = pair
    px = F.pixels(hf.config)
    ids, mask = F.prompt(hf.config)
    labels = ids.masked_fill(ids == F.IMAGE_TOKEN, -100)
    hf_kw, lab_kw = F.instruction(hf)
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, labels=labels, **hf_kw).loss
        out = model(px, ids, mask, labels=labels, **lab_kw).loss
    assert torch.allclose(ref, out, rtol=1e-5)


def test_greedy_generation_identical(pair):
    hf, model = pair
    px = F.pixels(hf.config)
    ids, mask = F.prompt(hf.config, pad_rows=(1,), left=True)
    hf_kw, lab_kw = F.instruction(hf)
    for eos in (None, 7):
        kw = dict(max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
        ref = hf.generate(
            pixel_values=px,
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            **({**kw, "eos_token_id": eos if eos is not None else []}),
            **hf_kw,
        )
        out = model.generate(px, ids, mask, **{**kw, "eos_token_id": eos if eos is not None else []}, **lab_kw)
        assert torch.equal(ref, out), (ref[:, -10:], out[:, -10:])


def test_generation_keywords_match_transformers(pair):
    """min_new_tokens, several eos ids and repetition_penalty mean what they mean in transformers."""
    hf, model = pair
    px = F.pixels(hf.config)
    ids, mask = F.prompt(hf.config, pad_rows=(1,), left=True)
    hf_kw, lab_kw = F.instruction(hf)
    with torch.no_grad():
        first = hf.generate(pixel_values=px, input_ids=ids, attention_mask=mask, max_new_tokens=3, **hf_kw)
    eos = sorted({int(t) for t in first[:, -3:].flatten()})[:2]  # ids greedy decoding does emit
    kw = dict(max_new_tokens=8, min_new_tokens=4, eos_token_id=eos, pad_token_id=0, repetition_penalty=1.3)
    ref = hf.generate(pixel_values=px, input_ids=ids, attention_mask=mask, do_sample=False, **kw, **hf_kw)
    out = model.generate(px, ids, mask, **kw, **lab_kw)
    assert torch.equal(ref, out), (ref[:, -8:], out[:, -8:])


def test_generation_defaults_come_from_the_checkpoint(pair, tmp_path):
    """Keywords left out come from the checkpoint's generation_config.json, as in transformers.
    (transformers' BLIP-2 / InstructBLIP generate hands over to the language model and does not
    read that file; lab reads it for every family, so only LLaVA has a reference to match.)"""
    hf, _ = pair
    if hf.config.model_type != "llava":
        pytest.skip("transformers' BLIP-2 / InstructBLIP generate ignores generation_config.json")
    hf.generation_config.max_new_tokens = 4
    hf.generation_config.min_new_tokens = 2
    hf.generation_config.eos_token_id = [5, 7]
    hf.generation_config.pad_token_id = 0
    try:
        hf.save_pretrained(tmp_path)
        model = lab.load_pretrained(tmp_path)
        px = F.pixels(hf.config)
        ids, mask = F.prompt(hf.config, left=True)
        hf_kw, lab_kw = F.instruction(hf)
        with torch.no_grad():
            ref = hf.generate(pixel_values=px, input_ids=ids, attention_mask=mask, **hf_kw)
        assert torch.equal(ref, model.generate(px, ids, mask, **lab_kw))
        assert torch.equal(ref, from_transformers(hf).generate(px, ids, mask, **lab_kw))
        assert to_transformers(model).generation_config.max_new_tokens == 4  # and back again
    finally:
        hf.generation_config = tf.GenerationConfig.from_model_config(hf.config)


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(num_beams=0), "num_beams"),
        (dict(top_p=0.0, do_sample=True), "top_p"),
        (dict(top_k=-1, do_sample=True), "top_k"),
        (dict(temperature=0.0, do_sample=True), "temperature"),
        (dict(min_new_tokens=-1), "min_new_tokens"),
    ],
)
def test_invalid_generation_values_name_the_argument(kw, name):
    hf = CASES["llava-base"]()
    model = from_transformers(hf).eval()
    ids, mask = F.prompt(hf.config, left=True)
    with pytest.raises(ValueError, match=name):
        model.generate(F.pixels(hf.config), ids, mask, **kw)


def test_round_trip_is_exact(pair):
    _, model = pair
    back = from_transformers(to_transformers(model))
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_transformers_folder_loads(pair, tmp_path):
    hf, model = pair
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")  # sharded
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    loaded = lab.load_pretrained(tmp_path / "hf")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_lab_folder_loads_in_both(pair, tmp_path):
    hf, model = pair
    lab.save_pretrained(model, tmp_path / "lab")
    again = lab.load_pretrained(tmp_path / "lab")
    theirs = type(hf).from_pretrained(tmp_path / "lab").eval()
    px = F.pixels(hf.config)
    ids, mask = F.prompt(hf.config)
    hf_kw, lab_kw = F.instruction(hf)
    with torch.no_grad():
        ref = model(px, ids, mask, **lab_kw).logits
        assert torch.equal(again(px, ids, mask, **lab_kw).logits, ref)
        assert torch.allclose(
            theirs(pixel_values=px, input_ids=ids, attention_mask=mask, **hf_kw).logits, ref, rtol=1e-4, atol=1e-4
        )


def test_missing_and_mismatched_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = F.blip2()
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    key = "language_projection.weight"
    save_file({k: v for k, v in tensors.items() if k != key}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensors.*language_projection.weight"):
        lab.load_pretrained(tmp_path)
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="mismatched shapes.*language_projection.weight"):
        lab.load_pretrained(tmp_path)
    tensors[key] = torch.zeros(32, 32)
    tensors["language_model.model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 31)  # part of a fused q/k/v
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"mismatched shapes.*k_proj.weight"):
        lab.load_pretrained(tmp_path)


def test_unsupported_architecture_and_text_model():
    with pytest.raises(UnsupportedModelError, match="unsupported architecture GPT2LMHeadModel"):
        from_transformers(tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=4)))
    gpt2 = tf.GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=4).to_dict()
    cfg = tf.Blip2Config(
        vision_config=F.vision(),
        text_config=gpt2,
        num_query_tokens=4,
        image_token_index=5,
        qformer_config=dict(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64, encoder_hidden_size=32
        ),
    )
    with pytest.raises(UnsupportedModelError, match="unsupported text model 'gpt2'"):
        from_transformers(tf.Blip2ForConditionalGeneration(cfg))


def test_linear_connector_has_no_transformers_twin_but_saves(tmp_path):
    from lab.models import ConnectorConfig, VisionLanguageModel, VLMConfig

    model = VisionLanguageModel(VLMConfig(connector=ConnectorConfig(kind="linear")))
    with pytest.raises(UnsupportedModelError, match="no transformers equivalent"):
        to_transformers(model)
    lab.save_pretrained(model, tmp_path)
    again = lab.load_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
