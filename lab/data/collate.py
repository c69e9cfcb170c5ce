"""Samples -> tensors: chat template, image placeholders, labels on assistant turns only.

Template (word-level): `<bos> user : <image>×N question assistant : answer <eos>`. The single
`<image>` marker of a sample becomes N placeholder ids, N being the connector's tokens per image.
Training batches are right-padded; generation prompts are left-padded (what `generate` needs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import get_worker_info

from lab.data.datasets import Sample
from lab.data.tokenizer import IMAGE

IGNORE = -100


_UINT8 = False  # inside `uint8_pixels()`: batches keep their pixels as bytes
_INTO = None  # and, in a loader worker, the shared buffer they are written into


@contextlib.contextmanager
def uint8_pixels(into: Callable[[tuple[int, ...]], torch.Tensor] | None = None):
    """Collate with `pixel_values` left as uint8 `b 3 H W`, for `float_pixels` to finish on the
    training device: a loader worker hands over a quarter of the bytes (and a GPU receives them).
    `into(shape)`: a loader worker's shared buffer for them (`lab.train.loader`), else a new one."""
    global _UINT8, _INTO
    before, _UINT8, _INTO = (_UINT8, _INTO), True, into
    try:
        yield
    finally:
        _UINT8, _INTO = before


def float_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [-1, 1], the same arithmetic wherever it runs."""
    return x.float().div(127.5).sub(1.0)


def shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor in shared memory (`share_memory_` would copy its garbage there)."""
    n = int(np.prod(shape))
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # torch's own, for DataLoader batches
    if new_shared is None:
        return torch.empty(shape, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(n)).view(shape)


