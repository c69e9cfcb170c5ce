"""`load_processor(folder)`: the processor of a checkpoint folder (`lab.data.processor.Processor`).

A transformers folder (LLaVA-1.5, BLIP-2, InstructBLIP) brings its image processor
(`preprocessor_config.json`, or the `image_processor` of transformers 5's `processor_config.json`),
its tokenizer and chat template, and for InstructBLIP its Q-Former tokenizer (`qformer_tokenizer/`).
A folder that lab trained is read in the format it was trained with: lab's word template, and the
image processor its run wrote (`scene_processor` for folders written before run folders carried one:
the same square resize and x / 127.5 - 1 that their training used)."""

from __future__ import annotations

import json
from pathlib import Path

from lab.data.image_processor import FILE as IMAGE_FILE
from lab.data.image_processor import ImageProcessor, load_image_processor, scene_processor
from lab.data.processor import Processor
from lab.data.tokenizer import IMAGE, load_tokenizer
from lab.models import VLMConfig
from lab.rundir import RunDir

PROCESSOR_FILE = "processor_config.json"


def folder_config(folder: Path) -> tuple[VLMConfig, str | None]:
    """The folder's model config without its weights, and its transformers family (None: lab's own)."""
    from lab.convert import LAB_CONFIG, CheckpointError, read_hf_config
    from lab.convert.configs import family_of_hf, lab_config_from_hf

    lab_file = folder / LAB_CONFIG
    family = None
    if (folder / "config.json").exists():
        hf_cfg = read_hf_config(folder)
        family = family_of_hf(hf_cfg)
        cfg = lab_config_from_hf(hf_cfg)
    elif not lab_file.exists():
        raise CheckpointError(f"{folder} has neither config.json (transformers) nor {LAB_CONFIG} (lab)")
    if lab_file.exists():
        cfg = VLMConfig.from_dict(json.loads(lab_file.read_text()))
    return cfg, family


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None


def _chat_template(folder: Path, processor_cfg: dict, tokenizer) -> str | None:
    """The processor's chat template (chat_template.jinja, chat_template.json, processor_config.json),
    else the tokenizer's, else None (plain prompts)."""
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    for d in (_json(folder / "chat_template.json"), processor_cfg):
        if isinstance(d.get("chat_template"), str):
            return d["chat_template"]
    return getattr(tokenizer, "chat_template", None) or None


def load_processor(folder: str | Path, cfg: VLMConfig | None = None) -> Processor:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if cfg is None:
        cfg, family = folder_config(folder)
    else:
        family = None if (folder / "lab_config.json").exists() else folder_config(folder)[1]
    processor_cfg = _json(folder / PROCESSOR_FILE)
    image = load_image_processor(folder)
    if image is None and isinstance(processor_cfg.get("image_processor"), dict):
        image = ImageProcessor.from_dict(processor_cfg["image_processor"], str(folder / PROCESSOR_FILE))
    tok_file = folder / "tokenizer.json"
    word = tok_file.exists() and "lab_word_tokenizer" in _json(tok_file)
    if word or RunDir(folder).train_config_file.exists() or family is None:  # trained by lab: its own template
        tok = load_tokenizer(folder, cfg.image_token_id)
        q = cfg.connector.qformer
        image = image or scene_processor(cfg.vision.image_size)
        instruction = bool(cfg.connector.kind == "qformer" and q and q.instruction_aware)
        return Processor(image, tok, cfg.image_tokens, "lab", instruction=instruction)
    if image is None:
        raise FileNotFoundError(
            f"{folder}: no {IMAGE_FILE} (nor an image_processor in {PROCESSOR_FILE}): lab cannot know how this "
            "checkpoint's images were prepared"
        )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    image_token = processor_cfg.get("image_token") or getattr(tok, "image_token", None) or IMAGE
    if tok.convert_tokens_to_ids(image_token) != cfg.image_token_id:
        raise ValueError(
            f"{folder}: the tokenizer's {image_token} is id {tok.convert_tokens_to_ids(image_token)}, the model's "
            f"image_token_index is {cfg.image_token_id}"
        )
    if image.output_size != (cfg.vision.image_size,) * 2:
        raise ValueError(
            f"{folder}: the image processor gives {image.output_size} pixels, the ViT takes {cfg.vision.image_size}"
        )
    placement = "inline" if family == "llava" else "prefix"
    _check_token_count(folder, processor_cfg, image, cfg, family)
    qformer_tok = None
    if family == "instructblip":
        if not (folder / "qformer_tokenizer").is_dir():
            raise FileNotFoundError(f"{folder}: InstructBLIP needs its Q-Former tokenizer in qformer_tokenizer/")
        qformer_tok = AutoTokenizer.from_pretrained(str(folder / "qformer_tokenizer"), local_files_only=True)
    template = _chat_template(folder, processor_cfg, tok)
    return Processor(image, tok, cfg.image_tokens, placement, template, image_token, qformer_tok)


def _check_token_count(folder: Path, processor_cfg: dict, image: ImageProcessor, cfg: VLMConfig, family: str) -> None:
    """transformers' processor counts placeholders from processor_config.json; the model from its
    config. Two counts would mean a prompt the model refuses: say so when loading, not at generate."""
    if family == "llava" and processor_cfg.get("patch_size"):
        h, w = image.output_size
        n = (h // processor_cfg["patch_size"]) * (w // processor_cfg["patch_size"])
        n += processor_cfg.get("num_additional_image_tokens", 0)
        n -= processor_cfg.get("vision_feature_select_strategy") == "default"
    elif family != "llava" and processor_cfg.get("num_query_tokens"):
        n = processor_cfg["num_query_tokens"]
    else:
        return
    if n != cfg.image_tokens:
        raise ValueError(f"{folder}/{PROCESSOR_FILE} gives {n} image placeholders, the model takes {cfg.image_tokens}")
