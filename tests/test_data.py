"""Scene generator, task answers, tokenizer, collator and the LLaVA-format loader."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lab.config import ConfigError
from lab.data import (
    HELD_IN,
    IGNORE,
    Collator,
    LlavaJSON,
    SceneConfig,
    SceneDataConfig,
    SceneTasks,
    WordTokenizer,
    caption,
    render,
    sample_scene,
    scene_tokenizer,
    slot_recall,
)
from lab.data.scenes import COLORS
from lab.data.tasks import make_task


def test_samples_are_a_function_of_split_and_index():
    train = SceneTasks(SceneDataConfig(), "train")
    again = SceneTasks(SceneDataConfig(), "train")
    val = SceneTasks(SceneDataConfig(), "val")
    for i in (0, 7, 1234):
        assert np.array_equal(train[i].image, again[i].image) and train[i].turns == again[i].turns
    same = sum(np.array_equal(train[i].image, val[i].image) for i in range(50))
    assert same == 0


def test_rendered_object_has_its_color_at_its_cell_center():
    cfg = SceneConfig(image_size=48, jitter=0.0, max_objects=4)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng, cfg)
        img = render(scene, cfg, rng)
        for o in scene.objects:
            y, x = int((o.row + 0.5) * 16), int((o.col + 0.5) * 16)
            assert tuple(img[y, x]) == COLORS[o.color], (o, img[y, x])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(["color", "size", "position", "count", "exists", "relation"]))
def test_answers_follow_from_the_scene(seed, family):
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, SceneConfig(min_objects=2, max_objects=4))
    question, answer = make_task(scene, family, rng)
    words = question.split()
    named = [o for o in scene.objects if o.shape in words]
    if family in ("color", "size", "position"):
        assert len(named) == 1
        assert answer == {"color": named[0].color, "size": named[0].size, "position": named[0].cell}[family]
    elif family == "count":
        assert answer == ["zero", "one", "two", "three", "four"][len(scene.objects)]
    elif family == "exists":
        color, shape = words[-3], words[-2]
        present = any(o.color == color and o.shape == shape for o in scene.objects)
        assert answer == ("yes" if present else "no")
    else:
        a, b = sorted(named, key=lambda o: question.index(o.shape))
        rel = "left of" if "left" in words else "right of" if "right" in words else words[-4]
        truth = {"left of": a.col < b.col, "right of": a.col > b.col, "above": a.row < b.row, "below": a.row > b.row}
        assert answer == ("yes" if truth[rel] else "no")


def test_exists_is_balanced_and_caption_slots():
    ds = SceneTasks(SceneDataConfig(families=["exists"]))
    yes = sum(ds[i].turns[-1][1] == "yes" for i in range(400))
    assert 150 < yes < 250
    scene = ds[3].scene
    assert slot_recall(scene, caption(scene)) == 1.0
    first = scene.objects[0]
    wrong = caption(scene).replace(
        f"{first.color} {first.shape}", f"{'red' if first.color != 'red' else 'blue'} {first.shape}", 1
    )
    assert slot_recall(scene, wrong) == pytest.approx(1 - 1 / (4 * len(scene.objects)))
    assert slot_recall(scene, "") == 0.0


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="empty"):
        SceneDataConfig(families=[])
    with pytest.raises(ConfigError, match="bogus"):
        SceneDataConfig(families=["bogus"])
    with pytest.raises(ConfigError, match="at least 2 objects"):
        SceneDataConfig(families=["relation"], scene=SceneConfig(max_objects=1))
    with pytest.raises(ConfigError, match="unknown config key"):
        SceneDataConfig.from_dict({"scenes": {}})


def test_tokenizer_round_trip(tmp_path):
    tok = scene_tokenizer()
    ids = tok.encode("<image> What color is the circle ?")
    assert ids[0] == tok.image_id and tok.unk_id not in ids
    assert tok.decode(ids) == "what color is the circle ?"
    assert tok.encode("zebra") == [tok.unk_id]
    tok.save(tmp_path)
    assert WordTokenizer.load(tmp_path) == tok


def test_collator_places_image_tokens_and_trains_only_answers():
    tok = scene_tokenizer()
    ds = SceneTasks(SceneDataConfig())
    samples = [ds[i] for i in range(4)]
    batch = Collator(tok, image_tokens=5, instruction=True)(samples)
    assert ((batch["input_ids"] == tok.image_id).sum(1) == 5).all()
    for row, s in enumerate(samples):
        labels = batch["labels"][row]
        answer = tok.encode(s.turns[-1][1]) + [tok.eos_id]
        assert labels[labels != IGNORE].tolist() == answer
    prompts = Collator(tok, 5)(samples, prompt_only=True)
    assert (prompts["attention_mask"][:, -1] == 1).all()  # left padded
    assert prompts["input_ids"][0, -2:].tolist() == tok.encode("assistant :")
    assert "instruction_ids" in batch and batch["pixel_values"].shape == (4, 3, 32, 32)


def test_collator_refuses_image_without_placeholder():
    tok = scene_tokenizer()
    s = SceneTasks(SceneDataConfig())[0]
    s.turns[0] = ("human", "what color is the circle ?")
    with pytest.raises(ValueError, match="exactly one <image>"):
        Collator(tok, 4)([s])


def make_llava_folder(root, n=4, bad=None):
    """A tiny LLaVA-format data set: JSON + PNG images. `bad` breaks it on purpose."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        color = list(COLORS)[i % len(COLORS)]
        Image.new("RGB", (20, 20), COLORS[color]).save(root / "images" / f"{i}.png")
        records.append(
            {
                "id": str(i),
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat color is the image?"},
                    {"from": "gpt", "value": color},
                    {"from": "human", "value": "Is it a photo?"},
                    {"from": "gpt", "value": "no"},
                ],
            }
        )
    if bad == "missing":
        records[1]["image"] = "nope.png"
    if bad == "no_image_token":
        records[2]["conversations"][0]["value"] = "What color is the image?"
    if bad == "empty":
        records = []
    if bad == "text_only":
        del records[1]["image"]
        records[1]["conversations"][0]["value"] = "What color is red?"
    if bad == "broken_image":
        (root / "images" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    if bad == "not_alternating":
        records[0]["conversations"].insert(1, {"from": "human", "value": "and?"})
        records[2]["conversations"][1]["from"] = "bot"
    (root / "data.json").write_text(json.dumps(records))
    return root / "data.json", root / "images"


def test_llava_loader_and_multi_turn_labels(tmp_path):
    path, images = make_llava_folder(tmp_path)
    ds = LlavaJSON(path, images, image_size=32)
    s = ds[0]
    assert s.image.shape == (32, 32, 3) and len(s.turns) == 4
    tok = WordTokenizer.fit(t for r in json.loads(path.read_text()) for c in r["conversations"] for t in [c["value"]])
    batch = Collator(tok, 3)([s])
    labels = batch["labels"][0]
    trained = labels[labels != IGNORE].tolist()
    assert trained == tok.encode("red") + [tok.eos_id] + tok.encode("no") + [tok.eos_id]


@pytest.mark.parametrize(
    "bad,match",
    [
        ("missing", "nope.png"),
        ("no_image_token", "record 2"),
        ("empty", "no records"),
        ("broken_image", "record 3: image .*3.png does not open"),
        ("text_only", "record 1: no 'image', among records with images"),
        ("not_alternating", "2 of 4 records are unusable.*record 0: turns must alternate.*record 2"),
    ],
)
def test_llava_loader_errors(tmp_path, bad, match):
    path, images = make_llava_folder(tmp_path, bad=bad)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        LlavaJSON(path, images, image_size=32)


def test_llava_system_turn_is_context_not_a_target(tmp_path):
    path, images = make_llava_folder(tmp_path, n=1)
    records = json.loads(path.read_text())
    records[0]["conversations"].insert(0, {"from": "system", "value": "answer in one word"})
    path.write_text(json.dumps(records))
    s = LlavaJSON(path, images, image_size=32)[0]
    words = [t for c in records[0]["conversations"] for t in [c["value"]]]
    tok = WordTokenizer.fit(words)
    b = Collator(tok, 3)([s])
    trained = b["labels"][0][b["labels"][0] != IGNORE].tolist()
    assert trained == tok.encode("red") + [tok.eos_id] + tok.encode("no") + [tok.eos_id]
    assert tok.encode("answer in one word") == b["input_ids"][0, 1:5].tolist()


def test_held_in_and_held_out_are_disjoint():
    from lab.data import HELD_OUT

    assert not set(HELD_IN) & set(HELD_OUT)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6))
