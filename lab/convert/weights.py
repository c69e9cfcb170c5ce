"""Weight names: lab <-> transformers. Renames are regex rules on lab's names; the few tensors
whose layout differs (fused q/k/v, BLIP-2's q/v-only bias, leading singleton dims) are special."""

from __future__ import annotations

import re

import torch

from lab.models import VLMConfig

Tensors = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint whose tensors are missing, unexpected or of the wrong shape."""


def _llm_rules(p: str, head: str) -> list[tuple[str, str]]:
    return [
        (r"llm\.embed\.weight", p + "embed_tokens.weight"),
        (r"llm\.layers\.(\d+)\.attn\.o\.(weight|bias)", p + r"layers.\1.self_attn.o_proj.\2"),
        (r"llm\.layers\.(\d+)\.attn_norm\.weight", p + r"layers.\1.input_layernorm.weight"),
        (r"llm\.layers\.(\d+)\.mlp_norm\.weight", p + r"layers.\1.post_attention_layernorm.weight"),
        (r"llm\.layers\.(\d+)\.mlp\.down\.(weight|bias)", p + r"layers.\1.mlp.down_proj.\2"),
        (r"llm\.norm\.weight", p + "norm.weight"),
        (r"llm\.lm_head\.weight", head),
    ]


def _opt_rules(p: str, head: str) -> list[tuple[str, str]]:
    """OPT inside BLIP-2: `p` is "language_model.model.decoder."; q/k/v are joined in `_fused`."""
    return [
        (r"llm\.embed\.weight", p + "embed_tokens.weight"),
        (r"llm\.pos_embed\.weight", p + "embed_positions.weight"),
        (r"llm\.project_(in|out)\.weight", p + r"project_\1.weight"),
        (r"llm\.layers\.(\d+)\.attn\.o\.(weight|bias)", p + r"layers.\1.self_attn.out_proj.\2"),
        (r"llm\.layers\.(\d+)\.attn_norm\.(weight|bias)", p + r"layers.\1.self_attn_layer_norm.\2"),
        (r"llm\.layers\.(\d+)\.mlp_norm\.(weight|bias)", p + r"layers.\1.final_layer_norm.\2"),
        (r"llm\.layers\.(\d+)\.fc(1|2)\.(weight|bias)", p + r"layers.\1.fc\2.\3"),
        (r"llm\.norm\.(weight|bias)", p + r"final_layer_norm.\1"),
        (r"llm\.lm_head\.weight", head),
    ]


def _t5_rules(p: str) -> list[tuple[str, str]]:
    """T5 inside BLIP-2 / InstructBLIP: `p` is "language_model."; the encoder's feed-forward is its
    blocks' layer 1, the decoder's layer 2 (layer 1 is cross-attention). Gated `wi` is in `_fused`."""
    s = r"llm\.(encoder|decoder)\.layers\.(\d+)\."
    block = p + r"\1.block.\2.layer."
    return [
        (r"llm\.embed\.weight", p + "shared.weight"),
        (
            r"llm\.(encoder|decoder)\.rel_bias\.weight",
            p + r"\1.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        ),
        (s + r"attn\.(q|k|v|o)\.weight", block + r"0.SelfAttention.\3.weight"),
        (s + r"attn_norm\.weight", block + "0.layer_norm.weight"),
        (
            r"llm\.decoder\.layers\.(\d+)\.cross\.(q|k|v|o)\.weight",
            p + r"decoder.block.\1.layer.1.EncDecAttention.\2.weight",
        ),
        (r"llm\.decoder\.layers\.(\d+)\.cross_norm\.weight", p + r"decoder.block.\1.layer.1.layer_norm.weight"),
        (r"llm\.encoder\.layers\.(\d+)\.mlp_norm\.weight", p + r"encoder.block.\1.layer.1.layer_norm.weight"),
        (r"llm\.decoder\.layers\.(\d+)\.mlp_norm\.weight", p + r"decoder.block.\1.layer.2.layer_norm.weight"),
        (
            r"llm\.encoder\.layers\.(\d+)\.mlp\.(wi|wo)\.weight",
            p + r"encoder.block.\1.layer.1.DenseReluDense.\2.weight",
        ),
        (
            r"llm\.decoder\.layers\.(\d+)\.mlp\.(wi|wo)\.weight",
            p + r"decoder.block.\1.layer.2.DenseReluDense.\2.weight",
        ),
        (r"llm\.(encoder|decoder)\.norm\.weight", p + r"\1.final_layer_norm.weight"),
        (r"llm\.lm_head\.weight", p + "lm_head.weight"),
    ]


def _vision_rules(v: str, clip: bool) -> list[tuple[str, str]]:
    rules = [
        (r"vision\.patch_embed\.(weight|bias)", v + r"embeddings.patch_embedding.\1"),
        (r"vision\.cls_token", v + "embeddings.class_embedding"),
        (
            r"vision\.pos_embed",
            v + ("embeddings.position_embedding.weight" if clip else "embeddings.position_embedding"),
        ),
        (r"vision\.pre_norm\.(weight|bias)", v + r"pre_layrnorm.\1"),
        (r"vision\.post_norm\.(weight|bias)", v + r"post_layernorm.\1"),
        (r"vision\.layers\.(\d+)\.norm(1|2)\.(weight|bias)", v + r"encoder.layers.\1.layer_norm\2.\3"),
        (r"vision\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", v + r"encoder.layers.\1.mlp.\2.\3"),
        (
            r"vision\.layers\.(\d+)\.attn\.proj\.(weight|bias)",
            v + (r"encoder.layers.\1.self_attn.out_proj.\2" if clip else r"encoder.layers.\1.self_attn.projection.\2"),
        ),
        (r"vision\.layers\.(\d+)\.attn\.qkv\.weight", v + r"encoder.layers.\1.self_attn.qkv.weight"),
    ]
    return rules


def _qformer_rules(instruct: bool) -> list[tuple[str, str]]:
    q, lab = "qformer.", r"connector\.qformer\."
    parts = {"self_attn": "attention", "cross_attn": "crossattention"}
    rules = [
        (lab + r"query_tokens", "query_tokens"),
        (lab + r"embed_norm\.(weight|bias)", q + (r"embeddings.layernorm.\1" if instruct else r"layernorm.\1")),
        (lab + r"word_embed\.weight", q + "embeddings.word_embeddings.weight"),
        (lab + r"pos_embed\.weight", q + "embeddings.position_embeddings.weight"),
        (r"connector\.proj\.(weight|bias)", r"language_projection.\1"),
    ]
    for ours, theirs in parts.items():
        base = lab + r"layers\.(\d+)\." + ours + r"\."
        out = q + r"encoder.layer.\1." + theirs + "."
        rules += [
            (base + r"q\.(weight|bias)", out + r"attention.query.\2"),
            (base + r"k\.(weight|bias)", out + r"attention.key.\2"),
            (base + r"v\.(weight|bias)", out + r"attention.value.\2"),
            (base + r"o\.(weight|bias)", out + r"output.dense.\2"),
            (base + r"norm\.(weight|bias)", out + r"output.LayerNorm.\2"),
        ]
    for ours, (inter, output) in {
        "ffn_query": ("intermediate_query", "output_query"),
        "ffn_text": ("intermediate", "output"),
    }.items():
        base = lab + r"layers\.(\d+)\." + ours + r"\."
        out = q + r"encoder.layer.\1."
        rules += [
            (base + r"fc1\.(weight|bias)", out + inter + r".dense.\2"),
            (base + r"fc2\.(weight|bias)", out + output + r".dense.\2"),
            (base + r"norm\.(weight|bias)", out + output + r".LayerNorm.\2"),
        ]
    return rules


def rules_for(family: str, llm_family: str = "llama") -> list[tuple[re.Pattern, str]]:
    if family == "llava":
        rules = _llm_rules("model.language_model.", "lm_head.weight") + _vision_rules("model.vision_tower.", True)
        rules += [(r"connector\.fc(1|2)\.(weight|bias)", r"model.multi_modal_projector.linear_\1.\2")]
    else:
        if llm_family == "opt":
            rules = _opt_rules("language_model.model.decoder.", "language_model.lm_head.weight")
        elif llm_family == "t5":
            rules = _t5_rules("language_model.")
        else:
            rules = _llm_rules("language_model.model.", "language_model.lm_head.weight")
        rules += _vision_rules("vision_model.", False) + _qformer_rules(family == "instructblip")
    return [(re.compile(a + "$"), b) for a, b in rules]


def hf_name(lab_key: str, rules) -> str:
    for pattern, template in rules:
        m = pattern.match(lab_key)
        if m:
            return m.expand(template)
    raise KeyError(f"no transformers name for lab tensor {lab_key!r}")


_CLIP_QKV = re.compile(r"vision\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_BLIP_QV = re.compile(r"vision\.layers\.(\d+)\.attn\.(q|v)_bias$")
_LLM_QKV = re.compile(r"llm\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_LLM_GATE_UP = re.compile(r"llm\.layers\.(\d+)\.mlp\.gate_up\.(weight|bias)$")
_T5_GATED_WI = re.compile(r"llm\.(encoder|decoder)\.layers\.(\d+)\.mlp\.wi\.weight$")


def _fused(key: str, cfg: VLMConfig, family: str) -> tuple[list[str], list[int]] | None:
    """For a lab tensor that is several transformers tensors joined on dim 0: their names and sizes."""
    llm = "model.language_model." if family == "llava" else "language_model.model."
    llm += "decoder." if cfg.llm.family == "opt" else ""
    if cfg.llm.family == "t5":
        if cfg.llm.gated and (m := _T5_GATED_WI.match(key)):
            ff = 1 if m[1] == "encoder" else 2
            names = [f"language_model.{m[1]}.block.{m[2]}.layer.{ff}.DenseReluDense.wi_{i}.weight" for i in (0, 1)]
            return names, [cfg.llm.intermediate_size] * 2
        return None
    if m := _LLM_QKV.match(key):
        h, hkv, d = cfg.llm.num_heads, cfg.llm.num_kv_heads, cfg.llm.head_dim
        return [f"{llm}layers.{m[1]}.self_attn.{n}_proj.{m[2]}" for n in "qkv"], [h * d, hkv * d, hkv * d]
    if m := _LLM_GATE_UP.match(key):
        names = [f"{llm}layers.{m[1]}.mlp.{n}_proj.{m[2]}" for n in ("gate", "up")]
        return names, [cfg.llm.intermediate_size] * 2
    if family == "llava" and (m := _CLIP_QKV.match(key)):
        names = [f"model.vision_tower.encoder.layers.{m[1]}.self_attn.{n}_proj.{m[2]}" for n in "qkv"]
        return names, [cfg.vision.hidden_size] * 3
    return None


def lab_to_hf(lab: Tensors, cfg: VLMConfig, family: str) -> Tensors:
    rules, out = rules_for(family, cfg.llm.family), {}
    for key, t in lab.items():
        if fused := _fused(key, cfg, family):
            names, sizes = fused
            for name, part in zip(names, t.split(sizes), strict=True):
                out[name] = part
        elif m := _BLIP_QV.match(key):
            if m[2] == "q":
                q, v = t, lab[key.replace("q_bias", "v_bias")]
                out[f"vision_model.encoder.layers.{m[1]}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
        elif key in ("connector.qformer.query_tokens",) or (
            family != "llava" and key in ("vision.cls_token", "vision.pos_embed")
        ):
            out[hf_name(key, rules)] = t[None, None] if key == "vision.cls_token" else t[None]
        else:
            out[hf_name(key, rules)] = t
    if family == "llava":  # CLIP's post-LayerNorm is unused by LLaVA; lab drops it, transformers expects it
        like = lab["vision.pos_embed"]
        out["model.vision_tower.post_layernorm.weight"] = torch.ones_like(like[0])
        out["model.vision_tower.post_layernorm.bias"] = torch.zeros_like(like[0])
    return out


# LLaVA's tensors live under `model.*` in memory but are written to disk in the older layout
# (what transformers' save_pretrained writes, and what checkpoints on the hub use).
_LLAVA_DISK = [
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
]


def _rename_prefixes(tensors: Tensors, renames: list[tuple[str, str]]) -> Tensors:
    out = {}
    for key, t in tensors.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = t
    return out


def to_disk_names(hf: Tensors, family: str) -> Tensors:
    return _rename_prefixes(hf, _LLAVA_DISK) if family == "llava" else hf


def normalize_hf_names(hf: Tensors, family: str) -> Tensors:
    """Map the on-disk LLaVA layouts (`language_model.model.*`, `vision_tower.*` and the older
    `vision_tower.vision_model.*`) onto the in-memory names."""
    if family != "llava":
        return hf
    renames = [("vision_tower.vision_model.", "model.vision_tower.")] + [(b, a) for a, b in _LLAVA_DISK]
    return _rename_prefixes(hf, renames)


IGNORED_HF = (
    re.compile(r".*rotary_emb\.inv_freq$"),
    re.compile(r".*position_ids$"),
    re.compile(r"model\.vision_tower\.post_layernorm\.(weight|bias)$"),
    re.compile(r"language_model\.(encoder|decoder)\.embed_tokens\.weight$"),  # T5: aliases of `shared`
)


def hf_to_lab(hf: Tensors, expected: dict[str, torch.Size], cfg: VLMConfig, family: str) -> Tensors:
    """Tensors for every lab key in `expected`; errors name missing, unexpected and misshapen tensors."""
    hf = normalize_hf_names(hf, family)
    rules, out, used, missing, source, unjoinable = rules_for(family, cfg.llm.family), {}, set(), [], {}, []

    def take(name: str) -> torch.Tensor | None:
        if name not in hf:
            missing.append(name)
            return None
        used.add(name)
        source[key] = name
        return hf[name]

    for key in expected:
        if fused := _fused(key, cfg, family):
            names = fused[0]
            parts = [take(n) for n in names]
            if all(p is not None for p in parts):
                if len({p.shape[1:] for p in parts}) > 1:
                    unjoinable.append(f"{names}: {[tuple(p.shape) for p in parts]}")
                    continue
                out[key] = torch.cat(parts)
        elif m := _BLIP_QV.match(key):
            t = take(f"vision_model.encoder.layers.{m[1]}.self_attn.qkv.bias")
            if t is not None:
                d = t.shape[0] // 3
                out[key] = t[:d] if m[2] == "q" else t[2 * d :]  # the key bias cancels in softmax
        else:
            t = take(hf_name(key, rules))
            if t is not None:
                if key == "connector.qformer.query_tokens" or (
                    family != "llava" and key in ("vision.cls_token", "vision.pos_embed")
                ):
                    t = t.reshape(t.shape[-2:]) if key != "vision.cls_token" else t.reshape(-1)
                out[key] = t
    if cfg.llm.tie_word_embeddings:
        used |= {k for k in hf if k.endswith("lm_head.weight")}
    unexpected = sorted(k for k in hf if k not in used and not any(p.match(k) for p in IGNORED_HF))
    wrong = [
        f"{source[k]} (lab {k}): checkpoint {tuple(out[k].shape)} vs model {tuple(s)}"
        for k, s in expected.items()
        if k in out and out[k].shape != s
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {sorted(set(missing))[:20]}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:20]}")
    wrong += unjoinable
    if wrong:
        problems.append(f"mismatched shapes {wrong[:20]}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model config: " + "; ".join(problems))
    return out
