"""The OPT decoder on its own, in the layouts BLIP-2's conversion tests (tests/test_convert.py) do
not reach: OPT-350m's post-norm with narrower word embeddings (project_in / project_out), against
transformers' OPTForCausalLM on a left-padded batch, and its KV cache against a full forward."""

import pytest
import torch
import transformers as tf

from lab.config import ConfigError
from lab.convert import from_transformers
from lab.models import CausalLM, VisionLanguageModel, VLMConfig
from lab.models.llm import KVCache
from tests import hf_factory as F


def pair(**kw):
    torch.manual_seed(0)
    hf = F._randomize(tf.OPTForCausalLM(tf.OPTConfig(**F.opt(**kw))))
    return hf, from_transformers(hf)


@pytest.mark.parametrize("kw", [dict(pre_norm=False, proj_dim=16), dict(proj_dim=24, tie=False), dict()])
def test_logits_match_transformers_on_a_left_padded_batch(kw):
    hf, lab = pair(**kw)
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = lab(input_ids=ids, attention_mask=mask).logits
        greedy = lab.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6)
        want_greedy = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-4, rtol=1e-4)
    assert torch.equal(greedy, want_greedy)
    assert isinstance(lab, CausalLM) and (lab.llm.project_in is not None) == ("proj_dim" in kw)


def test_kv_cache_matches_a_full_forward():
    _, model = pair(pre_norm=False, proj_dim=16)
    lab = model.llm
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    cache = KVCache.for_decoder(lab.cfg, 2, 10, ids.device, torch.float32)
    with torch.no_grad():
        full = lab(lab.embed(ids), mask)
        steps = [lab(lab.embed(ids[:, :6]), mask[:, :6], cache=cache)]
        for t in range(6, 10):
            steps.append(lab(lab.embed(ids[:, t : t + 1]), mask[:, : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1)[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown family 'gpt2'"):
        VLMConfig.from_dict({"llm": {"family": "gpt2"}})
    with pytest.raises(ConfigError, match="word_embed_proj_dim=32 differs from llm.hidden_size=64"):
        VisionLanguageModel(
            VLMConfig.from_dict({"llm": {"family": "opt", "hidden_size": 64, "word_embed_proj_dim": 32}})
        )
