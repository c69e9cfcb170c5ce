"""Conversion between lab models and transformers' BLIP-2, InstructBLIP and LLaVA, and local
checkpoint folders. Nothing outside this package knows transformers' names."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lab.config import ConfigError
from lab.convert import retrieval
from lab.convert.configs import (
    FAMILIES,
    UnsupportedModelError,
    bert_shape,
    family_of_hf,
    family_of_lab,
    hf_config_from_lab,
    lab_config_from_hf,
    llm_config_from_hf,
)
from lab.convert.weights import CheckpointError, hf_to_lab, lab_to_hf, to_disk_names
from lab.models import CausalLM, QFormer, QFormerConfig, Seq2SeqLM, VisionLanguageModel, VLMConfig, lora
from lab.models.blip2_retrieval import Blip2Retrieval
from lab.rundir import RunDir

log = logging.getLogger("lab")
LAB_CONFIG = "lab_config.json"
GENERATION_CONFIG = "generation_config.json"

__all__ = [
    "CheckpointError",
    "UnsupportedModelError",
    "from_transformers",
    "to_transformers",
    "load_pretrained",
    "qformer_from_bert",
    "save_llm",
    "save_pretrained",
]


def _expected(model: VisionLanguageModel) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


CAUSAL_LMS = ("LlamaForCausalLM", "OPTForCausalLM", "T5ForConditionalGeneration")


def from_transformers(hf_model: Any, **overrides: Any) -> VisionLanguageModel | CausalLM | Blip2Retrieval:
    """A lab model with the weights of a transformers Blip2/InstructBlip/Llava ForConditionalGeneration;
    for a bare `LlamaForCausalLM` / `OPTForCausalLM`, lab's language model (`CausalLM`; for
    `T5ForConditionalGeneration`, `Seq2SeqLM`); for `Blip2ForImageTextRetrieval`, `Blip2Retrieval`."""
    name = type(hf_model).__name__
    if name == retrieval.ARCHITECTURE:
        if overrides:
            raise TypeError(f"from_transformers({name}) takes no overrides, got {sorted(overrides)}")
        return retrieval.from_hf_model(hf_model)
    if name in CAUSAL_LMS:
        model = _causal_lm(hf_model)
    elif name in FAMILIES.values():
        cfg = lab_config_from_hf(hf_model.config)
        model = _build(cfg, hf_model.state_dict(), family_of_hf(hf_model.config), overrides)
    else:
        known = sorted([*FAMILIES.values(), *CAUSAL_LMS, retrieval.ARCHITECTURE])
        raise UnsupportedModelError(f"unsupported architecture {name}; lab converts {known}")
    gc = getattr(hf_model, "generation_config", None)
    model.generation_config = _generation_defaults(gc.to_dict() if gc is not None else {})
    return model


def _causal_lm(hf_model: Any) -> CausalLM:
    """The language model's tensors carry the names they have inside BLIP-2 once prefixed with
    `language_model.`, so BLIP-2's renaming rules (Llama, OPT or T5) map them."""
    cfg = llm_config_from_hf(hf_model.config)
    with torch.device("meta"):
        model = (Seq2SeqLM if cfg.family == "t5" else CausalLM)(cfg)
    hf_sd = {f"language_model.{k}": v for k, v in hf_model.state_dict().items()}
    tensors = hf_to_lab(hf_sd, _expected(model), VLMConfig(llm=cfg), "blip-2")
    model.load_state_dict(tensors, assign=True, strict=True)
    _rebuild_rotary(model.llm)
    return model.eval()


