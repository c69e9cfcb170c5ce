"""Decoding with a KV cache: greedy, sampling (temperature, top-k, top-p) and beam search."""

from __future__ import annotations

import torch

from lab.models.llm import KVCache, LanguageModel


def generate(
    llm: LanguageModel,
    input_ids: torch.Tensor,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    b, t = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("generate needs left-padded prompts: some rows end in padding (attention_mask[:, -1] == 0)")
    if max_new_tokens < 1:
        return input_ids
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if num_beams > 1:
        if do_sample:
            raise ValueError("beam search with sampling is not supported: use num_beams=1 or do_sample=False")
        return _beam_search(llm, input_ids, embeds, attention_mask, max_new_tokens, num_beams, eos_token_id)
    pad = eos_token_id if pad_token_id is None else pad_token_id
    cache = KVCache(llm.cfg, b, t + max_new_tokens, embeds.device, embeds.dtype)
    logits = llm(embeds, attention_mask, cache=cache, last_only=True)[:, -1]
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    out = [input_ids]
    for step in range(max_new_tokens):
        token = _pick(logits.float(), do_sample, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            token = torch.where(done, torch.full_like(token, pad), token)
            done |= token == eos_token_id
        out.append(token[:, None])
        if (eos_token_id is not None and bool(done.all())) or step == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], dim=1)
        logits = llm(llm.embed(token[:, None]), attention_mask, cache=cache)[:, -1]
    return torch.cat(out, dim=1)


def _pick(logits, do_sample, temperature, top_k, top_p, generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def _beam_search(llm, input_ids, embeds, attention_mask, max_new_tokens, k, eos) -> torch.Tensor:
    """Standard beam search with length-normalised scores (sum log p / new tokens)."""
    b, t = input_ids.shape
    vocab = llm.cfg.vocab_size
    rep = lambda x: x.repeat_interleave(k, dim=0)  # noqa: E731
    ids, mask = rep(input_ids), rep(attention_mask)
    cache = KVCache(llm.cfg, b * k, t + max_new_tokens, embeds.device, embeds.dtype)
    logp = llm(rep(embeds), mask, cache=cache, last_only=True)[:, -1].float().log_softmax(-1)
    scores = torch.full((b, k), float("-inf"), device=ids.device)
    scores[:, 0] = 0.0  # identical beams at start: expand only the first
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(b)]
    for step in range(max_new_tokens):
        total = (scores[..., None] + logp.view(b, k, vocab)).view(b, k * vocab)
        top, idx = total.topk(2 * k, dim=-1)
        beam, token = idx // vocab, idx % vocab
        new_scores = torch.full((b, k), float("-inf"), device=ids.device)
        src = torch.zeros(b, k, dtype=torch.long, device=ids.device)
        tok = torch.zeros(b, k, dtype=torch.long, device=ids.device)
        for row in range(b):
            slot = 0
            for j in range(2 * k):
                parent = row * k + int(beam[row, j])
                if eos is not None and int(token[row, j]) == eos:
                    seq = torch.cat([ids[parent], token[row, j : j + 1]])
                    finished[row].append((float(top[row, j]) / (step + 1), seq))
                    continue
                new_scores[row, slot], src[row, slot], tok[row, slot] = top[row, j], parent, token[row, j]
                slot += 1
                if slot == k:
                    break
        scores = new_scores
        flat_src = src.view(-1)
        ids = torch.cat([ids[flat_src], tok.view(-1, 1)], dim=1)
        mask = torch.cat([mask[flat_src], mask.new_ones(b * k, 1)], dim=1)
        cache.reorder(flat_src)
        best_open = scores.max(-1).values / (step + 1)
        if eos is not None and all(
            len(finished[r]) >= k and max(s for s, _ in finished[r]) >= float(best_open[r]) for r in range(b)
        ):
            break
        if step == max_new_tokens - 1:
            break
        logp = llm(llm.embed(tok.view(-1, 1)), mask, cache=cache)[:, -1].float().log_softmax(-1)
    n_new = ids.shape[1] - t
    results = []
    for row in range(b):
        for j in range(k):
            finished[row].append((float(scores[row, j]) / n_new, ids[row * k + j]))
        results.append(max(finished[row], key=lambda x: x[0])[1])
    width = max(r.shape[0] for r in results)
    pad = eos if eos is not None else 0
    out = torch.full((b, width), pad, dtype=input_ids.dtype, device=input_ids.device)
    for row, seq in enumerate(results):
        out[row, : seq.shape[0]] = seq
    return out
