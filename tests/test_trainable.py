"""What trains: every stage × freeze flag × what --init loaded gives the parts the table says,
random parts are never frozen silently, and the decision is logged as a table."""

import itertools
import logging

import pytest

from lab.config import ConfigError
from lab.data import scene_tokenizer
from lab.train import build_config, build_stage
from lab.train.trainable import PARTS, ROLES, decide

FLAGS = (True, False, "auto")
INHERITED = ((), ("vision", "llm"), ("vision",), ("llm",))


def _expected(stage: str, part: str, flag, pretrained: bool):
    """The rule, spelled out independently of `decide`: None means "must raise"."""
    role = ROLES[stage].get(part)
    if role is None:
        return False
    if flag is True:
        return None if role == "train" or not pretrained else False
    if flag is False:
        return True
    return role == "train" or not pretrained


@pytest.mark.parametrize("stage", list(ROLES))
def test_decisions_follow_stage_flags_and_init(stage):
    for fv, fl, inherited in itertools.product(FLAGS, FLAGS, INHERITED):
        model = build_config(stage, overrides={"model.freeze_vision": fv, "model.freeze_llm": fl}).model
        flags = {"vision": fv, "connector": "auto", "llm": fl}
        want = {p: _expected(stage, p, flags[p], p in inherited) for p in PARTS}
        if None in want.values():
            bad = next(p for p, w in want.items() if w is None)
            with pytest.raises(ConfigError, match=f"freeze_{bad}=true"):
                decide(stage, model, inherited)
            continue
        got = {d.part: d.trainable for d in decide(stage, model, inherited)}
        assert got == want, (stage, fv, fl, inherited)


def test_freezing_a_random_part_names_init_and_the_flag():
    model = build_config("instruct", overrides={"model.freeze_llm": True}).model
    with pytest.raises(ConfigError, match=r"model\.freeze_llm=true.*random weights.*--init"):
        decide("instruct", model, inherited=("vision",))


@pytest.mark.parametrize("stage", list(ROLES))
def test_built_stage_trains_exactly_the_table(stage, caplog):
    tok = scene_tokenizer()
    for fv, fl in itertools.product(FLAGS, FLAGS):
        cfg = build_config(stage, quick=True, overrides={"model.freeze_vision": fv, "model.freeze_llm": fl})
        built = build_stage(cfg, tok)
        try:
            with caplog.at_level(logging.INFO, logger="lab"):
                caplog.clear()
                decisions = built.set_trainable(inherited=("vision", "llm"))
        except ConfigError:
            continue  # covered above
        for d in decisions:
            grads = {p.requires_grad for p in getattr(built.vlm, d.part).parameters()}
            assert grads == {d.trainable}, (stage, fv, fl, d)
            assert d.why in caplog.text
        assert built.trained_components() == tuple(d.part for d in decisions if d.trainable)


def test_newcomer_default_trains_random_parts():
    """`--stage instruct` with no --init: nothing random stays frozen."""
    model = build_config("instruct").model
    assert all(d.trainable for d in decide("instruct", model, inherited=()))
    frozen = {d.part for d in decide("instruct", model, inherited=("vision", "llm")) if not d.trainable}
    assert frozen == {"vision", "llm"}  # InstructBLIP's default once both are pretrained


def test_minigpt4_recipe_trains_only_the_projection():
    """configs/minigpt4_tiny.yaml: ViT, Q-Former and LLM frozen, one linear layer trains."""
    from pathlib import Path

    from lab.config import ConfigError

    yaml = Path(__file__).resolve().parents[1] / "configs" / "minigpt4_tiny.yaml"
    loaded = ("vision", "connector", "llm")
    for stage in ("stage2", "instruct"):
        cfg = build_config(stage, quick=True, config_file=yaml)
        built = build_stage(cfg, scene_tokenizer())
        decisions = {d.part: d for d in built.set_trainable(inherited=loaded)}
        trainable = {n for n, p in built.vlm.named_parameters() if p.requires_grad}
        assert trainable == {n for n, _ in built.vlm.connector.proj.named_parameters(prefix="connector.proj")}
        assert decisions["connector"].frozen_within == ("qformer",)
        assert not decisions["vision"].trainable and not decisions["llm"].trainable
        with pytest.raises(ConfigError, match=r"freeze_qformer=true but the connector has random weights.*--init"):
            decide(stage, cfg.model, inherited=("vision", "llm"))
    linear = build_config("stage2", config_file=yaml, overrides={"model.connector": "linear"}).model
    with pytest.raises(ConfigError, match="freeze_qformer=true needs connector kind 'qformer'"):
        decide("stage2", linear, inherited=loaded)


def test_instruction_vocabulary_smaller_than_the_tokenizer_is_named():
    from lab.config import ConfigError
    from lab.data.tokenizer import WordTokenizer

    tok = WordTokenizer.fit([" ".join(f"w{i}" for i in range(300))])
    cfg = build_config("instruct", quick=True, overrides={"model.llm.vocab_size": 512})
    with pytest.raises(ConfigError, match=r"qformer\.vocab_size=128 < tokenizer size 30\d"):
        build_stage(cfg, tok)
