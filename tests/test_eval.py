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
