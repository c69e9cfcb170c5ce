"""Trainer: every stage runs and trains only its parts, exact resume after SIGKILL, signals,
NaN detection, config errors, --init, LLaVA data, and torchrun with 2 processes."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers as tf

import lab
from lab.config import ConfigError
from lab.train import RunError, build_config, checkpoint, train, trainer
from tests.test_data import make_llava_folder

SMALL = {"batch_size": 8, "save_every": 2, "optim.warmup_steps": 2}
ROOT = Path(__file__).resolve().parents[1]


def cfg(stage, steps=4, **extra):
    return build_config(stage, quick=True, overrides={**SMALL, "max_steps": steps, **extra})


def losses(folder):
    return [json.loads(line)["loss"] for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lab.train", "--no-progress", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        **kw,
    )


def test_every_stage_trains_only_its_components(stage0, tmp_path):
    vision = lab.load_pretrained(stage0 / "vision")
    lm = lab.load_pretrained(stage0 / "lm")
    runs = {
        "stage1": cfg("stage1", 3),
        "stage2": cfg("stage2", 3),
        "instruct": cfg("instruct", 3),
    }
    for name, c in runs.items():
        summary = train(c, tmp_path / name, init=[stage0 / "vision", stage0 / "lm"], progress=False)
        assert summary["components"] == ["connector", "llm", "vision"]
        assert len(losses(tmp_path / name)) == 3 and all(map(math.isfinite, losses(tmp_path / name)))
        model = lab.load_pretrained(tmp_path / name)
        for k, v in model.state_dict().items():  # frozen parts are exactly the stage-0 weights
            if k.startswith("vision."):
                assert torch.equal(v, vision.state_dict()[k]), k
            if k.startswith("llm."):
                assert torch.equal(v, lm.state_dict()[k]), k
    assert (tmp_path / "stage1" / "heads" / "model.safetensors").exists()
    # stage 1's Q-Former and ITC/ITM heads, as transformers' Blip2ForImageTextRetrieval
    run = lab.load_pretrained(tmp_path / "stage1")
    ours = lab.load_pretrained(tmp_path / "stage1" / "retrieval")
    theirs = tf.Blip2ForImageTextRetrieval.from_pretrained(tmp_path / "stage1" / "retrieval").eval()
    size, vocab = run.cfg.vision.image_size, run.cfg.connector.qformer.vocab_size
    px, ids = torch.randn(2, 3, size, size), torch.randint(1, vocab, (2, 6))
    with torch.no_grad():
        q = run.connector.qformer  # stage 1's query pass: the queries alone over the image
        plain = q.encode(q.query_tokens.expand(2, -1, -1), run.vision(px), q.cfg.num_query_tokens)
        torch.testing.assert_close(ours.get_qformer_features(px), plain)
        for itm in (False, True):
            mask = torch.ones_like(ids)
            kw = dict(use_image_text_matching_head=itm)
            want = theirs(pixel_values=px, input_ids=ids, attention_mask=mask, **kw).logits_per_image
            torch.testing.assert_close(ours(px, ids, mask, **kw).logits_per_image, want)


@pytest.mark.parametrize(
    "extra",
    [
        {"clip.hard_negatives": 2},
        {"clip.token_wise": True},
        {"clip.dense_weight": 1.0},
        {"clip.dense_weight": 1.0, "clip.dense_targets": "words"},
    ],
    ids=str,
)
def test_stage0_vision_objectives_train(tmp_path, extra):
    summary = train(
        cfg(
            "vision",
            2,
            **{"data.scene.image_size": 48, "model.vision.image_size": 48, "model.vision.patch_size": 8, **extra},
        ),
        tmp_path,
        progress=False,
    )
    losses_seen = losses(tmp_path)
    assert summary["steps"] == 2 and all(math.isfinite(x) for x in losses_seen)


def test_lm_loss_decreases(tmp_path):
    train(cfg("lm", 30), tmp_path, progress=False)
    curve = losses(tmp_path)
    assert sum(curve[-5:]) / 5 < 0.6 * sum(curve[:5]) / 5


def test_resume_after_sigkill_is_exact(tmp_path):
    args = ["--stage", "instruct", "--quick", "--max-steps", "10", "--save-every", "3", "batch_size=8"]
    full = cli(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.train", "--no-progress", *args, "--out", str(tmp_path / "cut")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    seen = len(metrics.read_text().splitlines())
    assert 5 <= seen < 10, "the run should have been killed mid-way"
    resumed = cli(*args, "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 11))
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_sigterm_saves_a_checkpoint(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab.train",
            "--no-progress",
            "--stage",
            "lm",
            "--quick",
            "--max-steps",
            "500",
            "--save-every",
            "1000",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted at step" in err
    step = int((out / "checkpoints" / "latest").read_text().split("-")[1])
    assert step == len(metrics.read_text().splitlines()) >= 3


def test_nan_loss_names_the_step(tmp_path, monkeypatch):
    from lab.train import stages

    real = stages.InstructStage.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        out = real(self, batch)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(stages.InstructStage, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="at step 3"):
        train(cfg("instruct", 5), tmp_path, progress=False)


def test_bad_runs_are_refused(tmp_path):
    train(cfg("lm", 2), tmp_path / "a", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        train(cfg("lm", 2), tmp_path / "a", progress=False)
    with pytest.raises(RunError, match="optim.lr"):
        train(cfg("lm", 2, **{"optim.lr": 0.5}), tmp_path / "a", resume=True, progress=False)
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config("lm", overrides={"optim.learning_rate": 1.0})
    r = cli("--stage", "lm", "--out", str(tmp_path / "c"), "model.llm.layers=3")
    assert r.returncode == 2 and "unknown config key model.llm.layers" in r.stderr and "num_layers" in r.stderr
    with pytest.raises(ConfigError, match=r"^unknown config key model.conector \(did you mean model.connector\?\)"):
        build_config("instruct", overrides={"model.conector": "mlp"})
    with pytest.raises(ConfigError, match=r"model.connector.qformer.num_queries \(did you mean .*num_query_tokens"):
        build_config("instruct", overrides={"model.connector.qformer.num_queries": 4})
    with pytest.raises(ConfigError, match="empty"):
        build_config("instruct", overrides={"data.families": []})
    with pytest.raises(ConfigError, match="family=t5: lab's training stages build decoder-only batches"):
        train(build_config("instruct", overrides={"model.llm.family": "t5"}), tmp_path / "t5", progress=False)


class _Payload:
    """Unpickling this writes a file: the stand-in for a run folder that runs code on resume."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_resume_never_unpickles(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    train(cfg("lm", 2), run, progress=False)
    step = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert {"trainer.json", "trainer.safetensors"} <= {p.name for p in step.iterdir()}
    assert "trainer.pt" not in {p.name for p in step.iterdir()}
    for name in ("trainer.json", "trainer.safetensors"):
        (step / name).unlink()
    torch.save({"step": _Payload(marker)}, step / "trainer.pt")
    manifest = json.loads((step / "manifest.json").read_text())  # a forger writes a matching manifest
    manifest = {k: v for k, v in manifest.items() if not k.startswith("trainer.")}
    manifest["trainer.pt"] = checkpoint._digest(step / "trainer.pt")
    (step / "manifest.json").write_text(json.dumps(manifest))
    r = cli(
        "--stage",
        "lm",
        "--quick",
        "--max-steps",
        "2",
        "--save-every",
        "2",
        "batch_size=8",
        "optim.warmup_steps=2",
        "--out",
        str(run),
        "--resume",
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "pickle" in r.stderr.strip().splitlines()[-1]
    assert not marker.exists()


def test_damaged_checkpoints_are_skipped_and_latest_stays_inside(tmp_path, caplog):
    run = tmp_path / "run"
    train(cfg("lm", 4), run, progress=False)  # steps 2 and 4 kept
    ck = run / "checkpoints"
    newest = ck / "step-000004"
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped byte
    (newest / "model.safetensors").write_bytes(bytes(data))
    (ck / "latest").write_text("../../elsewhere")
    with caplog.at_level("WARNING", logger="lab"):
        assert checkpoint.latest_checkpoint(run) == ck / "step-000002"
    assert "step-000004 is damaged" in caplog.text and "not a step folder of this run" in caplog.text
    train(cfg("lm", 4), run, resume=True, progress=False)  # continues from step 2
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    for step in ck.glob("step-*"):
        (step / "manifest.json").unlink()
    with pytest.raises(RunError, match="no intact checkpoint"):
        train(cfg("lm", 4), run, resume=True, progress=False)


def test_resume_starts_runs_that_have_no_checkpoint_yet(tmp_path):
    train(cfg("lm", 2), tmp_path / "new", resume=True, progress=False)  # no folder: a fresh run
    assert checkpoint.latest_checkpoint(tmp_path / "new") is not None
    run = tmp_path / "early"
    train(cfg("lm", 2), run, progress=False)
    shutil.rmtree(run / "checkpoints")  # as if killed before its first save
    with pytest.raises(RunError, match="already holds a run"):
        train(cfg("lm", 2), run, progress=False)
    train(cfg("lm", 2), run, resume=True, progress=False)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_an_older_run_folder_still_resumes(tmp_path):
    """A config saved before a key was renamed (connector.impl -> mlp_impl) or added (data.truncate)
    still matches: resume reads it as this version would."""
    run = tmp_path / "old"
    c = cfg("instruct", 2)
    train(c, run, progress=False)
    saved = json.loads((run / "train_config.json").read_text())
    saved["model"]["connector"]["impl"] = saved["model"]["connector"].pop("mlp_impl")
    del saved["data"]["truncate"]
    (run / "train_config.json").write_text(json.dumps(saved))
    assert train(c, run, resume=True, progress=False)["steps"] == 2
    saved["optim"]["lr"] = 0.5  # a real difference is still refused
    (run / "train_config.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match="optim.lr"):
        train(c, run, resume=True, progress=False)


def test_one_writer_per_run_folder(tmp_path):
    held = trainer._lock(tmp_path / "run")  # another open file description holds the lock
    try:
        with pytest.raises(RunError, match="another process is writing"):
            train(cfg("lm", 2), tmp_path / "run", progress=False)
    finally:
        held.close()
    train(cfg("lm", 2), tmp_path / "run", progress=False)  # released: the run goes ahead


def test_llava_data_trains_and_evaluates(tmp_path):
    path, images = make_llava_folder(tmp_path / "llava", n=4)
    out = tmp_path / "run"
    r = cli(
        "--stage",
        "instruct",
        "--quick",
        "--max-steps",
        "2",
        "batch_size=4",
        "--data",
        str(path),
        "--image-folder",
        str(images),
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    ev = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab.eval",
            "--checkpoint",
            str(out),
            "--data",
            str(path),
            "--image-folder",
            str(images),
            "--out",
            str(tmp_path / "eval.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ev.returncode == 0, ev.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= result["exact_match"] <= 1.0 and result["n"] == 4
    broken, images = make_llava_folder(tmp_path / "broken", bad="missing")
    r = cli(
        "--stage",
        "instruct",
        "--quick",
        "--data",
        str(broken),
        "--image-folder",
        str(images),
        "--out",
        str(tmp_path / "run2"),
    )
    assert r.returncode == 1 and "nope.png" in r.stderr


def test_scene_eval_reports_every_family(stage0, tmp_path):
    out = tmp_path / "eval.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab.eval",
            "--checkpoint",
            str(stage0 / "vision"),
            "--out",
            str(out),
            "--per-family",
            "4",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert set(result["acc"]) == {
        "caption",
        "color",
        "size",
        "count",
        "exists",
        "position",
        "relation",
        "compare_count",
    }
    assert 0 <= result["held_in_acc"] <= 1 and 0 <= result["held_out_acc"] <= 1
    assert result["cost"]["llm_tokens_per_image"] == 8


def test_torchrun_two_processes_match_one(tmp_path):
    args = ["--stage", "instruct", "--quick", "--max-steps", "3", "batch_size=8", "--no-progress"]
    one = cli(*args[:-1], "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "lab.train",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-4)


def test_lab_command_generate_and_errors(stage0, tmp_path, capsys):
    from PIL import Image

    from lab.cli import main
    from lab.data import SceneDataConfig, SceneTasks

    Image.fromarray(SceneTasks(SceneDataConfig())[0].image).save(tmp_path / "scene.png")
    rc = main(
        [
            "generate",
            "--checkpoint",
            str(stage0 / "vision"),
            "--image",
            str(tmp_path / "scene.png"),
            "--prompt",
            "what color is the circle ?",
            "--max-new-tokens",
            "3",
        ]
    )
    assert rc == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(stage0 / "vision"), "--image", "nope.png", "--prompt", "x"]) == 1
    assert main(["ablate", "bogus"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["train", "--stage", "lm", "--out", str(tmp_path / "r"), "--model.connector", "bogus"]) == 2
    assert "allowed" in capsys.readouterr().err


def test_one_qformer_default_whatever_the_route(tmp_path):
    """`--model.connector qformer` after a linear connector (from the CLI or from a YAML file) gives
    QFormerConfig's defaults, the same Q-Former ConnectorConfig fills in on its own."""
    from lab.models import ConnectorConfig, QFormerConfig

    cli = build_config("instruct", overrides={"model.connector": "linear", "model.connector.kind": "qformer"})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model:\n  connector:\n    kind: linear\n")
    from_yaml = build_config("instruct", config_file=str(yaml_file), overrides={"model.connector": "qformer"})
    alone = ConnectorConfig(kind="qformer").qformer
    assert cli.model.connector.qformer == from_yaml.model.connector.qformer == alone == QFormerConfig()
    preset = build_config("instruct").model.connector.qformer
    assert preset == QFormerConfig(instruction_aware=True)  # the preset differs by that one choice only


def test_compile_flag_compiles_vision_connector_and_llm(monkeypatch, tmp_path):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    train(cfg("instruct", 2, compile=True, save_every=1), tmp_path / "c", progress=False)
    assert len(compiled) == 3 and isinstance(compiled[2], lab.models.LanguageModel)
    # whether a run compiles may change on resume, like how often it saves
    train(cfg("instruct", 2, compile=False), tmp_path / "c", resume=True, progress=False)
