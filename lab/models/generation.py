"""Decoding with a KV cache: greedy, sampling (temperature, top-k, top-p) and beam search."""

from __future__ import annotations

import torch

from lab.models.llm import KVCache, LanguageModel

# transformers' generate keywords that lab honours, with transformers' defaults.
GENERATION_DEFAULTS = {
    "max_new_tokens": 20,
    "min_new_tokens": 0,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "num_beams": 1,
    "length_penalty": 1.0,
    "repetition_penalty": 1.0,
    "eos_token_id": None,
    "pad_token_id": None,
    "streamer": None,  # transformers' streamer interface: put(new tokens `b 1`) per step, then end()
}


def resolve_generation_args(kwargs: dict, generation_config: dict, llm_cfg) -> dict:
    """transformers' order: a keyword given, else the checkpoint's generation_config.json, else
    (eos and pad only) the LLM's config, else transformers' default. Unknown keywords are refused."""
    unknown = sorted(set(kwargs) - set(GENERATION_DEFAULTS))
    if unknown:
        raise TypeError(f"generate got unknown keyword(s) {unknown}; allowed: {sorted(GENERATION_DEFAULTS)}")
    args = {}
    for key, default in GENERATION_DEFAULTS.items():
        value = kwargs.get(key)
        if value is None:
            value = generation_config.get(key)
        if value is None and key in ("eos_token_id", "pad_token_id"):
            value = getattr(llm_cfg, key)
        args[key] = default if value is None else value
    return args


def check_generation_args(
    max_new_tokens: int,
    min_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    num_beams: int,
    repetition_penalty: float,
) -> None:
    """transformers' meaning, and its refusals: each bad value is a ValueError naming the argument."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be >= 0, got {min_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if num_beams > 1 and do_sample:
        raise ValueError("beam search with sampling is not supported: use num_beams=1 or do_sample=False")


def eos_ids(eos_token_id: int | list[int] | None) -> list[int]:
    return [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


class CausalDecoding:
    """A decoder-only LLM's state for `generate`: the prompt is prefilled into a KV cache, then
    each new token is one cached step. (`t5.T5Decoding` is the encoder-decoder counterpart.)"""

    def __init__(self, llm: LanguageModel, input_ids, embeds, attention_mask, max_new_tokens: int) -> None:
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError(
                "generate needs left-padded prompts: some rows end in padding (attention_mask[:, -1] == 0)"
            )
        self.llm, self.embeds, self.mask = llm, embeds, attention_mask
        self.cache = KVCache.for_decoder(llm.cfg, b, t + max(max_new_tokens, 0), embeds.device, embeds.dtype)

    def first(self) -> torch.Tensor:
        """Logits `b vocab` for the first new token."""
        return self.llm(self.embeds, self.mask, cache=self.cache, last_only=True)[:, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits for the token after `token` (`b 1`)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        return self.llm(self.llm.embed(token), self.mask, cache=self.cache)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep (or repeat) rows `index`: beam search."""
        self.cache.reorder(index)
        self.mask = self.mask.index_select(0, index)


def generate_causal(llm: LanguageModel, input_ids, embeds, attention_mask, **kwargs) -> torch.Tensor:
    """Prompt plus new tokens from a decoder-only LLM; `kwargs` are `generate`'s."""
    decoding = CausalDecoding(llm, input_ids, embeds, attention_mask, kwargs.get("max_new_tokens", 20))
    return generate(decoding, input_ids, **kwargs)


