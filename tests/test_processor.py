"""Real checkpoints end to end: an image file and a question through the checkpoint's own processor.

For LLaVA-1.5, BLIP-2 (OPT), InstructBLIP (Llama) and InstructBLIP (Flan-T5) folders with random
weights and real processors (`tests/real_folders.py`), and a real photograph: lab's processor gives
transformers' pixel_values (to 1e-6), input_ids and Q-Former ids, and lab's greedy text equals
transformers' processor + generate. A control shows that the old preprocessing (a square resize to
[-1, 1], the prompt as typed) would be caught."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import transformers as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import lab
from tests import real_folders as R

QUESTION = "What is the person in the picture wearing?"
NEW = 8  # greedy tokens compared


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tok, bert = R.tokenizers()
    root = tmp_path_factory.mktemp("real")
    return {f: R.build(f, root / f, tok, bert) for f in R.FAMILIES}


def theirs(folder, family, image, question=QUESTION):
    """transformers' own path: AutoProcessor (its chat template where the checkpoint has one)."""
    proc = tf.AutoProcessor.from_pretrained(str(folder))
    text = question
    if family == "llava":
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = proc.apply_chat_template(conv, add_generation_prompt=True)
    return proc, proc(images=image, text=text, return_tensors="pt")


def hf_model(folder, family):
    cls = {
        "llava": tf.LlavaForConditionalGeneration,
        "blip2_opt": tf.Blip2ForConditionalGeneration,
    }.get(family, tf.InstructBlipForConditionalGeneration)
    return cls.from_pretrained(str(folder)).eval()


@pytest.mark.parametrize("family", R.FAMILIES)
def test_pixels_and_ids_equal_the_processors(folders, family):
    image = Image.open(R.photo())
    _, want = theirs(folders[family], family, image)
    got = lab.load_processor(folders[family])(images=image, text=QUESTION)
    assert got["pixel_values"].shape == want["pixel_values"].shape
    torch.testing.assert_close(got["pixel_values"], want["pixel_values"], atol=1e-6, rtol=0)
    assert torch.equal(got["input_ids"], want["input_ids"])
    if family.startswith("instructblip"):
        assert torch.equal(got["instruction_ids"], want["qformer_input_ids"])
        assert torch.equal(got["instruction_mask"], want["qformer_attention_mask"])
    if family == "llava":  # the chat template was applied and the placeholders expanded
        model = lab.load_pretrained(folders[family])
        assert (got["input_ids"] == model.cfg.image_token_id).sum() == model.cfg.image_tokens == 576
        assert got["input_ids"].shape[1] > model.cfg.image_tokens + len(QUESTION.split())


@pytest.mark.parametrize("family", R.FAMILIES)
def test_greedy_text_from_an_image_file_equals_transformers(folders, family):
    image = Image.open(R.photo())
    proc, inputs = theirs(folders[family], family, image)
    hf = hf_model(folders[family], family)
    with torch.no_grad():
        want = hf.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    model = lab.load_pretrained(folders[family])
    processor = lab.load_processor(folders[family])
    got = model.generate(**processor(images=image, text=QUESTION), max_new_tokens=NEW, do_sample=False)
    start = 0 if family == "instructblip_t5" else inputs["input_ids"].shape[1]
    # transformers' T5 output starts at the decoder start token, as lab's does
    text = proc.batch_decode(want[:, start:], skip_special_tokens=True)
    assert processor.decode(got[0, start:]) == text[0]
    assert torch.equal(got[:, start:], want[:, start:])


def test_a_preprocessing_error_would_be_caught(folders):
    """Control: lab's old path (square resize, x / 127.5 - 1, the prompt as typed) changes transformers'
    own logits far beyond the tolerance the tests above hold lab to."""
    from lab.data import pixels

    folder, image = folders["llava"], Image.open(R.photo())
    proc, inputs = theirs(folder, "llava", image)
    hf = hf_model(folder, "llava")
    old = pixels([np.asarray(image.convert("RGB").resize((336, 336), Image.BICUBIC))])
    assert (old - inputs["pixel_values"]).abs().max() > 0.1
    with torch.no_grad():
        right = hf(**inputs).logits[:, -1]
        wrong = hf(**{**inputs, "pixel_values": old}).logits[:, -1]
    assert ((wrong - right).norm() / right.norm()).item() > 1e-3
    plain = lab.load_processor(folder)(images=image, text=QUESTION, verbatim=True)["input_ids"]
    assert not torch.equal(plain, inputs["input_ids"])  # no template: another prompt


