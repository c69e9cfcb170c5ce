"""What lab refuses: each bad input gets one `error: ...` line naming the problem, a non-zero
exit code, and leaves nothing behind (no run folder created, an existing run untouched)."""

from __future__ import annotations

import json
import shutil

import pytest

from lab.cli import main

QUICK = ["train", "--stage", "lm", "--quick", "--max-steps", "2", "--save-every", "2", "--no-progress"]
SMALL = ["batch_size=8", "optim.warmup_steps=1"]


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny LM run: its folder is the reference for 'nothing was lost'."""
    out = tmp_path_factory.mktemp("runs") / "lm"
    assert main([*QUICK, "--out", str(out), *SMALL]) == 0
    return out


@pytest.mark.parametrize(
    "yaml_text,extra,message",
    [
        ("model: 3\n", [], "config section model must be a mapping of keys, got 3"),
        ("model: [\n", [], "is not valid YAML at line 2"),
        (None, ["--config", "/nonexistent/c.yaml"], "config file /nonexistent/c.yaml does not exist"),
        (None, ["optim.warmup_steps=-1"], "optim.warmup_steps=-1 is out of range; it must be >= 0"),
        (None, ["optim.lr=0"], "optim.lr=0.0 is out of range; it must be > 0"),
        (None, ["model.llm.num_heads=0"], "llm.num_heads=0 is out of range; it must be >= 1"),
        (None, ["model.vision.num_heads=3"], "vision.hidden_size 64 not divisible by num_heads 3"),
        (None, ["optim.min_lr_ratio=2"], "optim.min_lr_ratio=2.0 is out of range; it must be >= 0 and <= 1"),
        (None, ["model.connector.qformer.hidden_dropout=1.0"], "qformer.hidden_dropout=1.0 is out of range"),
        (None, ["optim.learning_rate=1"], "unknown config key"),
        (None, ["data.families=[nope]"], "data.families entry='nope' is not allowed"),
        (None, ["batch_size=7", "grad_accum=2"], "batch_size 7 must be a positive multiple of grad_accum 2"),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, capsys, yaml_text, extra, message):
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        extra = ["--config", str(tmp_path / "c.yaml")]
    out = tmp_path / "run"
    code, line = run(capsys, *QUICK, "--out", str(out), *SMALL, *extra)
    assert code == 2 and line.startswith("error: ") and message in line, line
    assert not out.exists()


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate_weights", "model.safetensors is not a readable safetensors file"),
        ("garbage_config", "config.json is not a readable transformers config"),
        ("no_weights", "no safetensors weights in"),
    ],
)
def test_damaged_checkpoint_folder_is_named(finished, tmp_path, capsys, damage, message):
    ck = _copy(finished, tmp_path / "ck")
    if damage == "truncate_weights":
        (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:1000])
    elif damage == "garbage_config":
        (ck / "config.json").write_text("garbage{")
    else:
        (ck / "model.safetensors").unlink()
    code, line = run(capsys, "eval", "--checkpoint", str(ck), "--out", str(tmp_path / "e.json"))
    assert code == 1 and message in line, line
    assert not (tmp_path / "e.json").exists()


def test_missing_checkpoint_and_image_are_named(tmp_path, capsys):
    code, line = run(capsys, "eval", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "e.json"))
    assert code == 1 and "does not exist" in line
    code, line = run(capsys, "generate", "--checkpoint", str(tmp_path), "--image", "nope.png", "--prompt", "x")
    assert code == 1 and "--image nope.png does not exist" in line


def test_rerun_into_a_finished_run_changes_nothing(finished, capsys):
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file() and p.name != ".lock"}
    code, line = run(capsys, *QUICK, "--out", str(finished), *SMALL)
    assert code == 1 and "already holds a run" in line
    code, line = run(capsys, *QUICK, "--out", str(finished), *SMALL, "optim.lr=0.5", "--resume")
    assert code == 1 and "trained with another config" in line and "optim.lr" in line
    after = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_nan_loss_is_one_line(tmp_path, capsys, monkeypatch):
    from lab.train import stages

    monkeypatch.setattr(stages.LMStage, "forward", lambda self, batch: self.vlm.llm.embed.weight.sum() * float("nan"))
    code, line = run(capsys, *QUICK, "--out", str(tmp_path / "run"), *SMALL)
    assert code == 1 and line.startswith("error: ") and "step 1" in line, line


def test_lab_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DEBUG", "1")
    with pytest.raises(Exception, match="out of range"):
        main([*QUICK, "--out", str(tmp_path / "run"), "optim.lr=0"])


@pytest.mark.parametrize(
    "bad,message",
    [
        ("broken_image", "record 3: image"),
        ("missing", "record 1: image"),
        ("no_image_token", "record 2: an image but not exactly one <image>"),
        ("empty", "holds no records"),
        ("text_only", "record 1: no 'image', among records with images"),
        ("not_alternating", "2 of 4 records are unusable (record 0: turns must alternate"),
        ("not_json", "is not valid JSON (line 1, column 3: Expecting property name"),
        ("no_file", "LLaVA data file"),
    ],
)
def test_llava_data_problems_stop_the_run_before_step_1(tmp_path, capsys, bad, message):
    from tests.test_data import make_llava_folder

    path, images = make_llava_folder(tmp_path / "d", bad=None if bad in ("not_json", "no_file") else bad)
    if bad == "not_json":
        path.write_text("[{'image': 'single quotes'}]")
    if bad == "no_file":
        path.unlink()
    before = path.read_bytes() if path.exists() else None
    out = tmp_path / "run"
    code, line = run(
        capsys, "train", "--stage", "instruct", "--quick", "--max-steps", "2", "--no-progress",
        "--data", str(path), "--image-folder", str(images), "--out", str(out),
    )  # fmt: skip
    assert code == 1 and line.startswith("error: ") and message in line, line
    assert not any(p.name != ".lock" for p in out.rglob("*")), "nothing may be written"
    assert (path.read_bytes() if path.exists() else None) == before  # the data file is read, never rewritten


def _llava_with_long_records(root, before_image: bool):
    from tests.test_data import make_llava_folder

    path, images = make_llava_folder(root)
    records = json.loads(path.read_text())
    long = "what color is it " * 12  # 48 words: longer than 40 positions with the image's 8 tokens
    for i in (1, 2):
        records[i]["conversations"][0]["value"] = long + "<image>" if before_image else "<image>\n" + long
    path.write_text(json.dumps(records))
    return path, images


def _train_llava(capsys, path, images, out, *extra):
    return run(
        capsys, "train", "--stage", "instruct", "--quick", "--max-steps", "2", "--no-progress", "batch_size=4",
        "--data", str(path), "--image-folder", str(images), "--out", str(out), "model.llm.max_position_embeddings=40",
        *extra,
    )  # fmt: skip


def test_llava_records_longer_than_the_llm_are_named_before_step_1(tmp_path, capsys):
    path, images = _llava_with_long_records(tmp_path / "d", before_image=False)
    out = tmp_path / "run"
    code, line = _train_llava(capsys, path, images, out)
    assert code == 1 and "2 of 4 records are too long" in line, line
    assert "record 1: 73 tokens > the LLM's 40 positions" in line and "data.truncate=true" in line, line
    assert not any(p.name != ".lock" for p in out.rglob("*")), "nothing may be written"


def test_data_truncate_cuts_long_records_and_says_how_many(tmp_path, capsys, caplog):
    path, images = _llava_with_long_records(tmp_path / "d", before_image=False)
    with caplog.at_level("INFO", logger="lab"):
        code, line = _train_llava(capsys, path, images, tmp_path / "run", "data.truncate=true")
    assert code == 0, line
    assert "data.truncate: 2 of 4 records cut to 40 tokens" in caplog.text


def test_truncation_never_splits_the_image_placeholders(tmp_path, capsys):
    path, images = _llava_with_long_records(tmp_path / "d", before_image=True)
    code, line = _train_llava(capsys, path, images, tmp_path / "run", "data.truncate=true")
    assert code == 1 and "cutting to 40 would split the image's placeholders" in line, line
