"""The input pipeline at scale: a streamed JSON, cached image checks, DataLoader workers that do not
change which samples form a step, and an image that fails to decode in the loader."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lab.data import llava
from lab.data.llava import LlavaJSON, check_images, iter_json_array
from lab.train import build_config, train
from lab.train.trainer import RunError
from tests.test_data import make_llava_folder
from tests.test_train import SMALL, losses

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(items=st.lists(JSON, max_size=12), chunk=st.integers(1, 64), indent=st.sampled_from([None, 1]))
def test_the_streamed_json_reads_what_json_reads(tmp_path_factory, items, chunk, indent):
    path = tmp_path_factory.mktemp("j") / "a.json"
    path.write_text(json.dumps(items, indent=indent))
    assert list(iter_json_array(path, chunk=chunk)) == items


@pytest.mark.parametrize("text", ["[{'a': 1}]", '[{"a": 1},\n {"b": }]', '[{"a": 1}', '[{"a": 1}] x', '{"a": 1}'])
def test_bad_json_is_one_error_naming_where(tmp_path, text):
    path = tmp_path / "a.json"
    path.write_text(text)
    try:
        json.loads(text)
        want = None
    except json.JSONDecodeError as e:
        want = e
    with pytest.raises(ValueError) as got:
        list(iter_json_array(path, chunk=3))
    if want is not None and "Extra data" not in want.msg and '"a": 1}' != text[-7:]:
        assert f"line {want.lineno}, column {want.colno}" in str(got.value), (str(got.value), want)


def test_image_checks_are_cached_by_file_identity(tmp_path, monkeypatch):
    path, images = make_llava_folder(tmp_path, n=6)
    names = [f"{i}.png" for i in range(6)]
    calls = []
    real = llava._check
    monkeypatch.setattr(llava, "_check", lambda f, n, d: calls.append(list(n)) or real(f, n, d))
    assert check_images(images, names, workers=1, decode=True) == {}
    assert sorted(sum(calls, [])) == sorted(names)
    calls.clear()
    assert check_images(images, names, workers=1, decode=True) == {}  # a second run: nothing re-read
    assert calls == []
    (images / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image any more")  # changed: checked again
    bad = check_images(images, names, workers=1, decode=True)
    assert sum(calls, []) == ["2.png"] and list(bad) == ["2.png"] and "does not open" in bad["2.png"]


def _truncated(images, i):
    """A PNG whose header reads but whose pixels do not decode."""
    data = (images / f"{i}.png").read_bytes()
    (images / f"{i}.png").write_bytes(data[: len(data) // 2])


def _data(root, n):
    """`n` records of 64 px images, the last one truncated: its header reads, its pixels do not."""
    path, images = make_llava_folder(root, n=n)
    for i in range(n):
        Image.new("RGB", (64, 64), (i * 5 % 256, 0, 0)).save(images / f"{i}.png")
    _truncated(images, n - 1)
    return {**SMALL, "batch_size": 2, "save_every": 1, "llava_data": str(path), "image_folder": str(images)}


def test_an_image_that_fails_to_decode_in_the_loader_stops_with_a_checkpoint(tmp_path, monkeypatch):
    """At LLaVA scale the loader decodes (the estimate before step 1 decodes a sample of 16): the bad
    image stops the run with a checkpoint and names its record; with bad_images=skip the next record
    stands in and the run counts it."""
    monkeypatch.setattr(llava, "DECODE_BUDGET_S", 0.0)
    over = _data(tmp_path / "a", 20)
    with pytest.raises(
        RunError, match=r"record 19: image .*19\.png does not decode.*stopped at step \d+ with a checkpoint"
    ):
        train(
            build_config("instruct", quick=True, overrides={**over, "max_steps": 10}), tmp_path / "run", progress=False
        )
    assert list((tmp_path / "run" / "checkpoints").glob("step-*"))
    over = {**_data(tmp_path / "b", 20), "bad_images": "skip", "max_steps": 10}
    summary = train(build_config("instruct", quick=True, overrides=over), tmp_path / "skip", progress=False)
    assert summary["steps"] == 10 and summary["skipped_samples"] == 1  # one epoch: record 19 came up once
    over = {**over, "max_steps": 1}  # a second run: the cache knows it does not decode; left out before step 1
    summary = train(build_config("instruct", quick=True, overrides=over), tmp_path / "again", progress=False)
    assert summary["left_out_records"] == 1 and summary["skipped_samples"] == 0


def test_which_samples_form_a_step_does_not_depend_on_the_workers(tmp_path):
    """Losses with 0 and 2 loader workers are identical, and a run resumed with another count goes on
    exactly as an uninterrupted one."""
    base = {**SMALL, "max_steps": 6, "save_every": 3}
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        train(build_config("instruct", quick=True, overrides={**base, "data.workers": workers}), out, progress=False)
        runs[workers] = losses(out)
    assert runs[0] == runs[2] and len(runs[0]) == 6
    cut = tmp_path / "cut"
    train(build_config("instruct", quick=True, overrides={**base, "data.workers": 2}), cut, progress=False, stop_at=3)
    train(build_config("instruct", quick=True, overrides={**base, "data.workers": 0}), cut, resume=True, progress=False)
    assert losses(cut) == runs[0]


def test_llava_json_holds_records_compactly(tmp_path):
    path, images = make_llava_folder(tmp_path, n=4)
    ds = LlavaJSON(path, images, image_size=32)
    assert isinstance(ds.records.buf, bytes | bytearray) and len(ds.records.offsets) == 5
    assert ds[1].turns[1] == ("gpt", json.loads(path.read_text())[1]["conversations"][1]["value"])


def test_lab_check_decodes_a_data_set_ahead_of_time(tmp_path, capsys):
    from lab.cli import main

    path, images = make_llava_folder(tmp_path, n=6)
    assert main(["check", "--data", str(path), "--image-folder", str(images), "--workers", "2"]) == 0
    assert "6 records usable, every image decoded" in capsys.readouterr().out
    cache = llava.CheckCache(images)
    assert len(cache.entries) == 6 and all(e[3] for e in cache.entries.values())  # decoded, on record
    _truncated(images, 4)
    assert main(["check", "--data", str(path), "--image-folder", str(images)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "record 4: image" in err and "does not decode" in err


def test_a_length_check_left_to_the_loader_names_the_record(tmp_path, monkeypatch):
    """Where counting every record's tokens would hold up step 1, the loader meets the record that does
    not fit the LLM's positions, stops with a checkpoint and names it."""
    monkeypatch.setattr(llava, "LENGTH_BUDGET_S", 0.0)
    path, images = make_llava_folder(tmp_path / "d", n=8)
    records = json.loads(path.read_text())
    records[5]["conversations"][1]["value"] = " ".join(["red"] * 3000)
    path.write_text(json.dumps(records))
    over = {**SMALL, "batch_size": 2, "save_every": 1, "llava_data": str(path), "image_folder": str(images)}
    with pytest.raises(RunError, match=r"record 5: \d+ tokens > the LLM's \d+ positions; stopped at step \d+"):
        train(
            build_config("instruct", quick=True, overrides={**over, "max_steps": 4}), tmp_path / "run", progress=False
        )


