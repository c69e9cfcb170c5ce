"""T5 (Flan-T5) as BLIP-2's and InstructBLIP's language model, and on its own, against transformers:
logits, loss, greedy and beam tokens on padded batches, the relative-position buckets, the KV and
cross-attention caches, and conversion both ways."""

import pytest
import torch
import transformers as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import lab
from lab.convert import from_transformers, to_transformers
from lab.models import Seq2SeqLM, VisionLanguageModel
from lab.models.t5 import relative_bucket
from tests import hf_factory as F

CASES = {
    "blip2-flan": lambda: F.blip2(text=F.t5()),
    "blip2-t5v1-tied-relu": lambda: F.blip2(text=F.t5(gated=False, tie=True)),
    "instructblip-flan-odd": lambda: F.blip2(instruct=True, text=F.t5(hidden=44, heads=6, d_kv=7), queries=5),
    "blip2-flan-deeper-decoder": lambda: F.blip2(text=F.t5(layers=1, decoder_layers=3)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request):
    hf = CASES[request.param]()
    return request.param, hf, from_transformers(hf).eval()


def batch(hf):
    px = F.pixels(hf.config)
    ids, mask = F.prompt(hf.config, pad_rows=(1,), text_len=20)  # > the 16 of max_distance: far buckets too
    labels = torch.randint(2, 96, (2, 6), generator=torch.Generator().manual_seed(4))
    labels[1, -2:] = -100
    return px, ids, mask, labels


def test_logits_and_loss_match(pair):
    _, hf, model = pair
    px, ids, mask, labels = batch(hf)
    hf_kw, lab_kw = F.instruction(hf)
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, labels=labels, **hf_kw)
        out = model(px, ids, mask, labels=labels, **lab_kw)
        dec = torch.randint(0, 96, (2, 5))
        dmask = torch.ones_like(dec)
        dmask[0, -1] = 0
        ref2 = hf(pixel_values=px, input_ids=ids, attention_mask=mask, decoder_input_ids=dec, **hf_kw)
        out2 = model(px, ids, mask, decoder_input_ids=dec, **lab_kw)
        dec_kw = dict(decoder_input_ids=dec, decoder_attention_mask=dmask)
        ref3 = hf(pixel_values=px, input_ids=ids, attention_mask=mask, **dec_kw, **hf_kw)
        out3 = model(px, ids, mask, **dec_kw, **lab_kw)
    assert out.logits.shape == (2, 6, 96)  # the decoder's positions
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2.logits, ref2.logits, atol=1e-4, rtol=1e-4)
    keep = dmask.bool()
    torch.testing.assert_close(out3.logits[keep], ref3.logits[keep], atol=1e-4, rtol=1e-4)


def test_greedy_and_beam_tokens_identical(pair):
    name, hf, model = pair
    px, ids, mask, _ = batch(hf)
    hf_kw, lab_kw = F.instruction(hf)
    if "deeper-decoder" in name:
        # transformers' generate sizes T5's cache by the encoder's layer count and fails here; the
        # reference is greedy decoding through its full forward instead.
        ref = torch.zeros(2, 1, dtype=torch.long)
        with torch.no_grad():
            for _ in range(8):
                logits = hf(pixel_values=px, input_ids=ids, attention_mask=mask, decoder_input_ids=ref).logits
                ref = torch.cat([ref, logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(model.generate(px, ids, mask, max_new_tokens=8, eos_token_id=[]), ref)
        return
    for kw in (dict(max_new_tokens=8), dict(max_new_tokens=8, eos_token_id=[]), dict(max_new_tokens=6, num_beams=3)):
        with torch.no_grad():
            ref = hf.generate(pixel_values=px, input_ids=ids, attention_mask=mask, do_sample=False, **kw, **hf_kw)
        out = model.generate(px, ids, mask, **kw, **lab_kw)
        assert torch.equal(ref, out), (kw, ref, out)
        assert bool((out[:, 0] == model.cfg.llm.decoder_start_token_id).all())  # decoder tokens, as transformers


def test_round_trip_and_folders(pair, tmp_path):
    _, hf, model = pair
    back = from_transformers(to_transformers(model))
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    lab.save_pretrained(model, tmp_path / "lab")
    theirs = type(hf).from_pretrained(tmp_path / "lab").eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = lab.load_pretrained(tmp_path / "hf")
    px, ids, mask, labels = batch(hf)
    hf_kw, lab_kw = F.instruction(hf)
    with torch.no_grad():
        ref = model(px, ids, mask, labels=labels, **lab_kw).logits
        torch.testing.assert_close(ours(px, ids, mask, labels=labels, **lab_kw).logits, ref, atol=1e-6, rtol=1e-6)
        got = theirs(pixel_values=px, input_ids=ids, attention_mask=mask, labels=labels, **hf_kw).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_untied_head_is_read_from_its_own_tensor():
    hf = CASES["blip2-flan"]()
    lm = hf.language_model
    assert lm.lm_head.weight is not lm.shared.weight
    model = from_transformers(hf)
    assert not model.cfg.llm.tie_word_embeddings
    assert torch.equal(model.llm.lm_head.weight, lm.lm_head.weight)


def test_bare_t5_matches_transformers():
    torch.manual_seed(0)
    cfg = tf.T5Config(**F.t5())
    hf = F._untie_t5(F._randomize(tf.T5ForConditionalGeneration(cfg)), cfg)
    model = from_transformers(hf)
    assert isinstance(model, Seq2SeqLM)
    ids = torch.randint(2, 96, (2, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    labels = torch.randint(2, 96, (2, 4))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        out = model(ids, mask, labels=labels)
        want = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=7, do_sample=False)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=7), want)


def test_cached_decoding_matches_a_full_forward():
    model = from_transformers(CASES["blip2-flan"]()).llm
    embeds = torch.randn(2, 9, model.cfg.hidden_size)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    dec = torch.randint(0, 96, (2, 6))
    from lab.models.t5 import T5Decoding

    with torch.no_grad():
        full = model(embeds, mask, dec)
        state = T5Decoding(model, embeds, mask, 6)
        steps = [state.step(dec[:, t : t + 1]) for t in range(6)]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    rel=st.lists(st.integers(-300, 300), min_size=1, max_size=20),
    bidirectional=st.booleans(),
    buckets=st.sampled_from([8, 32]),
    distance=st.sampled_from([16, 128]),
)
def test_relative_buckets_match_transformers(rel, bidirectional, buckets, distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    r = torch.tensor(rel)
    want = T5Attention._relative_position_bucket(r, bidirectional, buckets, distance)
    assert torch.equal(relative_bucket(r, bidirectional, buckets, distance), want)


def test_t5_config_from_yaml_keys_builds_a_vlm():
    model = VisionLanguageModel(lab.models.VLMConfig.from_dict({"llm": {"family": "t5", "vocab_size": 64}}))
    ids = torch.full((1, model.cfg.image_tokens + 2), model.cfg.image_token_id)
    ids[0, -2:] = 7
    out = model.generate(torch.randn(1, 3, 32, 32), ids, max_new_tokens=3, eos_token_id=[])
    assert out.shape == (1, 4)
