"""Tiny random transformers models of each family, for comparisons against lab."""

from __future__ import annotations

import torch
import transformers as tf

IMAGE_TOKEN = 5


def llama(hidden=32, heads=4, kv_heads=2, layers=2, vocab=96, tie=False, head_dim=None, theta=10000.0):
    return tf.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ).to_dict()


def opt(hidden=32, heads=4, layers=2, vocab=96, pre_norm=True, tie=True, proj_dim=None):
    return tf.OPTConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        ffn_dim=2 * hidden + 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=128,
        do_layer_norm_before=pre_norm,
        word_embed_proj_dim=proj_dim or hidden,
        tie_word_embeddings=tie,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    ).to_dict()


def vision(hidden=32, heads=4, layers=2, image=32, patch=8):
    return dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image,
        patch_size=patch,
    )


def blip2(
    instruct=False,
    vis=None,
    text=None,
    q_hidden=32,
    q_heads=4,
    q_layers=2,
    freq=1,
    queries=4,
    seed=0,
    q_vocab=64,
    image_token=IMAGE_TOKEN,
):
    torch.manual_seed(seed)
    vis = vis or vision()
    qformer = dict(
        hidden_size=q_hidden,
        intermediate_size=2 * q_hidden,
        num_hidden_layers=q_layers,
        num_attention_heads=q_heads,
        encoder_hidden_size=vis["hidden_size"],
        cross_attention_frequency=freq,
        vocab_size=q_vocab,
    )
    cls, model_cls = (
        (tf.InstructBlipConfig, tf.InstructBlipForConditionalGeneration)
        if instruct
        else (tf.Blip2Config, tf.Blip2ForConditionalGeneration)
    )
    cfg = cls(
        vision_config=vis,
        qformer_config=qformer,
        text_config=text or llama(),
        num_query_tokens=queries,
        image_token_index=image_token,
    )
    return _untie_t5(_randomize(model_cls(cfg)), cfg.text_config)


def _untie_t5(model, text_cfg):
    """transformers builds every T5 with its head tied to the word embeddings and unties it only when
    a checkpoint's two tensors differ (Flan-T5's do): give the head its own values, as Flan-T5 has."""
    if text_cfg.model_type == "t5" and not text_cfg.scale_decoder_outputs:
        lm = model.language_model if hasattr(model, "language_model") else model
        lm.lm_head.weight = torch.nn.Parameter(torch.randn_like(lm.shared.weight) * 0.2)
    return model


def llava(vis=None, text=None, feature_layer=-2, strategy="default", seed=0, image_token=IMAGE_TOKEN):
    torch.manual_seed(seed)
    vis = vis or vision()
    cfg = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**vis).to_dict(),
        text_config=text or llama(),
        image_token_index=image_token,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
    )
    return _randomize(tf.LlavaForConditionalGeneration(cfg))


def _randomize(model):
    """Random init makes every weight matter (zero biases, unit LayerNorms would hide mapping errors)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qkv.bias"):  # BLIP-2's key bias is structurally zero
                d = p.shape[0] // 3
                p[:d].normal_(0, 0.2)
                p[d : 2 * d].zero_()
                p[2 * d :].normal_(0, 0.2)
            elif p.ndim == 1 and ("norm" in name.lower()) and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.2 if p.ndim > 1 else 0.1)
    return model.eval()


def prompt(model_cfg, batch=2, text_len=6, pad_rows=(), left=False, vocab=96, seed=1):
    """input_ids with image placeholders first, then text; rows in `pad_rows` get 2 pad tokens."""
    g = torch.Generator().manual_seed(seed)
    n_img = image_tokens(model_cfg)
    ids = torch.randint(6, vocab, (batch, n_img + text_len), generator=g)
    ids[:, :n_img] = IMAGE_TOKEN
    mask = torch.ones_like(ids)
    for r in pad_rows:
        if left:
            ids[r] = torch.cat([torch.zeros(2, dtype=ids.dtype), ids[r, :-2]])
            mask[r, :2] = 0
        else:
            ids[r, -2:] = 0
            mask[r, -2:] = 0
    return ids, mask


def instruction(hf, batch=2):
    """InstructBLIP's Q-Former instruction, as (transformers' keywords, lab's keywords); empty for others."""
    if hf.config.model_type != "instructblip":
        return {}, {}
    ids = torch.randint(3, 60, (batch, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    return dict(qformer_input_ids=ids, qformer_attention_mask=mask), dict(instruction_ids=ids, instruction_mask=mask)


def image_tokens(cfg) -> int:
    if cfg.model_type == "llava":
        v = cfg.vision_config
        n = (v.image_size // v.patch_size) ** 2
        return n + (cfg.vision_feature_select_strategy != "default")
    return cfg.num_query_tokens


def pixels(cfg, batch=2, seed=2):
    s = cfg.vision_config.image_size
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))


def t5(hidden=32, heads=4, d_kv=8, layers=2, decoder_layers=None, vocab=96, gated=True, tie=False):
    """Flan-T5's shape by default (gated GELU, untied and unscaled head); `tie=True, gated=False` is T5 v1.0's."""
    return tf.T5Config(
        vocab_size=vocab,
        d_model=hidden,
        d_kv=d_kv,
        d_ff=2 * hidden + 8,
        num_layers=layers,
        num_decoder_layers=decoder_layers,
        num_heads=heads,
        relative_attention_num_buckets=8,  # small, so that short test prompts reach the log-spaced buckets
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=tie,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    ).to_dict()


def blip2_retrieval(image_token=None, embed=12, seed=0):
    """transformers' BLIP-2 stage-1 model: vision, Q-Former with its text side, ITC/ITM heads."""
    torch.manual_seed(seed)
    vis = vision()
    qformer = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=vis["hidden_size"],
        vocab_size=64,
        use_qformer_text_input=True,
    )
    cfg = tf.Blip2Config(
        vision_config=vis,
        qformer_config=qformer,
        num_query_tokens=4,
        image_text_hidden_size=embed,
        image_token_index=image_token,
    )
    return _randomize(tf.Blip2ForImageTextRetrieval(cfg))
