"""lab.eval's ranking of closed answer sets (InstructBLIP's held-out protocol)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from lab.data import Sample, scene_tokenizer
from lab.data.collate import Collator
from lab.eval import rank


class Prefers(torch.nn.Module):
    """Logits that favour one token id at one position only (the last prompt token, where the
    answer's first token is predicted): ranking must read exactly that position."""

    def __init__(self, token: int, vocab: int, at: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.token, self.vocab, self.at = token, vocab, at

    def forward(self, pixel_values, input_ids, attention_mask=None, *rest):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[:, self.at, self.token] = 10.0
        return types.SimpleNamespace(logits=logits)


@pytest.mark.parametrize("word", ["yes", "no"])
def test_rank_picks_the_answer_the_model_finds_likeliest(word):
    tok = scene_tokenizer()
    collator = Collator(tok, 4)
    samples = [
        Sample(np.zeros((8, 8, 3), np.uint8), [("human", "<image> is there a red circle ?"), ("gpt", "yes")])
        for _ in range(3)
    ]
    prompt = len(collator.encode(samples[0], prompt_only=True)[0])
    model = Prefers(tok.encode(word)[0], len(tok), at=prompt - 1)
    assert rank(model, tok, samples, ("yes", "no"), collator=collator) == [word] * 3


def test_through_words_asks_the_llm_what_the_text_stream_asks_it():
    """With captions equal to the truth, the words route hands the LLM exactly the text-stream
    sample (the LM's pretraining format) and ranks as the LLM does from the true caption."""
    import lab.eval as ev
    from lab.data import SceneDataConfig, SceneTasks, caption
    from lab.models import VisionLanguageModel
    from lab.train.config import scene_model

    torch.manual_seed(0)
    model, tok = VisionLanguageModel(scene_model()).eval(), scene_tokenizer()
    data = SceneDataConfig(families=["compare_count"])
    images = [SceneTasks(data, "val")[i] for i in range(6)]
    texts = [SceneTasks(data.replace(stream="text"), "val")[i] for i in range(6)]
    seen = []

    def spy(model_, tok_, samples, candidates, collator=None):
        seen.extend(samples)
        return rank(model_, tok_, samples, candidates, collator)

    true_captions = iter([caption(s.scene) for s in images])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "answer", lambda m, t, asks, n, c=None: [next(true_captions) for _ in asks])
        mp.setattr(ev, "rank", spy)
        picks, said = ev.through_words(model, tok, images, ("yes", "no"), "describe the image . <image>", 8)
    assert said == [caption(s.scene) for s in images]
    assert [s.turns for s in seen] == [s.turns for s in texts] and all(s.image is None for s in seen)
    assert picks == rank(model, tok, texts, ("yes", "no"), Collator(tok, 0))
    with pytest.raises(ValueError, match="without an image"):
        ev.through_words(model, tok, texts[:1], ("yes", "no"), "describe the image . <image>", 4)


def test_handoff_gap_is_a_per_sample_mean_per_layer_whatever_the_batch():
    """One value per LLM layer, positive for an untrained connector, and a mean over samples: two
    halves of a batch (other paddings) average to the whole batch's gap."""
    import lab.eval as ev
    from lab.data import SceneDataConfig, SceneTasks
    from lab.models import VisionLanguageModel
    from lab.train.config import scene_model

    torch.manual_seed(0)
    model, tok = VisionLanguageModel(scene_model()).eval(), scene_tokenizer()
    samples = [SceneTasks(SceneDataConfig(families=["color", "compare_count"]), "val")[i] for i in range(8)]
    whole = ev.handoff_gap(model, tok, samples)
    assert len(whole) == model.cfg.llm.num_layers and all(g > 0 for g in whole)
    halves = [ev.handoff_gap(model, tok, samples[:4]), ev.handoff_gap(model, tok, samples[4:])]
    assert whole == pytest.approx([(a + b) / 2 for a, b in zip(*halves, strict=True)], rel=1e-4)
