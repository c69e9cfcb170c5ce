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

from lab.convert.configs import (
    FAMILIES,
    UnsupportedModelError,
    family_of_hf,
    family_of_lab,
    hf_config_from_lab,
    lab_config_from_hf,
)
from lab.convert.weights import CheckpointError, hf_to_lab, lab_to_hf, to_disk_names
from lab.models import VisionLanguageModel, VLMConfig

log = logging.getLogger("lab")
LAB_CONFIG = "lab_config.json"
GENERATION_CONFIG = "generation_config.json"

__all__ = [
    "CheckpointError",
    "UnsupportedModelError",
    "from_transformers",
    "to_transformers",
    "load_pretrained",
    "save_pretrained",
]


def _expected(model: VisionLanguageModel) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def from_transformers(hf_model: Any, **overrides: Any) -> VisionLanguageModel:
    """A lab model with the weights of a transformers Blip2/InstructBlip/Llava ForConditionalGeneration."""
    name = type(hf_model).__name__
    if name not in FAMILIES.values():
        raise UnsupportedModelError(f"unsupported architecture {name}; lab converts {sorted(FAMILIES.values())}")
    cfg = lab_config_from_hf(hf_model.config)
    model = _build(cfg, hf_model.state_dict(), family_of_hf(hf_model.config), overrides)
    gc = getattr(hf_model, "generation_config", None)
    model.generation_config = _generation_defaults(gc.to_dict() if gc is not None else {})
    return model


def _generation_defaults(d: dict) -> dict:
    """The generate keywords lab honours, as a checkpoint's generation config sets them."""
    from lab.models.vlm import GENERATION_DEFAULTS

    return {k: d[k] for k in GENERATION_DEFAULTS if d.get(k) is not None}


def _build(cfg: VLMConfig, hf_sd, family: str, overrides: dict) -> VisionLanguageModel:
    if overrides:
        cfg = VLMConfig.from_dict(_merge(cfg.to_dict(), overrides))
    with torch.device("meta"):
        model = VisionLanguageModel(cfg)
    tensors = hf_to_lab(hf_sd, _expected(model), cfg, family)
    model.load_state_dict(tensors, assign=True, strict=True)
    model.llm.rotary.inv_freq = _fresh_inv_freq(model)
    model.apply_freezing()
    model.eval()
    return model.float() if all(t.dtype == torch.float32 for t in tensors.values()) else model


def _fresh_inv_freq(model: VisionLanguageModel) -> torch.Tensor:
    from lab.models.llm import Rotary

    return Rotary(model.cfg.llm).inv_freq.to(model.llm.embed.weight.device)


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_transformers(model: VisionLanguageModel) -> Any:
    """The equivalent transformers model, with lab's weights."""
    import transformers as tf

    family = family_of_lab(model.cfg)
    config = hf_config_from_lab(model.cfg)
    cls = getattr(tf, FAMILIES[family])
    hf_model = cls(config)
    sd = lab_to_hf(model.state_dict(), model.cfg, family)
    missing, unexpected = hf_model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (model.cfg.llm.tie_word_embeddings and k.endswith("lm_head.weight"))]
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


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None, **overrides: Any) -> VisionLanguageModel:
    """Load a local folder written by transformers' or lab's `save_pretrained`. No network."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    lab_cfg_file = path / LAB_CONFIG
    tensors = _read_safetensors(path)
    if (path / "config.json").exists():
        import transformers as tf

        try:
            hf_cfg = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path / 'config.json'} is not a readable transformers config ({e})") from None
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
    gen_file = path / GENERATION_CONFIG
    if gen_file.exists():
        try:
            model.generation_config = _generation_defaults(json.loads(gen_file.read_text()))
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{gen_file} is not a readable generation config ({e})") from None
    model.eval()  # like transformers' from_pretrained: dropout off until the caller calls .train()
    return model.to(dtype) if dtype is not None else model


def save_pretrained(model: VisionLanguageModel, path: str | Path) -> None:
    """safetensors + config. Designs transformers can run are saved in its layout (config.json,
    its tensor names), so `from_pretrained` reads them; others in lab's own names."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
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
