"""BLIP-2 stage 1 as a retrieval model, against transformers' Blip2ForImageTextRetrieval: ITC and
ITM scores, the feature getters, conversion both ways, and a stage-1 run that opens in transformers."""

import pytest
import torch
import transformers as tf

import lab
from lab.convert import from_transformers, to_transformers
from lab.models.blip2_retrieval import Blip2Retrieval
from tests import hf_factory as F


@pytest.fixture(scope="module", params=[None, 5])
def pair(request):
    hf = F.blip2_retrieval(image_token=request.param)
    return hf, from_transformers(hf)


def inputs(hf, batch=3):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(6, 64, (batch, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    if hf.config.image_token_index is not None:  # the processor's layout: placeholders first
        nq = hf.config.num_query_tokens
        ids = torch.cat([torch.full((batch, nq), hf.config.image_token_index), ids], 1)
        mask = torch.cat([torch.ones(batch, nq, dtype=mask.dtype), mask], 1)
    return torch.randn(batch, 3, 32, 32, generator=g), ids, mask


@pytest.mark.parametrize("itm", [False, True])
def test_scores_match_transformers(pair, itm):
    hf, model = pair
    assert isinstance(model, Blip2Retrieval)
    px, ids, mask = inputs(hf)
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, use_image_text_matching_head=itm)
        out = model(px, ids, mask, use_image_text_matching_head=itm)
    assert out.logits_per_image.shape == ((3, 2) if itm else (3, 3))
    torch.testing.assert_close(out.logits_per_image, ref.logits_per_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits_per_text, ref.logits_per_text, atol=1e-5, rtol=1e-4)
    if not itm:
        torch.testing.assert_close(out.image_embeds, ref.image_embeds, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.text_embeds, ref.text_embeds, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.get_image_features(px), ref.image_embeds, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.get_text_features(ids, mask), ref.text_embeds, atol=1e-5, rtol=1e-4)


def test_qformer_features_match_blip2_model(pair):
    hf, model = pair
    twin = tf.Blip2Model(hf.config)  # same vision / Q-Former names; get_qformer_features is transformers'
    twin.load_state_dict(hf.state_dict(), strict=False)
    px, _, _ = inputs(hf)
    with torch.no_grad():
        ref = twin.eval().get_qformer_features(px)
        ref = getattr(ref, "last_hidden_state", ref)
        torch.testing.assert_close(model.get_qformer_features(px), ref, atol=1e-5, rtol=1e-4)


def test_round_trip_and_folders(pair, tmp_path):
    hf, model = pair
    back = from_transformers(to_transformers(model))
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    lab.save_pretrained(model, tmp_path / "lab")
    theirs = tf.Blip2ForImageTextRetrieval.from_pretrained(tmp_path / "lab").eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = lab.load_pretrained(tmp_path / "hf")
    px, ids, mask = inputs(hf)
    with torch.no_grad():
        want = model(px, ids, mask).logits_per_image
        torch.testing.assert_close(ours(px, ids, mask).logits_per_image, want)
        torch.testing.assert_close(theirs(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image, want)


def test_bad_text_is_named(pair):
    hf, model = pair
    px, ids, mask = inputs(hf)
    with pytest.raises(ValueError, match="attention_mask"):
        model(px, ids, mask[:, :-1])
    if hf.config.image_token_index is not None:
        with pytest.raises(ValueError, match="must start with 4 image tokens"):
            model(px, ids[:, 4:], mask[:, 4:])
