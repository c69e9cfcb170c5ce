"""lab.train.handoff: the frozen LLM as its own teacher, from a scene's caption to its image."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.config import ConfigError
from lab.data import scene_tokenizer
from lab.train import build_config, handoff
from lab.train.stages import build_stage


def _stage(weight: float, stage: str = "instruct"):
    cfg = build_config(stage, quick=True, overrides={"handoff_weight": weight, "model.freeze_llm": True})
    s = build_stage(cfg, scene_tokenizer())
    s.set_trainable(["vision", "llm"])  # as if both came from --init
    return s


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 4), st.integers(0, 3)), min_size=1, max_size=4))
def test_the_loss_compares_the_suffixes_whatever_comes_before(rows):
    """Rows of (prefix length, suffix length, padding) in the student and a longer teacher prefix:
    equal suffix states give zero, one changed suffix state gives a positive loss."""
    d, layers = 3, 2
    width_s = max(p + n + pad for p, n, pad in rows)
    width_t = max(p + 5 + n + pad for p, n, pad in rows)
    student = [torch.randn(len(rows), width_s, d) for _ in range(layers)]
    teacher = [torch.randn(len(rows), width_t, d) for _ in range(layers)]
    ms, mt = torch.zeros(len(rows), width_s), torch.zeros(len(rows), width_t)
    for r, (p, n, _) in enumerate(rows):
        ms[r, : p + n], mt[r, : p + 5 + n] = 1, 1
        for s, t in zip(student, teacher, strict=True):
            s[r, p : p + n] = t[r, p + 5 : p + 5 + n]
    suffix = torch.tensor([n for _, n, _ in rows])
    assert handoff.loss(student, teacher, (ms, mt), suffix).item() == pytest.approx(0.0, abs=1e-6)
    p, n, _ = rows[0]
    student[1][0, p + n - 1] += 1.0
    assert handoff.loss(student, teacher, (ms, mt), suffix).item() > 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 4), st.integers(0, 5)), min_size=1, max_size=4))
def test_the_batched_loss_is_the_sum_of_each_rows_relative_error(rows):
    """Against the definition written row by row: mean over (layers, suffix positions) of the squared
    error over the mean squared teacher state, summed over rows (random states, shifted teacher)."""
    d, layers = 3, 2
    width_s = max(p + n + pad for p, n, pad in rows)
    width_t = max(p + n + pad for p, n, pad in rows) + 3
    student = [torch.randn(len(rows), width_s, d) for _ in range(layers)]
    teacher = [torch.randn(len(rows), width_t, d) for _ in range(layers)]
    ms, mt = torch.zeros(len(rows), width_s), torch.zeros(len(rows), width_t)
    want = 0.0
    for r, (p, n, pad) in enumerate(rows):
        shift = pad % 4  # the teacher's prefix may be longer
        ms[r, : p + n], mt[r, : p + shift + n] = 1, 1
        s = torch.stack([h[r, p : p + n] for h in student])
        t = torch.stack([h[r, p + shift : p + shift + n] for h in teacher])
        want += ((s - t).pow(2).sum(-1).mean() / t.pow(2).sum(-1).mean()).item()
    suffix = torch.tensor([n for _, n, _ in rows])
    assert handoff.loss(student, teacher, (ms, mt), suffix).item() == pytest.approx(want, rel=1e-5)


def test_the_teacher_reads_the_caption_where_the_student_sees_the_image():
    from lab.data import SceneTasks, caption

    s = _stage(1.0)
    samples = [SceneTasks(s.cfg.data, "train")[i] for i in range(4)]
    batch = s.collate(samples)
    tok = s.tok
    suffix = handoff.suffix_lengths(batch["input_ids"], batch["attention_mask"], tok.image_id)
    for r, sample in enumerate(samples):
        ids = batch["input_ids"][r, : int(batch["attention_mask"][r].sum())].tolist()
        text = batch["handoff_ids"][r, : int(batch["handoff_mask"][r].sum())].tolist()
        n = int(suffix[r])
        assert ids[-n:] == text[-n:] and tok.image_id not in ids[-n:]  # the same tokens follow
        assert f"scene : {caption(sample.scene)} ." in tok.decode(text)
    # the extra term is positive and trains the connector only; the LLM (the teacher) stays frozen
    loss = s(batch)
    base = _stage(0.0)
    base.load_state_dict(s.state_dict())
    plain = base({k: v for k, v in batch.items() if not k.startswith("handoff")})
    assert loss.item() > plain.item()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.vlm.connector.parameters())
    assert all(p.grad is None for p in s.vlm.llm.parameters())


def test_settings_the_loss_cannot_use_are_one_line_errors():
    with pytest.raises(ConfigError, match="not lm"):
        build_config("lm", quick=True, overrides={"handoff_weight": 1.0})
    with pytest.raises(ConfigError, match="LLaVA JSON does not"):
        build_config(
            "instruct", quick=True, overrides={"handoff_weight": 1.0, "llava_data": "a.json", "image_folder": "i"}
        )
    tuned = build_config("instruct", quick=True, overrides={"handoff_weight": 1.0, "model.freeze_llm": False})
    with pytest.raises(ConfigError, match="must stay frozen"):
        build_stage(tuned, scene_tokenizer()).set_trainable(["vision", "llm"])
    cfg = build_config("instruct", quick=True, overrides={"handoff_weight": 1.0})
    # off, the loss leaves a run's identity (its fingerprint) as it was before the setting existed
    assert "handoff_weight" not in build_config("instruct", quick=True).identity()
    assert cfg.identity()["handoff_weight"] == 1.0
