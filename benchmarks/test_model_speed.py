"""lab vs transformers on the same converted weights, CPU float32, side by side in one run.

    python -m pytest benchmarks/test_model_speed.py --benchmark-enable -p no:cacheprovider

Writes benchmarks/results/model_cpu.json with medians and the lab/transformers ratios.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import pytest
import torch

from lab.convert import from_transformers
from tests import hf_factory as F

RESULTS = Path(__file__).parent / "results" / "model_cpu.json"
MEDIANS: dict[str, float] = {}
BATCH, NEW_TOKENS = 8, 32


@pytest.fixture(scope="module")
def models():
    return build()


def build():
    """The converted pair, a batch and instructions (also `profile_step.py`'s)."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    hf = F.blip2(
        instruct=True,
        vis=F.vision(hidden=128, heads=4, layers=4, image=64, patch=8),
        text=F.llama(hidden=256, heads=8, kv_heads=4, layers=4, vocab=1000),
        q_hidden=128,
        q_heads=4,
        q_layers=4,
        freq=2,
        queries=16,
    )
    hf.config.qformer_config.attention_probs_dropout_prob = 0.0  # same math in train mode
    hf.config.qformer_config.hidden_dropout_prob = 0.0
    for m in hf.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    lab = from_transformers(hf, connector={"qformer": {"attention_dropout": 0.0, "hidden_dropout": 0.0}})
    px = F.pixels(hf.config, batch=BATCH)
    ids, mask = F.prompt(hf.config, batch=BATCH, text_len=48, vocab=1000)
    instr = torch.randint(3, 60, (BATCH, 12))
    return hf, lab, px, ids, mask, instr


def _train_step(fn, model):
    def step():
        model.zero_grad(set_to_none=True)
        fn().backward()

    return step


@pytest.mark.parametrize("impl", ["transformers", "lab"])
def test_train_step(benchmark, models, impl):
    hf, lab, px, ids, mask, instr = models
    labels = ids.masked_fill(ids == F.IMAGE_TOKEN, -100)
    if impl == "lab":
        lab.train()
        fn = lambda: lab(px, ids, mask, instruction_ids=instr, labels=labels).loss  # noqa: E731
        step = _train_step(fn, lab)
    else:
        hf.train()
        fn = lambda: (
            hf(  # noqa: E731
                pixel_values=px, input_ids=ids, attention_mask=mask, qformer_input_ids=instr, labels=labels
            ).loss
        )
        step = _train_step(fn, hf)
    benchmark.group = "train step (fwd+bwd)"
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    MEDIANS[f"train_{impl}"] = benchmark.stats.stats.median


@pytest.mark.parametrize("impl", ["transformers", "lab"])
def test_greedy_generation(benchmark, models, impl):
    hf, lab, px, ids, mask, instr = models
    hf.eval(), lab.eval()
    if impl == "lab":
        run = lambda: lab.generate(  # noqa: E731
            px, ids, mask, instruction_ids=instr, max_new_tokens=NEW_TOKENS, eos_token_id=[], pad_token_id=0
        )
    else:
        run = lambda: hf.generate(  # noqa: E731
            pixel_values=px,
            input_ids=ids,
            attention_mask=mask,
            qformer_input_ids=instr,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=[],
            pad_token_id=0,
        )
    out = run()
    assert out.shape[1] == ids.shape[1] + NEW_TOKENS
    benchmark.group = "greedy generation"
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    MEDIANS[f"generate_{impl}"] = benchmark.stats.stats.median


def test_write_results():
    if len(MEDIANS) < 4:
        pytest.skip("benchmarks disabled or incomplete; run with --benchmark-enable")
    tok = BATCH * NEW_TOKENS
    result = {
        "config": "InstructBLIP-style: ViT 128x4 @64px/8, Q-Former 128x4 (16 queries), Llama 256x4 GQA 8/4, batch 8",
        "train_step_s": {"lab": MEDIANS["train_lab"], "transformers": MEDIANS["train_transformers"]},
        "train_time_ratio_lab_over_transformers": MEDIANS["train_lab"] / MEDIANS["train_transformers"],
        "generate_tokens_per_s": {
            "lab": tok / MEDIANS["generate_lab"],
            "transformers": tok / MEDIANS["generate_transformers"],
        },
        "generate_speedup_lab_over_transformers": MEDIANS["generate_transformers"] / MEDIANS["generate_lab"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