def pixels(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 `H W 3` images -> `b 3 H W` floats in [-1, 1] (uint8 inside `uint8_pixels()`)."""
    if _UINT8 and get_worker_info() is not None:  # a loader worker: stacked straight into shared memory,
        out = (_INTO or shared_uint8)((len(images), *images[0].shape))  # not copied there when sent
        np.stack(images, out=out.numpy())
        return rearrange(out, "b h w c -> b c h w")
    x = rearrange(torch.from_numpy(np.stack(images)), "b h w c -> b c h w")
    return x if _UINT8 else float_pixels(x)


def pad_right(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists -> (ids `b t` right-padded with `pad`, keep-mask `b t`)."""
    n = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    return ids, mask


def text_ids(texts: Sequence[str], tok) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts as `<bos> text <eos>` ids, right-padded, with their keep-mask (text encoders' input)."""
    return pad_right([[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts], tok.pad_id)


class SequenceTooLong(ValueError):
    """A training sequence longer than the LLM's positions (and not truncatable, or not allowed to be)."""


class Collator:
    """`max_length` (the LLM's positions) bounds training sequences: a longer one is an error, or,
    with `truncate`, cut at its end (never through the image's placeholders)."""

    def __init__(
        self,
        tokenizer,
        image_tokens: int,
        instruction: bool = False,
        train_on: str = "assistant",
        max_length: int | None = None,
        truncate: bool = False,
    ) -> None:
        if train_on not in ("assistant", "all"):
            raise ValueError(f"train_on={train_on!r}; choose 'assistant' or 'all'")
        self.tok, self.image_tokens, self.instruction, self.train_on = tokenizer, image_tokens, instruction, train_on
        self.max_length, self.truncate = max_length, truncate
        self.user, self.assistant = tokenizer.encode("user :"), tokenizer.encode("assistant :")

    def _human(self, text: str, has_image: bool) -> list[int]:
        ids = self.tok.encode(text)
        n = ids.count(self.tok.image_id)
        if has_image and n != 1:
            raise ValueError(f"a sample with an image needs exactly one {IMAGE} in its text, found {n}: {text!r}")
        if not has_image and n:
            raise ValueError(f"a text-only sample contains {IMAGE}: {text!r}")
        i = ids.index(self.tok.image_id) if n else 0
        return ids[:i] + [self.tok.image_id] * (self.image_tokens if n else 0) + ids[i + 1 :]

    def encode(self, sample: Sample, prompt_only: bool = False) -> tuple[list[int], list[int]]:
        """(ids, labels), within `max_length` for training. prompt_only: stop after the last human
        turn's 'assistant :' (generation: the LLM itself refuses a prompt beyond its positions)."""
        ids, labels = self.encode_full(sample, prompt_only)
        n = self.max_length
        if prompt_only or n is None or len(ids) <= n:
            return ids, labels
        if not self.truncate:
            raise SequenceTooLong(f"{len(ids)} tokens > the LLM's {n} positions")
        if ids[:n].count(self.tok.image_id) != (self.image_tokens if sample.image is not None else 0):
            raise SequenceTooLong(f"{len(ids)} tokens; cutting to {n} would split the image's placeholders")
        return ids[:n], labels[:n]

    def encode_full(self, sample: Sample, prompt_only: bool = False) -> tuple[list[int], list[int]]:
        """(ids, labels) however long."""
        ids, labels = [self.tok.bos_id], [IGNORE]
        turns = sample.turns[:-1] if prompt_only else sample.turns
        first = True
        for role, text in turns:
            if role == "system":  # a system prompt: context, never a training target
                part = self.tok.encode(text)
                lab = [IGNORE] * len(part)
            elif role == "human":
                part = self.user + self._human(text, sample.image is not None and first) + self.assistant
                first = False
                lab = part if self.train_on == "all" else [IGNORE] * len(part)
            else:
                part = self.tok.encode(text) + [self.tok.eos_id]
                lab = part
            ids += part
            labels += lab
        if self.train_on == "all":
            labels = [i if i != self.tok.image_id else IGNORE for i in labels]
        return ids, labels

    def instruction_of(self, sample: Sample) -> list[int]:
        """The first human turn without the image marker: what instruction-aware queries read."""
        text = next(t for r, t in sample.turns if r == "human").replace(IMAGE, " ")
        return self.tok.encode(text) or [self.tok.pad_id]

    def __call__(self, samples: Sequence[Sample], prompt_only: bool = False) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        encoded = [self.encode(s, prompt_only) for s in samples]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tok.pad_id
        batch: dict[str, torch.Tensor] = {}
        rows = []
        for ids, labels in encoded:
            fill = width - len(ids)
            if prompt_only:  # left padding: generation appends on the right
                rows.append(([pad] * fill + ids, [0] * fill + [1] * len(ids), [IGNORE] * fill + labels))
            else:
                rows.append((ids + [pad] * fill, [1] * len(ids) + [0] * fill, labels + [IGNORE] * fill))
        batch["input_ids"] = torch.tensor([r[0] for r in rows])
        batch["attention_mask"] = torch.tensor([r[1] for r in rows])
        if not prompt_only:
            batch["labels"] = torch.tensor([r[2] for r in rows])
        has_image = [s.image is not None for s in samples]
        if any(has_image):
            if not all(has_image):
                raise ValueError("a batch mixes samples with and without images")
            batch["pixel_values"] = pixels([s.image for s in samples])
            if self.instruction:
                instr = [self.instruction_of(s) for s in samples]
                batch["instruction_ids"], batch["instruction_mask"] = pad_right(instr, pad)
        return batch


def too_long(data, collator: Collator, indices) -> tuple[list[str], int]:
    """(problems, records to cut) among `indices` of `data` (`data.text_sample(i)`: turns only)."""
    bad, cut = [], 0
    for i in indices:
        sample = data.text_sample(i)
        if len(collator.encode_full(sample)[0]) <= collator.max_length:
            continue
        try:
            collator.encode(sample)  # raises unless truncate may cut it
            cut += 1
        except SequenceTooLong as e:
            bad.append(f"record {sample.record if sample.record is not None else i}: {e}")
    return bad, cut


def check_lengths(data, collator: Collator, name: str, checked=None) -> int:
    """Every record of a finite data set against the collator's `max_length`, before step 1. Too
    long without `truncate`, or not cuttable: one error naming the first five records, their lengths,
    and how many in all. Returns how many records `truncate` will cut (the caller logs it).
    `checked(collator)`, if given, returns (problems, cut) itself (LlavaJSON's cached, parallel pass),
    or None where the check is left to the loader (at a scale where it would hold up step 1)."""
    if collator.max_length is None:
        return 0
    found = checked(collator) if checked else too_long(data, collator, range(len(data)))
    if found is None:
        return 0
    bad, cut = found
    if bad:
        hint = "" if collator.truncate else "; set data.truncate=true to cut them"
        raise SequenceTooLong(f"{name}: {len(bad)} of {len(data)} records are too long ({'; '.join(bad[:5])}){hint}")
    return cut
