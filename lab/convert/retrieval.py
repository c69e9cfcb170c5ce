"""lab's `Blip2Retrieval` <-> transformers' `Blip2ForImageTextRetrieval`, and stage-1 runs into it.

The vision encoder and Q-Former carry the names they have inside `Blip2ForConditionalGeneration`
(so BLIP-2's rules in `weights.py` map them), except that the retrieval model keeps the Q-Former's
word and position embeddings outside the Q-Former (`embeddings.*`), and adds three heads.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lab.convert.configs import UnsupportedModelError, hf_config_from_lab, lab_config_from_hf
from lab.convert.weights import CheckpointError, hf_to_lab, lab_to_hf
from lab.models import ConnectorConfig, VLMConfig
from lab.models.blip2_retrieval import Blip2Retrieval, RetrievalConfig

ARCHITECTURE = "Blip2ForImageTextRetrieval"
HEADS = {"vision_proj": "vision_projection", "text_proj": "text_projection", "itm_head": "itm_head"}
EMBEDDINGS = ("qformer.embeddings.", "embeddings.")  # inside BLIP-2's Q-Former / the retrieval model's


def _as_vlm(cfg: RetrievalConfig) -> VLMConfig:
    """The BLIP-2 VLM config whose vision and Q-Former names and layouts the retrieval model shares."""
    q = cfg.qformer.replace(text_input=False)  # text_ffn keeps the text feed-forwards; the embeddings map apart
    return VLMConfig(vision=cfg.vision, connector=ConnectorConfig(kind="qformer", qformer=q))


def _with_image_token(config: Any) -> Any:
    config = copy.deepcopy(config)
    config.image_token_index = 0
    return config


def config_from_hf(config: Any) -> RetrievalConfig:
    if not getattr(config.qformer_config, "use_qformer_text_input", False):
        raise UnsupportedModelError("Blip2ForImageTextRetrieval needs qformer_config.use_qformer_text_input=True")
    vlm = lab_config_from_hf(_with_image_token(config))  # the VLM parse needs one; retrieval may have none
    q = vlm.connector.qformer.replace(text_input=True, text_ffn=True)
    return RetrievalConfig(
        vision=vlm.vision, qformer=q, embed_dim=config.image_text_hidden_size, image_token_id=config.image_token_index
    )


def config_to_hf(cfg: RetrievalConfig) -> Any:
    vlm = _as_vlm(cfg)
    hf = hf_config_from_lab(vlm.replace(image_token_id=0))
    hf.qformer_config.use_qformer_text_input = True
    hf.image_text_hidden_size = cfg.embed_dim
    hf.image_token_index = cfg.image_token_id
    hf.architectures = [ARCHITECTURE]
    return hf


def to_hf_tensors(sd: dict[str, torch.Tensor], cfg: RetrievalConfig) -> dict[str, torch.Tensor]:
    heads = {f"{HEADS[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in sd.items() if k.split(".")[0] in HEADS}
    body = {
        ("connector." + k if k.startswith("qformer.") else k): v for k, v in sd.items() if k.split(".")[0] not in HEADS
    }
    out = lab_to_hf(body, _as_vlm(cfg), "blip-2")
    out = {(k.replace(*EMBEDDINGS) if k.startswith(EMBEDDINGS[0]) else k): v for k, v in out.items()}
    return {**out, **heads}


def from_hf_tensors(hf: dict[str, torch.Tensor], model: Blip2Retrieval) -> dict[str, torch.Tensor]:
    back = {v: k for k, v in HEADS.items()}
    heads = {f"{back[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in hf.items() if k.split(".")[0] in back}
    body = {k: v for k, v in hf.items() if k.split(".")[0] not in back}
    body = {(EMBEDDINGS[0] + k[len(EMBEDDINGS[1]) :] if k.startswith(EMBEDDINGS[1]) else k): v for k, v in body.items()}
    expected = {
        ("connector." + k if k.startswith("qformer.") else k): v.shape
        for k, v in model.state_dict().items()
        if k.split(".")[0] not in HEADS
    }
    lab = hf_to_lab(body, expected, _as_vlm(model.cfg), "blip-2")
    tensors = {k.removeprefix("connector."): v for k, v in lab.items()}
    missing = sorted(k for k in model.state_dict() if k.split(".")[0] in HEADS and k not in heads)
    if missing:
        raise CheckpointError(
            f"retrieval checkpoint lacks its heads: {sorted({HEADS[k.split('.')[0]] for k in missing})}"
        )
    return {**tensors, **heads}


def from_hf_model(hf_model: Any) -> Blip2Retrieval:
    cfg = config_from_hf(hf_model.config)
    with torch.device("meta"):
        model = Blip2Retrieval(cfg)
    model.load_state_dict(from_hf_tensors(hf_model.state_dict(), model), assign=True, strict=True)
    return model.eval()


def load(tensors: dict[str, torch.Tensor], config: Any) -> Blip2Retrieval:
    model = Blip2Retrieval(config_from_hf(config))
    model.load_state_dict(from_hf_tensors(tensors, model), strict=True)
    return model.eval()


def to_hf_model(model: Blip2Retrieval) -> Any:
    import transformers as tf

    hf_model = tf.Blip2ForImageTextRetrieval(config_to_hf(model.cfg))
    missing, unexpected = hf_model.load_state_dict(to_hf_tensors(model.state_dict(), model.cfg), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"transformers did not take the retrieval weights: missing {missing}, unexpected {unexpected}"
        )
    return hf_model.to(next(model.parameters()).dtype).eval()


def save(model: Blip2Retrieval, folder: str | Path) -> None:
    """A folder that `Blip2ForImageTextRetrieval.from_pretrained` and `lab.load_pretrained` read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_to_hf(model.cfg).save_pretrained(str(folder))
    tensors = {k: v.detach().contiguous() for k, v in to_hf_tensors(model.state_dict(), model.cfg).items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "lab_retrieval.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))


def from_stage1(vlm: Any, heads: Any) -> Blip2Retrieval:
    """The retrieval model of a stage-1 run: its ViT and text-reading Q-Former, and the ITC/ITM heads
    that stage 1 trained (`Stage1Heads`; its ITG head and temperature have no place here)."""
    q = vlm.cfg.connector.qformer
    if q is None or not q.text_input:
        raise ValueError("from_stage1 needs a stage-1 model: a Q-Former connector with text_input=True")
    # An instruction-aware Q-Former has the same tensors; instruction awareness is how the VLM calls it.
    q = q.replace(instruction_aware=False, text_ffn=True)
    cfg = RetrievalConfig(vision=vlm.cfg.vision, qformer=q, embed_dim=heads.vision_proj.out_features)
    model = Blip2Retrieval(cfg)
    sd = {f"vision.{k}": v for k, v in vlm.vision.state_dict().items()}
    sd |= {f"qformer.{k}": v for k, v in vlm.connector.qformer.state_dict().items()}
    sd |= {f"{k}.{p}": getattr(getattr(heads, k), p) for k in HEADS for p in ("weight", "bias")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:  # text_ffn is always on with text_input, so nothing should differ
        raise CheckpointError(
            f"stage-1 model does not fit the retrieval model: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()