def test_lab_generate_answers_from_a_photo_as_transformers_does(folders, capsys):
    from lab.cli import main

    family, folder = "llava", folders["llava"]
    image = Image.open(R.photo())
    proc, inputs = theirs(folder, family, image)
    with torch.no_grad():
        want = hf_model(folder, family).generate(**inputs, max_new_tokens=NEW, do_sample=False)
    text = proc.batch_decode(want[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    args = ["generate", "--checkpoint", str(folder), "--image", str(R.photo()), "--prompt", QUESTION]
    assert main([*args, "--max-new-tokens", str(NEW)]) == 0
    assert capsys.readouterr().out.rstrip("\n") == text


def test_lab_chat_keeps_the_conversation_in_the_checkpoints_template(folders):
    """A scripted two-turn chat through a subprocess: each reply streams, and the second is the reply to
    the whole conversation (first question, first reply, second question) in LLaVA-1.5's template."""
    import subprocess
    import sys

    from lab.eval import replies

    folder, q1, q2 = folders["llava"], "What is this?", "And the colour?"
    cmd = [sys.executable, "-m", "lab.cli", "chat", "--checkpoint", str(folder), "--image", str(R.photo())]
    run = subprocess.run([*cmd, "--max-new-tokens", "6"], input=f"{q1}\n{q2}\n\n", capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    said = [line.split("ASSISTANT: ", 1)[1] for line in run.stdout.splitlines() if "ASSISTANT: " in line]
    model, processor, image = lab.load_pretrained(folder), lab.load_processor(folder), Image.open(R.photo())
    first = replies(model, processor, processor(images=image, text=q1), 6)[0]
    turns = [("user", q1), ("assistant", first), ("user", q2)]
    second = replies(model, processor, processor(images=image, conversations=[turns]), 6)[0]
    assert [s.strip() for s in said] == [first, second] and first
    prompt = processor.prompt(turns)
    assert prompt.startswith(f"USER: <image>\n{q1} ASSISTANT: {first}") and prompt.endswith(f"USER: {q2} ASSISTANT:")


def test_lab_eval_on_llava_json_goes_through_the_processor(folders, tmp_path):
    """A record whose answer is transformers' reply (processor + generate) scores 1.0: lab eval read the
    image and the prompt as transformers' processor does."""
    import json
    import shutil

    from lab.eval import main as eval_main

    folder, image = folders["llava"], Image.open(R.photo())
    proc, inputs = theirs(folder, "llava", image)
    with torch.no_grad():
        want = hf_model(folder, "llava").generate(**inputs, max_new_tokens=32, do_sample=False)
    reply = proc.batch_decode(want[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    shutil.copy(R.photo(), tmp_path / "photo.jpg")
    turns = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": reply}]
    (tmp_path / "data.json").write_text(json.dumps([{"image": "photo.jpg", "conversations": turns}]))
    out = tmp_path / "eval.json"
    args = ["--checkpoint", str(folder), "--data", str(tmp_path / "data.json"), "--image-folder", str(tmp_path)]
    assert eval_main([*args, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["exact_match"] == 1.0


def test_a_scene_trained_folder_states_and_keeps_its_preprocessing(stage0):
    """A run folder carries the image processor its training used; lab's processor, and transformers'
    own reading that file, give the training's pixels (x / 127.5 - 1), and the word template's ids."""
    from lab.data import Collator, SceneDataConfig, SceneTasks, load_tokenizer, pixels
    from lab.data.image_processor import FILE

    folder = stage0 / "vision"
    model, processor = lab.load_pretrained(folder), lab.load_processor(folder)
    sample = SceneTasks(SceneDataConfig(), "test")[0]
    question = sample.turns[0][1].replace("<image>", "").strip()
    batch = processor(images=Image.fromarray(sample.image), text=question)
    torch.testing.assert_close(batch["pixel_values"], pixels([sample.image]), atol=1e-6, rtol=0)
    theirs_pixels = tf.AutoImageProcessor.from_pretrained(str(folder))(sample.image, return_tensors="pt")
    torch.testing.assert_close(theirs_pixels["pixel_values"], batch["pixel_values"], atol=1e-6, rtol=0)
    tok = load_tokenizer(folder)
    collator = Collator(tok, model.cfg.image_tokens, instruction=processor.instruction)
    want = collator(
        [dataclasses.replace(sample, turns=[("human", f"<image> {question}"), ("gpt", "")])], prompt_only=True
    )
    assert torch.equal(batch["input_ids"], want["input_ids"])
    (folder / FILE).rename(folder / "moved.json")  # a folder written before run folders carried the file
    try:
        older = lab.load_processor(folder)(images=Image.fromarray(sample.image), text=question)
    finally:
        (folder / "moved.json").rename(folder / FILE)
    torch.testing.assert_close(older["pixel_values"], batch["pixel_values"], atol=0, rtol=0)


PROCESSORS = {
    "clip": lambda: tf.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
    "llava_pad": lambda: tf.LlavaImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True
    ),
    "blip": lambda: tf.BlipImageProcessor(size={"height": 224, "width": 224}),
    "siglip": lambda: tf.SiglipImageProcessor(size={"height": 224, "width": 224}),
}


@pytest.mark.parametrize("kind", PROCESSORS)
@settings(max_examples=6, deadline=None)
@given(h=st.integers(16, 700), w=st.integers(16, 700), seed=st.integers(0, 2**16))
def test_image_processor_matches_transformers_on_any_image(kind, h, w, seed):
    """lab's image processor from transformers' own config, on images of any shape (odd, tall, wide):
    pixel values equal to 1e-6."""
    from lab.data.image_processor import ImageProcessor

    theirs_ = PROCESSORS[kind]()
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    ours = ImageProcessor.from_dict(theirs_.to_dict())(image)
    torch.testing.assert_close(ours, theirs_(image, return_tensors="pt")["pixel_values"], atol=1e-6, rtol=0)


def test_image_processor_refuses_what_it_cannot_do():
    from lab.data.image_processor import ImageProcessor

    with pytest.raises(ValueError, match="image_processor_type 'LlavaNextImageProcessor' is not supported"):
        ImageProcessor.from_dict({"image_processor_type": "LlavaNextImageProcessor"})
    with pytest.raises(ValueError, match=r"\['image_grid_pinpoints'\] change the pixels"):
        ImageProcessor.from_dict({"image_processor_type": "CLIPImageProcessor", "image_grid_pinpoints": [[336, 672]]})


def test_a_checkpoint_without_its_image_processor_is_refused_in_one_line(folders, tmp_path, capsys):
    import json
    import shutil

    from lab.cli import main

    folder = shutil.copytree(folders["llava"], tmp_path / "llava")
    cfg = json.loads((folder / "processor_config.json").read_text())
    del cfg["image_processor"]
    (folder / "processor_config.json").write_text(json.dumps(cfg))
    args = ["generate", "--checkpoint", str(folder), "--image", str(R.photo()), "--prompt", QUESTION]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot know how this checkpoint's images were prepared" in err
