"""Image files and prompts -> a model's inputs, as the checkpoint's own processor prepares them.

`model.generate(**processor(images=image, text="what is in the picture?"))` reads as it does with
transformers. Three prompt formats, one per kind of folder (`lab.convert.load_processor` picks):

- `inline` (LLaVA): the prompt goes through the checkpoint's chat template, whose `<image>` marker
  becomes one placeholder per visual token (`image_tokens`), then the checkpoint's tokenizer;
- `prefix` (BLIP-2, InstructBLIP): the prompt goes through the chat template if the checkpoint has
  one (BLIP-2's and InstructBLIP's have none: plain prompts), then the tokenizer, with the
  placeholders in front of it; InstructBLIP's Q-Former reads the same text through its own (BERT)
  tokenizer;
- `lab`: a folder that lab trained, in the word-level template it was trained with (`Collator`).

`verbatim=True` skips the chat template: the text is tokenized as given (placeholders still added).
Images go through the checkpoint's `ImageProcessor`. Batches are left-padded, for generation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from lab.data.collate import Collator, pad_right
from lab.data.datasets import Sample
from lab.data.image_processor import ImageProcessor
from lab.data.tokenizer import IMAGE

ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


def typed_content(template: str) -> bool:
    """Whether a chat template reads each message's content as a list of typed parts
    (`{"type": "image"}`, `{"type": "text", "text": ...}`: transformers' processor templates, e.g.
    LLaVA-1.5's) rather than one string (a plain LLM tokenizer's template, e.g. ChatML)."""
    return "'type'" in template or '"type"' in template or ".type" in template


@dataclasses.dataclass
class Processor:
    image_processor: ImageProcessor
    tokenizer: Any  # lab's WordTokenizer (`lab`) or transformers' tokenizer (`inline`, `prefix`)
    image_tokens: int  # placeholders per image: the connector's visual tokens
    placement: str  # "inline" | "prefix" | "lab"
    chat_template: str | None = None
    image_token: str = IMAGE
    qformer_tokenizer: Any = None  # InstructBLIP: transformers' BERT tokenizer for the instruction
    instruction: bool = False  # lab folders: an instruction-aware Q-Former reads the word tokenizer's ids

    def __post_init__(self) -> None:
        if self.placement not in ("inline", "prefix", "lab"):
            raise ValueError(f"placement {self.placement!r}; choose inline, prefix or lab")
        self.collator = (
            Collator(self.tokenizer, self.image_tokens, self.instruction) if self.placement == "lab" else None
        )

    # -- text ------------------------------------------------------------------------------------
    def messages(self, turns: list[tuple[str, str]]) -> list[dict]:
        """(role, text) turns as chat-template messages; the image goes with the first user turn."""
        typed = self.chat_template is not None and typed_content(self.chat_template)
        out, first = [], True
        for role, text in turns:
            role = ROLES.get(role)
            if role is None:
                raise ValueError(f"unknown role in a conversation: choose one of {sorted(ROLES)}")
            image = self.placement == "inline" and role == "user" and first
            first = first and role != "user"
            if typed:
                content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
            else:
                content = f"{self.image_token}\n{text}" if image else text
            out.append({"role": role, "content": content})
        return out

    def prompt(self, turns: list[tuple[str, str]], verbatim: bool = False) -> str:
        """The text the tokenizer reads for a conversation ending in a user turn (`inline`: with one
        image marker): the chat template's rendering with its generation prompt, unless verbatim."""
        if verbatim or self.chat_template is None:
            if len(turns) != 1:
                raise ValueError("a conversation of several turns needs a chat template; this checkpoint has none")
            text = turns[0][1]
            if self.placement == "inline" and self.image_token not in text:
                text = f"{self.image_token}\n{text}"
            return text
        return self.tokenizer.apply_chat_template(
            self.messages(turns), chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    def _ids(self, text: str) -> list[int]:
        tok = self.tokenizer
        if self.placement == "inline":
            if text.count(self.image_token) != 1:
                raise ValueError(
                    f"the prompt needs exactly one {self.image_token}, found {text.count(self.image_token)}"
                )
            return tok(text.replace(self.image_token, self.image_token * self.image_tokens))["input_ids"]
        image = tok(self.image_token * self.image_tokens, add_special_tokens=False)["input_ids"]
        return image + tok(text)["input_ids"]

    def _lab_ids(self, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        turns = list(turns)
        if not any(IMAGE in t for r, t in turns if r in ("human", "user")):
            turns[0] = (turns[0][0], f"{IMAGE} {turns[0][1]}")  # the image goes first, as in training
        sample = Sample(np.zeros((0, 0, 3), np.uint8), [(_lab_role(r), t) for r, t in turns] + [("gpt", "")])
        ids, _ = self.collator.encode(sample, prompt_only=True)
        return ids, self.collator.instruction_of(sample)

    # -- both ------------------------------------------------------------------------------------
    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        conversations: list[list[tuple[str, str]]] | None = None,
        verbatim: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One image (or a list) and one prompt (or a list, one per image), or whole conversations
        ((role, text) turns ending with the user's), -> pixel_values, input_ids, attention_mask
        and, for an instruction-aware Q-Former, instruction_ids and instruction_mask."""
        if conversations is None:
            if text is None:
                raise ValueError("give text (one prompt per image) or conversations")
            conversations = [[("user", t)] for t in ([text] if isinstance(text, str) else text)]
        images = images if isinstance(images, list | tuple) else [images]
        if len(images) != len(conversations):
            raise ValueError(f"{len(images)} image(s) for {len(conversations)} prompt(s): give one image per prompt")
        rows, instr = [], []
        for turns in conversations:
            if self.placement == "lab":  # the image marker stays where the record has it, as in training
                ids, ins = self._lab_ids(turns)
            else:
                if not verbatim:  # the template (or the processor's prefix) places the image, not the text
                    turns = [(role, text.replace(IMAGE, "").strip()) for role, text in turns]
                prompt = self.prompt(turns, verbatim)
                ids = self._ids(prompt)
                ins = self.qformer_tokenizer(prompt)["input_ids"] if self.qformer_tokenizer is not None else None
            rows.append(ids)
            instr.append(ins)
        pad = _pad_id(self.tokenizer)
        batch = {"pixel_values": self.image_processor(list(images))}
        batch["input_ids"], batch["attention_mask"] = _pad_left(rows, pad)
        if self.qformer_tokenizer is not None or self.instruction:
            qpad = _pad_id(self.qformer_tokenizer) if self.qformer_tokenizer is not None else pad
            batch["instruction_ids"], batch["instruction_mask"] = pad_right(instr, qpad)
        return batch

    def generation_ids(self) -> dict:
        """eos and pad for `generate`: a lab-trained folder's tokenizer's; a transformers checkpoint's
        come from its generation_config.json and config, as in transformers (so: none here)."""
        if self.placement != "lab":
            return {}
        return {"eos_token_id": self.tokenizer.eos_id, "pad_token_id": self.tokenizer.pad_id}

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.placement == "lab":
            return self.tokenizer.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _lab_role(role: str) -> str:
    return {"user": "human", "assistant": "gpt"}.get(role, role)


def _pad_id(tok) -> int:
    if hasattr(tok, "pad_token_id"):
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return tok.pad_id


def _pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(map(len, rows))
    ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    return ids, mask
