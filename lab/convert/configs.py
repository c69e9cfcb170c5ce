"""transformers configs <-> lab's VLMConfig. The only place that knows transformers' config names."""

from __future__ import annotations

from typing import Any

from lab.models import ConnectorConfig, LLMConfig, OPTConfig, QFormerConfig, T5Config, VisionConfig, VLMConfig

FAMILIES = {
    "blip-2": "Blip2ForConditionalGeneration",
    "instructblip": "InstructBlipForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
}


class UnsupportedModelError(ValueError):
    """A transformers architecture, text model or option that lab does not implement."""


def family_of_hf(config: Any) -> str:
    kind = getattr(config, "model_type", None)
    if kind in ("blip-2", "instructblip", "llava"):
        return kind
    raise UnsupportedModelError(
        f"unsupported architecture model_type={kind!r}; lab converts {sorted(FAMILIES.values())}"
    )


def family_of_lab(cfg: VLMConfig) -> str:
    con = cfg.connector
    if con.kind == "qformer" and con.qformer.text_input and not con.qformer.instruction_aware:
        raise UnsupportedModelError("a Q-Former with stage-1 text input has no transformers VLM equivalent")
    if con.kind == "qformer" and not cfg.vision.pre_norm and cfg.vision.post_norm:
        return "instructblip" if con.qformer.instruction_aware else "blip-2"
    if con.kind == "mlp" and cfg.vision.pre_norm and not cfg.vision.post_norm and cfg.vision.qkv_bias == "qkv":
        return "llava"
    raise UnsupportedModelError(
        f"this lab design (connector={con.kind!r}, vision pre_norm={cfg.vision.pre_norm}, "
        f"post_norm={cfg.vision.post_norm}) has no transformers equivalent; save it in lab's own format"
    )


# OPTConfig field -> transformers' OPTConfig field, read in one direction and written in the other.
_OPT_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "ffn_dim",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "max_position_embeddings": "max_position_embeddings",
    "do_layer_norm_before": "do_layer_norm_before",
    "word_embed_proj_dim": "word_embed_proj_dim",
    "enable_bias": "enable_bias",
    "layer_norm_elementwise_affine": "layer_norm_elementwise_affine",
    "hidden_act": "activation_function",
    "tie_word_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}


def _opt_from_hf(tc: Any) -> OPTConfig:
    if getattr(tc, "_remove_final_layer_norm", False):
        raise UnsupportedModelError("OPT with _remove_final_layer_norm (pre-v4.20 fine-tunes) is not supported")
    cfg = {ours: getattr(tc, theirs) for ours, theirs in _OPT_FIELDS.items()}
    return OPTConfig(**{**cfg, "tie_word_embeddings": bool(cfg["tie_word_embeddings"])})


def _opt_to_hf(lc: OPTConfig) -> dict:
    import transformers as tf

    return tf.OPTConfig(**{theirs: getattr(lc, ours) for ours, theirs in _OPT_FIELDS.items()}).to_dict()


# T5Config field -> transformers' T5Config field (the head's tie and the activation are mapped apart).
_T5_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "head_dim": "d_kv",
    "intermediate_size": "d_ff",
    "num_layers": "num_layers",
    "num_decoder_layers": "num_decoder_layers",
    "num_heads": "num_heads",
    "relative_attention_num_buckets": "relative_attention_num_buckets",
    "relative_attention_max_distance": "relative_attention_max_distance",
    "layer_norm_eps": "layer_norm_epsilon",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
    "decoder_start_token_id": "decoder_start_token_id",
}
_T5_ACTS = {"gelu_new": "gelu_tanh", "gelu": "gelu", "relu": "relu", "silu": "silu"}  # theirs -> ours


def _t5_from_hf(tc: Any) -> T5Config:
    act = _T5_ACTS.get(tc.dense_act_fn)
    if act is None:
        raise UnsupportedModelError(f"T5 feed-forward activation {tc.dense_act_fn!r}; lab has {sorted(_T5_ACTS)}")
    cfg = {ours: getattr(tc, theirs, None) for ours, theirs in _T5_FIELDS.items()}
    if cfg["decoder_start_token_id"] is None:
        cfg["decoder_start_token_id"] = tc.pad_token_id or 0  # T5 starts decoding from pad
    if isinstance(cfg["eos_token_id"], list):
        cfg["eos_token_id"] = cfg["eos_token_id"][0]
    # transformers keeps the checkpoint's tie_word_embeddings as `scale_decoder_outputs`: a tied
    # (T5 v1.0) head is scaled, Flan-T5's untied head is not.
    tied = bool(getattr(tc, "scale_decoder_outputs", tc.tie_word_embeddings))
    return T5Config(**cfg, gated=bool(tc.is_gated_act), hidden_act=act, tie_word_embeddings=tied)


