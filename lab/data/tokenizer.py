"""A word-level tokenizer for the scene language, saved beside every checkpoint.

The scene language has a few hundred words, so a word-level vocabulary keeps sequences short
and decoding exact. Real checkpoints bring their own transformers tokenizer (`load_tokenizer`
wraps it behind the same small interface).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

SPECIALS = ("<pad>", "<bos>", "<eos>", "<image>", "<unk>")
IMAGE = "<image>"
_TOKEN = re.compile(r"<image>|[\w']+|[^\w\s]")
FILE = "tokenizer.json"


class WordTokenizer:
    pad_id, bos_id, eos_id, image_id, unk_id = range(len(SPECIALS))

    def __init__(self, words: Iterable[str]) -> None:
        words = [w for w in dict.fromkeys(words) if w not in SPECIALS]
        self.vocab = list(SPECIALS) + words
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and self.vocab == other.vocab

    @classmethod
    def fit(cls, texts: Iterable[str], base: Iterable[str] = (), min_count: int = 1) -> WordTokenizer:
        """Vocabulary of `base` plus every word seen at least `min_count` times in `texts`."""
        counts = Counter(t for text in texts for t in _TOKEN.findall(text.lower()))
        return cls(list(base) + sorted(w for w, c in counts.items() if c >= min_count))

    def encode(self, text: str) -> list[int]:
        return [self.index.get(t, self.unk_id) for t in _TOKEN.findall(text.lower())]

    def decode(self, ids: Iterable[int]) -> str:
        specials = set(range(len(SPECIALS)))
        return " ".join(self.vocab[i] for i in ids if i not in specials and 0 <= i < len(self.vocab))

    def save(self, folder: str | Path) -> None:
        Path(folder, FILE).write_text(json.dumps({"lab_word_tokenizer": self.vocab}))

    @classmethod
    def load(cls, folder: str | Path) -> WordTokenizer:
        data = json.loads(Path(folder, FILE).read_text())
        vocab = data["lab_word_tokenizer"]
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"{folder}/{FILE}: special tokens {vocab[:5]} differ from {list(SPECIALS)}")
        return cls(vocab[len(SPECIALS) :])


class HFTokenizer:
    """A transformers tokenizer behind WordTokenizer's interface (real checkpoints)."""

    def __init__(self, tok, image_id: int) -> None:
        self.tok = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.bos_id, self.eos_id, self.image_id = tok.bos_token_id, tok.eos_token_id, image_id

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        """Token ids; the image placeholder becomes `image_id` even in a tokenizer that does not
        know it as one token (a plain LLM's, e.g. SmolLM2, where the VLM reserves an id for it)."""
        if IMAGE not in text or self.tok.convert_tokens_to_ids(IMAGE) == self.image_id:
            return self.tok.encode(text, add_special_tokens=False)
        ids: list[int] = []
        for i, piece in enumerate(text.split(IMAGE)):
            ids += ([self.image_id] if i else []) + (self.tok.encode(piece, add_special_tokens=False) if piece else [])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(folder: str | Path, image_id: int | None = None) -> WordTokenizer | HFTokenizer:
    """The tokenizer saved in a checkpoint folder: lab's word tokenizer, or a transformers one."""
    path = Path(folder, FILE)
    if path.exists() and "lab_word_tokenizer" in json.loads(path.read_text()):
        return WordTokenizer.load(folder)
    if not any(Path(folder, f).exists() for f in (FILE, "tokenizer_config.json", "tokenizer.model")):
        raise FileNotFoundError(f"no tokenizer in {folder}: neither lab's {FILE} nor a transformers tokenizer")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"no tokenizer in {folder}: neither lab's {FILE} nor a transformers tokenizer") from e
    return HFTokenizer(tok, image_id if image_id is not None else tok.convert_tokens_to_ids(IMAGE))
