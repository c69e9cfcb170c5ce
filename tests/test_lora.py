"""LoRA through peft: only the adapters train, they save as a peft adapter folder, merging gives
the same model, resume is exact, and misuse is a one-line error naming the keys."""

import json
import shutil

import pytest
import torch

import lab
from lab.config import ConfigError
from lab.models import LoRAConfig, lora
from lab.rundir import RunDir
from lab.train import build_config, train
from lab.train.trainable import decide
from tests.test_train import cfg, losses

LORA = {"model.llm_lora.r": 4, "model.llm_lora.alpha": 8, "model.freeze_llm": "auto"}


@pytest.fixture(scope="module")
def lora_run(stage0, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    summary = train(cfg("instruct", 4, **LORA), out, init=[stage0 / "vision", stage0 / "lm"], progress=False)
    return out, summary


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.cfg.vision.image_size
    ids = torch.randint(10, 40, (2, 6), generator=g)
    ids = torch.cat([torch.full((2, model.cfg.image_tokens), model.cfg.image_token_id), ids], 1)
    q = model.cfg.connector.qformer
    kw = {"instruction_ids": torch.randint(10, 40, (2, 4), generator=g)} if q and q.instruction_aware else {}
    return torch.randn(2, 3, size, size, generator=g), ids, kw


def test_only_adapters_and_connector_train(stage0, lora_run):
    out, summary = lora_run
    model = lab.load_pretrained(out)
    assert lora.has_lora(model.llm) and not lora.has_lora(model.vision)
    base, adapters = lora.split_state(model.llm)
    for k, v in lab.load_pretrained(stage0 / "lm").llm.state_dict().items():
        assert torch.equal(base[k], v), f"frozen LLM weight {k} changed"
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at zero
    connector = sum(p.numel() for p in model.connector.parameters())
    assert summary["trainable_parameters"] == connector + sum(v.numel() for v in adapters.values())
    parts = {p["part"]: p for p in json.loads((out / "trainable.json").read_text())["parts"]}
    assert parts["llm"]["lora"] and parts["llm"]["trainable"] and "llm_lora.r=4" in parts["llm"]["why"]


def test_adapter_folder_is_peft_format_and_merges_to_the_same_model(lora_run):
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    out, _ = lora_run
    folder = RunDir(out).adapters("llm")
    saved = LoraConfig.from_pretrained(str(folder))
    assert saved.r == 4 and saved.lora_alpha == 8 and set(saved.target_modules) == {"qkv", "o", "gate_up", "down"}
    weights = load_peft_weights(str(folder))
    assert weights and all(k.startswith("base_model.model.layers.") for k in weights)
    attached, merged = lab.load_pretrained(out), lab.load_pretrained(out, merge_lora=True)
    assert not lora.has_lora(merged.llm)
    assert set(merged.state_dict()) == set(_without_adapters(out).state_dict())  # plain layer names again
    px, ids, kw = _batch(attached)
    with torch.no_grad():
        want = attached(px, ids, **kw).logits
        torch.testing.assert_close(merged(px, ids, **kw).logits, want, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(_without_adapters(out)(px, ids, **kw).logits, want), "the adapters did nothing"


def _without_adapters(out):
    """The run's base weights alone: what the adapters are measured against."""
    bare = out.parent / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("adapters", "checkpoints"), dirs_exist_ok=True)
    return lab.load_pretrained(bare)


def test_next_stage_init_reads_merged_weights(lora_run, tmp_path):
    out, _ = lora_run
    nxt = tmp_path / "next"
    train(cfg("instruct", 2), nxt, init=[out], progress=False)
    merged = lab.load_pretrained(out, merge_lora=True).llm.state_dict()
    for k, v in lab.load_pretrained(nxt).llm.state_dict().items():
        assert torch.equal(v, merged[k]), k  # the LLM stays frozen (auto) at the merged weights


def test_resume_is_exact(stage0, tmp_path):
    init = [stage0 / "vision", stage0 / "lm"]
    train(cfg("instruct", 6, **LORA), tmp_path / "full", init=init, progress=False)
    train(cfg("instruct", 6, **LORA), tmp_path / "cut", init=init, progress=False, stop_at=3)
    train(cfg("instruct", 6, **LORA), tmp_path / "cut", init=init, progress=False, resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


@pytest.mark.parametrize(
    "overrides,inherited,match",
    [
        (LORA, ("vision",), r"model\.llm_lora\.r=4 needs a pretrained llm: give --init"),
        ({**LORA, "model.freeze_llm": False}, ("vision", "llm"), r"freeze_llm=false .*llm_lora\.r=4 .*choose one"),
        ({"model.vision_lora.r": 2}, (), r"stage vision trains the vision fully; model\.vision_lora\.r=2"),
    ],
)
def test_misuse_is_one_clear_error(overrides, inherited, match):
    stage = "vision" if "model.vision_lora.r" in overrides else "instruct"
    model = build_config(stage, overrides=overrides).model
    with pytest.raises(ConfigError, match=match):
        decide(stage, model, inherited)


def test_config_errors():
    with pytest.raises(ConfigError, match="rank r=-1"):
        LoRAConfig(r=-1)
    with pytest.raises(ConfigError, match="dropout"):
        LoRAConfig(r=2, dropout=1.5)
    model = lab.VisionLanguageModel(build_config("instruct").model)
    with pytest.raises(ConfigError, match=r"no linear layer named \['q_proj'\] in the llm"):
        lora.attach(model.llm, LoRAConfig(r=2, target_modules=["q_proj"]), "llm")


def test_opt_llm_takes_lora_on_its_own_layer_names():
    from lab.models import OPTConfig, OPTDecoder

    llm = OPTDecoder(OPTConfig(num_layers=1))
    n = lora.attach(llm, LoRAConfig(r=2), "llm")
    assert lora.wrapped(llm) == ["fc1", "fc2", "o", "qkv"] and n > 0


def test_vision_lora_trains_its_adapters_only():
    from lab.data import scene_tokenizer
    from lab.train import build_stage

    over = {"model.vision_lora.r": 2, "model.freeze_vision": "auto"}
    stage = build_stage(build_config("instruct", quick=True, overrides=over), scene_tokenizer())
    stage.set_trainable(("vision", "llm"))
    trainable = [n for n, p in stage.vlm.vision.named_parameters() if p.requires_grad]
    assert lora.has_lora(stage.vlm.vision) and trainable and all("lora_" in n for n in trainable)
    assert not any(p.requires_grad for p in stage.vlm.llm.parameters())


def test_damaged_adapter_folder_is_one_clear_error(lora_run, tmp_path):
    from lab.convert import CheckpointError

    out, _ = lora_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken, ignore=shutil.ignore_patterns("checkpoints"))
    (RunDir(broken).adapters("llm") / "adapter_config.json").write_text('{"r": 4}')
    with pytest.raises(CheckpointError, match=r"adapter_config\.json is not a readable LoRA adapter config"):
        lab.load_pretrained(broken)
    (RunDir(broken).adapters("llm") / "adapter_config.json").unlink()
    with pytest.raises(CheckpointError, match="has no adapter_config.json"):
        lab.load_pretrained(broken)