def save_llm(model: CausalLM, folder: str | Path, tokenizer: Any = None) -> None:
    """A folder that `--init` reads for the language model alone (e.g. a real one, from
    `from_transformers(LlamaForCausalLM)`): a model folder around `model`'s decoder, whose run.json
    names `llm` as its one trained component (the default vision encoder and connector beside it
    are never loaded), plus the transformers tokenizer, which the trainer then uses."""
    folder = Path(folder)
    vlm = VisionLanguageModel(VLMConfig(llm=model.cfg))
    vlm.llm.load_state_dict(model.llm.state_dict())
    vlm.generation_config = dict(model.generation_config)
    save_pretrained(vlm, folder)
    RunDir(folder).summary_file.write_text(json.dumps({"stage": "converted", "components": ["llm"]}, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def qformer_from_bert(bert: Any, **overrides: Any) -> QFormer:
    """A Q-Former initialised from a transformers `BertModel`, as BLIP-2 initialises from BERT-base:
    word and position embeddings, their LayerNorm, and every layer's self-attention and
    feed-forward come from BERT (the feed-forward into both the text and the query branch);
    cross-attention and the query tokens are new. BERT adds token-type 0 to every token, so that
    vector is folded into the position table: the embeddings are BERT's exactly.

    `overrides` set the new parts (num_query_tokens, encoder_hidden_size, cross_attention_frequency,
    instruction_aware, ...); the BERT-shaped fields come from `bert.config`."""
    bc = bert.config
    if bc.model_type != "bert" or getattr(bc, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(f"qformer_from_bert needs a BERT with absolute positions, got {bc.model_type!r}")
    shape = bert_shape(bc)
    clash = sorted(set(shape) & set(overrides))
    if clash:
        raise ConfigError(f"qformer_from_bert: {clash} come from the BERT checkpoint and cannot be overridden")
    cfg = QFormerConfig(**shape, **{"text_input": not overrides.get("instruction_aware", False), **overrides})
    qformer = QFormer(cfg)
    sd = {k.removeprefix("bert."): v for k, v in bert.state_dict().items()}
    e = "embeddings."
    own = {
        "word_embed.weight": sd[e + "word_embeddings.weight"],
        "pos_embed.weight": sd[e + "position_embeddings.weight"] + sd[e + "token_type_embeddings.weight"][0],
        "embed_norm.weight": sd[e + "LayerNorm.weight"],
        "embed_norm.bias": sd[e + "LayerNorm.bias"],
    }
    for i in range(cfg.num_layers):
        b, q = f"encoder.layer.{i}.", f"layers.{i}."
        for ours, theirs in (("q", "self.query"), ("k", "self.key"), ("v", "self.value"), ("o", "output.dense")):
            for t in ("weight", "bias"):
                own[f"{q}self_attn.{ours}.{t}"] = sd[f"{b}attention.{theirs}.{t}"]
        for t in ("weight", "bias"):
            own[f"{q}self_attn.norm.{t}"] = sd[f"{b}attention.output.LayerNorm.{t}"]
            for ffn in ("ffn_text", "ffn_query"):
                own[f"{q}{ffn}.fc1.{t}"] = sd[f"{b}intermediate.dense.{t}"]
                own[f"{q}{ffn}.fc2.{t}"] = sd[f"{b}output.dense.{t}"]
                own[f"{q}{ffn}.norm.{t}"] = sd[f"{b}output.LayerNorm.{t}"]
    missing, unexpected = qformer.load_state_dict({k: v.clone() for k, v in own.items()}, strict=False)
    new = sorted({k.split(".")[2] if k.startswith("layers.") else k for k in missing})
    if unexpected or not set(new) <= {"cross_attn", "query_tokens"}:
        raise CheckpointError(f"qformer_from_bert: BERT left {new} unset and gave unexpected {unexpected}")
    log.info("Q-Former from BERT: %d tensors loaded; new: %s", len(own), new)
    return qformer


def _generation_defaults(d: dict) -> dict:
    """The generate keywords lab honours, as a checkpoint's generation config sets them."""
    from lab.models.generation import GENERATION_DEFAULTS

    return {k: d[k] for k in GENERATION_DEFAULTS if d.get(k) is not None}


def _build(cfg: VLMConfig, hf_sd, family: str, overrides: dict) -> VisionLanguageModel:
    if overrides:
        cfg = VLMConfig.from_dict(_merge(cfg.to_dict(), overrides))
    with torch.device("meta"):
        model = VisionLanguageModel(cfg)
    tensors = hf_to_lab(hf_sd, _expected(model), cfg, family)
    model.load_state_dict(tensors, assign=True, strict=True)
    _rebuild_rotary(model.llm)
    model.eval()
    return model.float() if all(t.dtype == torch.float32 for t in tensors.values()) else model


def _rebuild_rotary(llm: torch.nn.Module) -> None:
    """Llama's rotary frequencies are a non-persistent buffer: built on the meta device, so recompute them."""
    if hasattr(llm, "rotary"):
        from lab.models.llm import Rotary

        llm.rotary.inv_freq = Rotary(llm.cfg).inv_freq.to(llm.embed.weight.device)


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_transformers(model: VisionLanguageModel | Blip2Retrieval) -> Any:
    """The equivalent transformers model, with lab's weights."""
    import transformers as tf

    if isinstance(model, Blip2Retrieval):
        return retrieval.to_hf_model(model)
    family = family_of_lab(model.cfg)
    config = hf_config_from_lab(model.cfg)
    cls = getattr(tf, FAMILIES[family])
    hf_model = cls(config)
    if model.cfg.llm.family == "t5" and not model.cfg.llm.tie_word_embeddings:
        # transformers builds every T5 with its head tied to the word embeddings (and unties it only
        # when a checkpoint's two tensors differ): give the untied head its own tensor first.
        lm = hf_model.language_model
        lm.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone())
    sd = lab_to_hf(model.state_dict(), model.cfg, family)
    missing, unexpected = hf_model.load_state_dict(sd, strict=False)
    tied = [*(["lm_head.weight"] if model.cfg.llm.tie_word_embeddings else []), "coder.embed_tokens.weight"]
    missing = [k for k in missing if not any(k.endswith(t) for t in tied)]  # aliases of the word embeddings
    if missing or unexpected:
        raise CheckpointError(
            f"transformers model did not take lab's weights: missing {missing}, unexpected {unexpected}"
        )
    for key, value in model.generation_config.items():  # the checkpoint's generate defaults travel too
        setattr(hf_model.generation_config, key, value)
    return hf_model.to(next(model.parameters()).dtype).eval()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors weights in {path} (lab reads model.safetensors or a sharded index)")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not (path / f).exists():
            raise CheckpointError(f"shard {f} listed in the index is missing from {path}")
        try:
            tensors.update(load_file(path / f))
        except (SafetensorError, OSError) as e:  # a cut or garbled file
            raise CheckpointError(f"{path / f} is not a readable safetensors file ({e})") from None
    return tensors


def read_hf_config(path: Path) -> Any:
    """The folder's config.json as transformers reads it; one CheckpointError line when it cannot."""
    import transformers as tf

    try:
        return tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path / 'config.json'} is not a readable transformers config ({e})") from None


def load_pretrained(
    path: str | Path, dtype: torch.dtype | None = None, merge_lora: bool = False, **overrides: Any
) -> VisionLanguageModel:
    """Load a local folder written by transformers' or lab's `save_pretrained`. No network.

    LoRA adapters saved beside the weights (`adapters/<part>/`, peft's format) are attached, or,
    with `merge_lora=True`, folded into the weights so the model has plain linear layers."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    lab_cfg_file = path / LAB_CONFIG
    tensors = _read_safetensors(path)
    if (path / "config.json").exists():
        hf_cfg = read_hf_config(path)
        if retrieval.ARCHITECTURE in (getattr(hf_cfg, "architectures", None) or []):
            model = retrieval.load(tensors, hf_cfg)
            return model.to(dtype) if dtype is not None else model
        family = family_of_hf(hf_cfg)
        cfg = lab_config_from_hf(hf_cfg)
        if lab_cfg_file.exists():  # lab-only settings (attn_impl, freeze switches) saved beside
            cfg = VLMConfig.from_dict(json.loads(lab_cfg_file.read_text()))
        model = _build(cfg, tensors, family, overrides)
    elif lab_cfg_file.exists():
        cfg = VLMConfig.from_dict(_merge(json.loads(lab_cfg_file.read_text()), overrides))
        model = VisionLanguageModel(cfg)
        expected = _expected(model)
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k]]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"checkpoint does not fit the model config: missing {missing[:20]}, unexpected {unexpected[:20]}, "
                f"mismatched shapes {wrong[:20]}"
            )
        model.load_state_dict(tensors)
    else:
        raise CheckpointError(f"{path} has neither config.json (transformers) nor {LAB_CONFIG} (lab)")
    for part in ("vision", "llm"):
        folder = RunDir(path).adapters(part)
        if folder.exists():
            _load_adapters(getattr(model, part), folder, part)
            if merge_lora:
                lora.merge(getattr(model, part))
    gen_file = path / GENERATION_CONFIG
    if gen_file.exists():
        try:
            model.generation_config = _generation_defaults(json.loads(gen_file.read_text()))
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{gen_file} is not a readable generation config ({e})") from None
    model.eval()  # like transformers' from_pretrained: dropout off until the caller calls .train()
    return model.to(dtype) if dtype is not None else model


ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _save_adapters(module: torch.nn.Module, cfg: lora.LoRAConfig, part: str, folder: Path) -> None:
    """A peft adapter folder for `module`'s adapters."""
    folder.mkdir(parents=True, exist_ok=True)
    _, adapters = lora.split_state(module)
    save_file({k: v.detach().contiguous() for k, v in adapters.items()}, folder / ADAPTER_WEIGHTS)
    cfg.replace(target_modules=lora.wrapped(module)).peft(module).save_pretrained(str(folder))


def _load_adapters(module: torch.nn.Module, folder: Path, part: str) -> lora.LoRAConfig:
    """Attach the adapters saved in `folder` to `module` (whose base weights are loaded)."""
    for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / f).exists():
            raise CheckpointError(f"LoRA adapter folder {folder} has no {f}")
    try:
        saved = json.loads((folder / ADAPTER_CONFIG).read_text())
        cfg = lora.LoRAConfig(
            r=int(saved["r"]),
            alpha=float(saved["lora_alpha"]),
            dropout=float(saved.get("lora_dropout", 0.0)),
            target_modules=sorted(saved["target_modules"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} is not a readable LoRA adapter config ({e!r})") from None
    lora.attach(module, cfg, part)
    tensors = {k.removeprefix(lora.PREFIX): v for k, v in load_file(folder / ADAPTER_WEIGHTS).items()}
    own = {k.replace(".default", ""): k for k in module.state_dict() if "lora_" in k}
    if set(tensors) != set(own):
        extra, lacking = sorted(set(tensors) - set(own)), sorted(set(own) - set(tensors))
        raise CheckpointError(
            f"{folder / ADAPTER_WEIGHTS} does not fit the {part}: unexpected {extra[:5]}, missing {lacking[:5]}"
        )
    module.load_state_dict({own[k]: v for k, v in tensors.items()}, strict=False)
    return cfg


def save_pretrained(model: VisionLanguageModel, path: str | Path) -> None:
    """safetensors + config. Designs transformers can run are saved in its layout (config.json,
    its tensor names), so `from_pretrained` reads them; others in lab's own names. A `Blip2Retrieval`
    is saved as transformers' `Blip2ForImageTextRetrieval`."""
    if isinstance(model, Blip2Retrieval):
        retrieval.save(model, path)
        return
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd, _ = lora.split_state(model)  # base weights under their plain names; adapters go beside
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    for part in ("vision", "llm"):
        if lora.has_lora(getattr(model, part)):
            _save_adapters(getattr(model, part), getattr(model.cfg, f"{part}_lora"), part, RunDir(path).adapters(part))
    (path / LAB_CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2))
    if model.generation_config:  # transformers reads the same file as its GenerationConfig
        (path / GENERATION_CONFIG).write_text(json.dumps(model.generation_config, indent=2))
    try:
        family = family_of_lab(model.cfg)
    except UnsupportedModelError:
        save_file(sd, path / "model.safetensors", metadata={"format": "pt", "layout": "lab"})
        return
    hf_cfg = hf_config_from_lab(model.cfg)
    hf_cfg.architectures = [FAMILIES[family]]
    hf_cfg.save_pretrained(str(path))
    hf_sd = {k: v.contiguous() for k, v in to_disk_names(lab_to_hf(sd, model.cfg, family), family).items()}
    save_file(hf_sd, path / "model.safetensors", metadata={"format": "pt"})