def test_hard_negative_binds_the_same_words_wrongly(seed):
    from lab.data.tasks import hard_negative

    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, SceneConfig(min_objects=1, max_objects=4))
    neg, true = hard_negative(scene, rng), caption(scene)
    assert neg != true
    if len(scene.objects) > 1:  # a swap: the same words, bound to other objects
        assert sorted(neg.split()) == sorted(true.split())
    else:  # a lone object changes shape, nothing else
        assert [a == b for a, b in zip(neg.split(), true.split(), strict=True)].count(False) == 1


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6))
def test_cell_phrases_name_each_cell_once(seed):
    from lab.data.scenes import CELLS
    from lab.data.tasks import all_cell_phrases, cell_phrases

    scene = sample_scene(np.random.default_rng(seed), SceneConfig(min_objects=1, max_objects=4))
    phrases = cell_phrases(scene)
    assert [p.split(" at ")[1] for p in phrases] == list(CELLS)
    assert sum(not p.startswith("no objects") for p in phrases) == len(scene.objects)
    assert set(phrases) <= set(all_cell_phrases()) and len(set(all_cell_phrases())) == 9 * 49


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(["phrase", "words"]))
def test_dense_targets_point_at_each_cells_own_words(seed, kind):
    from lab.data.tasks import cell_phrases, cell_words, dense_candidates, dense_target

    scene = sample_scene(np.random.default_rng(seed), SceneConfig(min_objects=1, max_objects=4))
    phrases, groups = dense_candidates(kind)
    target = dense_target(scene, kind)
    want = [[p] for p in cell_phrases(scene)] if kind == "phrase" else [list(w) for w in cell_words(scene)]
    assert [[phrases[i] for i in row] for row in target] == want
    for row in target:  # each answer lies in its own group
        assert all(lo <= i < hi for i, (lo, hi) in zip(row, groups, strict=True))