def _worker_faults(collate):
    """`collate`, plus the worker's page-fault count so far (`faults`)."""
    import resource

    import torch

    def counted(samples):
        batch = collate(samples)
        return {**batch, "faults": torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)}

    return counted


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts as Linux reports them")
def test_loader_workers_reuse_their_pixel_buffers_and_kept_batches_stay_intact(tmp_path):
    """A worker writes each batch's pixels into one of its few shared buffers, in turn, and the training
    process copies them out as it takes the batch: after the first rounds a batch costs the worker
    almost no page faults (a fresh buffer would cost one per 4 KB page: 1,300 here), and batches kept
    across many steps still hold their own pixels, the same as without workers."""
    from benchmarks.data_loading import make_coco
    from lab.data import Collator, scene_tokenizer
    from lab.train.loader import pop_skipped, step_batches

    path, images = make_coco(tmp_path, 48)  # LLaVA-like turns (up to 900 tokens), 640x480 JPEGs: 3 batches
    ds = LlavaJSON(path, images, image_size=336)
    collator = Collator(scene_tokenizer(), 576, max_length=4096)
    kept, counts = {}, []
    for workers in (0, 1):
        collate = _worker_faults(collator) if workers else collator
        batches = step_batches(ds, collate, position=0, steps=24, batch_size=16, rank=0, local=16, micro=16,
                               accum=1, workers=workers, pin=False)  # fmt: skip
        kept[workers] = []
        for step in batches:
            pop_skipped(step)
            kept[workers].append(step[0]["pixel_values"])
            if workers:
                counts.append(int(step[0]["faults"]))
    assert all(torch.equal(a, b) for a, b in zip(kept[0], kept[1], strict=True))
    pixel_pages = 16 * 3 * 336 * 336 // 4096
    per_batch = sorted(b - a for a, b in zip(counts[8:], counts[9:], strict=False))
    assert per_batch[len(per_batch) // 2] < pixel_pages / 4, per_batch  # the token tensors: ~100