def generate(
    decoding,
    start_ids: torch.Tensor,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    min_new_tokens: int = 0,
    repetition_penalty: float = 1.0,
    length_penalty: float = 1.0,
    streamer=None,
) -> torch.Tensor:
    """`start_ids` plus new tokens: the prompt for a decoder-only LLM (`CausalDecoding`), the
    decoder start token for T5 (`T5Decoding`), as transformers returns them. `eos_token_id` (one id
    or several) ends a row; none given: rows run to `max_new_tokens`. `min_new_tokens` forbids eos
    before that many; `repetition_penalty` divides (multiplies, if negative) the logits of every
    token already in the row (`start_ids` included)."""
    check_generation_args(
        max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, num_beams, repetition_penalty
    )
    if max_new_tokens < 1:
        return start_ids
    eos = eos_ids(eos_token_id)
    if num_beams > 1:
        if streamer is not None:
            raise ValueError("streaming is greedy or sampled decoding only: beams change their past tokens")
        return _beam_search(decoding, start_ids, max_new_tokens, num_beams, eos, length_penalty)
    b = start_ids.shape[0]
    pad = pad_token_id if pad_token_id is not None else eos[0] if eos else 0
    eos_t = torch.tensor(eos, dtype=torch.long, device=start_ids.device)
    logits = decoding.first()
    done = torch.zeros(b, dtype=torch.bool, device=start_ids.device)
    out = [start_ids]
    for step in range(max_new_tokens):
        scores = logits.float()
        if repetition_penalty != 1.0:
            seen = torch.cat(out, dim=1)
            picked = scores.gather(1, seen)
            picked = torch.where(picked < 0, picked * repetition_penalty, picked / repetition_penalty)
            scores = scores.scatter(1, seen, picked)
        if step < min_new_tokens and eos:
            scores[:, eos_t] = float("-inf")
        token = _pick(scores, do_sample, temperature, top_k, top_p, generator)
        if eos:
            token = torch.where(done, torch.full_like(token, pad), token)
            done |= torch.isin(token, eos_t)
        out.append(token[:, None])
        if streamer is not None:
            streamer.put(token[:, None].cpu())
        if (eos and bool(done.all())) or step == max_new_tokens - 1:
            break
        logits = decoding.step(token[:, None])
    if streamer is not None:
        streamer.end()
    return torch.cat(out, dim=1)


def _pick(logits, do_sample, temperature, top_k, top_p, generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def _beam_search(decoding, start_ids, max_new_tokens, k, eos, length_penalty) -> torch.Tensor:
    """Standard beam search; a hypothesis scores sum log p / new_tokens ** length_penalty."""
    b, t = start_ids.shape
    logp = decoding.first().float().log_softmax(-1)
    vocab = logp.shape[-1]
    rows = torch.arange(b, device=start_ids.device).repeat_interleave(k)
    decoding.reorder(rows)  # k copies of each row's state
    ids, logp = start_ids[rows], logp[rows]
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
                if int(token[row, j]) in eos:
                    seq = torch.cat([ids[parent], token[row, j : j + 1]])
                    finished[row].append((float(top[row, j]) / (step + 1) ** length_penalty, seq))
                    continue
                new_scores[row, slot], src[row, slot], tok[row, slot] = top[row, j], parent, token[row, j]
                slot += 1
                if slot == k:
                    break
        scores = new_scores
        flat_src = src.view(-1)
        ids = torch.cat([ids[flat_src], tok.view(-1, 1)], dim=1)
        decoding.reorder(flat_src)
        best_open = scores.max(-1).values / (step + 1) ** length_penalty
        if eos and all(
            len(finished[r]) >= k and max(s for s, _ in finished[r]) >= float(best_open[r]) for r in range(b)
        ):
            break
        if step == max_new_tokens - 1:
            break
        logp = decoding.step(tok.view(-1, 1)).float().log_softmax(-1)
    n_new = ids.shape[1] - t
    results = []
    for row in range(b):
        for j in range(k):
            finished[row].append((float(scores[row, j]) / n_new**length_penalty, ids[row * k + j]))
        results.append(max(finished[row], key=lambda x: x[0])[1])
    width = max(r.shape[0] for r in results)
    pad = eos[0] if eos else 0
    out = torch.full((b, width), pad, dtype=start_ids.dtype, device=start_ids.device)
    for row, seq in enumerate(results):
        out[row, : seq.shape[0]] = seq
    return out