def _t5_to_hf(lc: T5Config) -> dict:
    import transformers as tf

    act = {ours: theirs for theirs, ours in _T5_ACTS.items()}[lc.hidden_act]
    if lc.gated and act not in ("gelu_new", "relu", "silu"):
        raise UnsupportedModelError(f"transformers' gated T5 feed-forward has no {lc.hidden_act!r}")
    proj = ("gated-" + ("gelu" if act == "gelu_new" else act)) if lc.gated else act
    fields = {theirs: getattr(lc, ours) for ours, theirs in _T5_FIELDS.items()}
    return tf.T5Config(**fields, feed_forward_proj=proj, tie_word_embeddings=lc.tie_word_embeddings).to_dict()


def bert_shape(c: Any) -> dict:
    """The QFormerConfig fields a BERT-style transformers config fixes (BLIP-2's qformer_config, or
    the BERT checkpoint a Q-Former is initialised from)."""
    return dict(
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        vocab_size=c.vocab_size,
        max_position_embeddings=c.max_position_embeddings,
        pad_token_id=c.pad_token_id or 0,
        layer_norm_eps=c.layer_norm_eps,
        hidden_act=c.hidden_act,
    )


def llm_config_from_hf(tc: Any) -> LLMConfig | OPTConfig | T5Config:
    if tc.model_type == "opt":
        return _opt_from_hf(tc)
    if tc.model_type == "t5":
        return _t5_from_hf(tc)
    if tc.model_type != "llama":
        raise UnsupportedModelError(
            f"unsupported text model {tc.model_type!r}: lab implements Llama-family and OPT decoders and T5"
        )
    rope = dict(getattr(tc, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModelError(f"unsupported rope scaling {rope.get('rope_type')!r}: only default RoPE")
    theta = rope.get("rope_theta", getattr(tc, "rope_theta", 10000.0))
    return LLMConfig(
        vocab_size=tc.vocab_size,
        hidden_size=tc.hidden_size,
        intermediate_size=tc.intermediate_size,
        num_layers=tc.num_hidden_layers,
        num_heads=tc.num_attention_heads,
        num_kv_heads=tc.num_key_value_heads or tc.num_attention_heads,
        head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
        rope_theta=float(theta),
        rms_norm_eps=tc.rms_norm_eps,
        max_position_embeddings=tc.max_position_embeddings,
        attention_bias=tc.attention_bias,
        mlp_bias=tc.mlp_bias,
        hidden_act=tc.hidden_act,
        tie_word_embeddings=bool(tc.tie_word_embeddings),
        bos_token_id=tc.bos_token_id,
        eos_token_id=tc.eos_token_id if not isinstance(tc.eos_token_id, list) else tc.eos_token_id[0],
        pad_token_id=tc.pad_token_id,
    )


def _vision_common(vc: Any) -> dict:
    return dict(
        image_size=vc.image_size,
        patch_size=vc.patch_size,
        hidden_size=vc.hidden_size,
        intermediate_size=vc.intermediate_size,
        num_layers=vc.num_hidden_layers,
        num_heads=vc.num_attention_heads,
        layer_norm_eps=vc.layer_norm_eps,
        hidden_act=vc.hidden_act,
    )


def lab_config_from_hf(config: Any) -> VLMConfig:
    family = family_of_hf(config)
    llm = llm_config_from_hf(config.text_config)
    if family == "llava" and llm.family != "llama":
        raise UnsupportedModelError(f"LLaVA with a {llm.family!r} text model: lab's LLaVA path is Llama-only")
    image_token = getattr(config, "image_token_index", None)
    if image_token is None:
        raise UnsupportedModelError("config has no image_token_index: lab needs image placeholder tokens in input_ids")
    vc = config.vision_config
    if family == "llava":
        if vc.model_type != "clip_vision_model":
            raise UnsupportedModelError(f"unsupported LLaVA vision tower {vc.model_type!r}: lab implements CLIP's")
        layer = config.vision_feature_layer
        if not isinstance(layer, int):
            raise UnsupportedModelError(f"vision_feature_layer={layer!r}: lab supports a single layer index")
        if config.vision_feature_select_strategy not in ("default", "full"):
            raise UnsupportedModelError(
                f"unknown vision_feature_select_strategy {config.vision_feature_select_strategy!r}"
            )
        vision = VisionConfig(
            **_vision_common(vc),
            qkv_bias="qkv",
            patch_bias=False,
            pre_norm=True,
            post_norm=False,
            feature_layer=layer,
            drop_cls=config.vision_feature_select_strategy == "default",
        )
        connector = ConnectorConfig(
            kind="mlp", bias=config.multimodal_projector_bias, hidden_act=config.projector_hidden_act
        )
    else:
        vision = VisionConfig(**_vision_common(vc), qkv_bias="qv" if vc.qkv_bias else "none")
        qc = config.qformer_config
        qformer = QFormerConfig(
            **bert_shape(qc),
            encoder_hidden_size=qc.encoder_hidden_size,
            cross_attention_frequency=qc.cross_attention_frequency,
            num_query_tokens=config.num_query_tokens,
            instruction_aware=family == "instructblip",
            text_ffn=family == "instructblip" or bool(getattr(qc, "use_qformer_text_input", False)),
            attention_dropout=qc.attention_probs_dropout_prob,
            hidden_dropout=qc.hidden_dropout_prob,
        )
        connector = ConnectorConfig(kind="qformer", qformer=qformer)
    return VLMConfig(vision=vision, connector=connector, llm=llm, image_token_id=image_token)


def _llama_to_hf(lc: LLMConfig) -> dict:
    import transformers as tf

    return tf.LlamaConfig(
        vocab_size=lc.vocab_size,
        hidden_size=lc.hidden_size,
        intermediate_size=lc.intermediate_size,
        num_hidden_layers=lc.num_layers,
        num_attention_heads=lc.num_heads,
        num_key_value_heads=lc.num_kv_heads,
        head_dim=lc.head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": lc.rope_theta},
        rms_norm_eps=lc.rms_norm_eps,
        max_position_embeddings=lc.max_position_embeddings,
        attention_bias=lc.attention_bias,
        mlp_bias=lc.mlp_bias,
        hidden_act=lc.hidden_act,
        tie_word_embeddings=lc.tie_word_embeddings,
        bos_token_id=lc.bos_token_id,
        eos_token_id=lc.eos_token_id,
        pad_token_id=lc.pad_token_id,
    ).to_dict()


def hf_config_from_lab(cfg: VLMConfig) -> Any:
    import transformers as tf

    family = family_of_lab(cfg)
    lc, v = cfg.llm, cfg.vision
    if lc.family != "llama" and family == "llava":
        raise UnsupportedModelError(f"LLaVA with a {lc.family!r} LLM has no transformers layout that lab writes")
    text = {"opt": _opt_to_hf, "t5": _t5_to_hf}.get(lc.family, _llama_to_hf)(lc)
    vision = dict(
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        layer_norm_eps=v.layer_norm_eps,
        hidden_act=v.hidden_act,
    )
    if family == "llava":
        return tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(**vision).to_dict(),
            text_config=text,
            image_token_index=cfg.image_token_id,
            vision_feature_layer=v.feature_layer,
            vision_feature_select_strategy="default" if v.drop_cls else "full",
            projector_hidden_act=cfg.connector.hidden_act,
            multimodal_projector_bias=cfg.connector.bias,
            image_seq_length=cfg.image_tokens,
            tie_word_embeddings=lc.tie_word_embeddings,
        )
    q = cfg.connector.qformer
    qformer = dict(
        hidden_size=q.hidden_size,
        num_hidden_layers=q.num_layers,
        num_attention_heads=q.num_heads,
        intermediate_size=q.intermediate_size,
        encoder_hidden_size=q.encoder_hidden_size,
        cross_attention_frequency=q.cross_attention_frequency,
        vocab_size=q.vocab_size,
        max_position_embeddings=q.max_position_embeddings,
        pad_token_id=q.pad_token_id,
        layer_norm_eps=q.layer_norm_eps,
        hidden_act=q.hidden_act,
        attention_probs_dropout_prob=q.attention_dropout,
        hidden_dropout_prob=q.hidden_dropout,
    )
    vision["qkv_bias"] = v.qkv_bias != "none"
    if v.qkv_bias == "qkv":
        raise UnsupportedModelError("BLIP-2's vision tower has no key bias: use vision.qkv_bias='qv'")
    cls = tf.InstructBlipConfig if family == "instructblip" else tf.Blip2Config
    if family == "blip-2":
        qformer["use_qformer_text_input"] = q.text_ffn
    return cls(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=q.num_query_tokens,
        image_token_index=cfg.image_token_id,
        tie_word_embeddings=lc.tie_word_embeddings,
    )