@pytest.mark.parametrize("family", ["exists", "relation", "compare_count"])
def test_yes_no_families_are_balanced(family):
    """A family answered "no" two times in three would let a model score 0.67 without looking."""
    rng = np.random.default_rng(0)
    answers = [
        make_task(sample_scene(rng, SceneConfig(min_objects=2, max_objects=4)), family, rng)[1] for _ in range(2000)
    ]
    assert abs(answers.count("yes") / len(answers) - 0.5) < 0.04


def test_chance_levels_follow_from_each_familys_answers():
    """Computed from the declared answers: the values once typed per family."""
    from ablations.evaluate import chance
    from lab.data.scenes import CELLS, SIZES

    got = chance(SceneDataConfig())
    assert got == {
        "color": 1 / len(COLORS),
        "size": 1 / len(SIZES),
        "count": 1 / 3,  # 1-3 objects
        "exists": 1 / 2,
        "position": 1 / len(CELLS),
        "relation": 1 / 2,
        "compare_count": 1 / 2,
    }


def test_a_makers_undeclared_answer_or_slot_word_is_an_error_not_unk(monkeypatch):
    import dataclasses

    from lab.data import tasks

    rng = np.random.default_rng(0)
    scene = SceneTasks(SceneDataConfig(), "train")[0].scene
    odd = dataclasses.replace(tasks.FAMILY["color"], maker=lambda s, r: ({"shape": "circle"}, "nothing"))
    monkeypatch.setitem(tasks.FAMILY, "color", odd)
    with pytest.raises(ValueError, match="answered 'nothing', which is not among its declared answers"):
        make_task(scene, "color", rng)
    odd = dataclasses.replace(tasks.FAMILY["color"], maker=lambda s, r: ({"shape": "hexagon"}, "red"))
    monkeypatch.setitem(tasks.FAMILY, "color", odd)
    tasks._words_of.cache_clear()
    with pytest.raises(ValueError, match=r"add \['hexagon'\] to its words"):
        make_task(scene, "color", rng)
    tasks._words_of.cache_clear()


def test_new_words_are_appended_and_an_older_tokenizer_is_a_prefix(monkeypatch, tmp_path):
    """A family's new words come after the existing ones, so an --init run whose tokenizer predates
    them still loads; a tokenizer that is not a prefix is refused."""
    import dataclasses

    from lab.data import WordTokenizer, scene_tokenizer, tasks
    from lab.train import build_config
    from lab.train.trainer import RunError, run_tokenizer

    old = scene_tokenizer()
    assert old.vocab[5 : 5 + len(tasks.BASE_WORDS)] == list(tasks.BASE_WORDS)
    extra = dataclasses.replace(tasks.FAMILY["exists"], templates=("is a zebra here ?",), answers=lambda c: ("maybe",))
    monkeypatch.setitem(tasks.FAMILY, "zebra", extra)
    new = scene_tokenizer()
    assert new.vocab[: len(old)] == old.vocab and new.vocab[len(old) :] == ["here", "maybe", "zebra"]
    old.save(tmp_path)
    assert run_tokenizer(build_config("lm"), [tmp_path]) == new
    WordTokenizer(["zebra", *tasks.BASE_WORDS]).save(tmp_path)
    with pytest.raises(RunError, match="not a prefix"):
        run_tokenizer(build_config("lm"), [tmp_path])
