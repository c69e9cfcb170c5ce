"""Ablation machinery without training: verdict rules, evaluation error, the ridge probe, and the
runner's resumability (the ledger; a job is keyed by what it trains), the report's helpers."""

import json
import math
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ablations.evaluate import eval_se
from ablations.instruction_aware import gap_closes
from ablations.ledger import Ledger, stage0_versions, weights_digest
from ablations.plan import Step, Variant, cli
from ablations.probe import RidgeProbe
from ablations.provenance import stage0_warning
from ablations.report import summarize
from ablations.report_sections import seed_lines
from ablations.runner import Runner
from ablations.targets import frozen_llm_held_out, held_to_floors, targets
from ablations.verdicts import paired


def _runs(values: dict[str, list[float]], metric="held_in_acc"):
    return [
        {"variant": name, "seed": s, "metrics": {metric: x}} for name, xs in values.items() for s, x in enumerate(xs)
    ]


def test_paired_verdicts():
    clear_up = _runs({"a": [0.8, 0.82, 0.81], "b": [0.7, 0.71, 0.7]})
    assert paired(clear_up, "a", "b", "held_in_acc", +1, "c", "")["verdict"] == "reproduced"
    assert paired(clear_up, "a", "b", "held_in_acc", -1, "c", "why")["verdict"] == "contradicted"
    noisy = _runs({"a": [0.8, 0.6, 0.75], "b": [0.7, 0.72, 0.71]})
    assert paired(noisy, "a", "b", "held_in_acc", +1, "c", "")["verdict"] == "inconclusive"
    same = _runs({"a": [0.7, 0.71, 0.7], "b": [0.7, 0.7, 0.71]})
    assert paired(same, "a", "b", "held_in_acc", 0, "c", "")["verdict"] == "reproduced"
    assert paired(clear_up, "a", "b", "held_in_acc", 0, "c", "")["verdict"] == "contradicted"
    # "no difference" must be shown: a noisy difference that is not clear is not a reproduction
    loose = _runs({"a": [0.9, 0.7, 0.85], "b": [0.72, 0.71, 0.7]})
    assert paired(loose, "a", "b", "held_in_acc", 0, "c", "")["verdict"] == "inconclusive"
    # a claimed gain whose whole band lies under the smallest effect counted (0.02) is measured absent
    flat = _runs({"a": [0.7, 0.705, 0.7], "b": [0.7, 0.7, 0.7]})
    absent = paired(flat, "a", "b", "held_in_acc", +1, "c", "why")
    assert (absent["verdict"], absent["kind"]) == ("contradicted", "no effect")
    small_noisy = _runs({"a": [0.71, 0.75, 0.7], "b": [0.7, 0.7, 0.7]})  # +0.02 ± 0.015: could be a gain
    assert paired(small_noisy, "a", "b", "held_in_acc", +1, "c", "")["verdict"] == "inconclusive"
    assert paired(clear_up, "a", "b", "held_in_acc", -1, "c", "why")["kind"] == "opposite sign"
    one_seed = _runs({"a": [0.9], "b": [0.5]})  # no spread over seeds: nothing to judge against
    assert {paired(one_seed, "a", "b", "held_in_acc", e, "c", "")["verdict"] for e in (-1, 0, 1)} == {"inconclusive"}


def test_intervals_use_students_t_and_an_undecided_claim_says_how_many_seeds_would_decide():
    """Five seeds: 2.78 standard errors, not 2. A mean 2.5 s.e. from zero was 'reproduced' under the old
    rule and is inconclusive now; at that mean and spread, more seeds decide it."""
    from ablations.verdicts import seeds_to_decide, t95, verdict_row

    assert t95(4) == 2.776 and t95(2) == 4.303 and abs(t95(60) - 2.000) < 0.001 and t95(0) == math.inf
    diffs = [0.03, 0.08, 0.05, 0.02, 0.07]  # mean 0.05, s.d. 0.0255, s.e. 0.0114: 4.4 s.e.
    assert verdict_row(diffs, +1, "c", "m", "a", "b", "")["verdict"] == "reproduced"
    wide = [0.0, 0.1, 0.05, -0.04, 0.14]  # mean 0.05, s.e. 0.031: 1.6 s.e.
    row = verdict_row(wide, +1, "c", "m", "a", "b", "why")
    assert row["verdict"] == "inconclusive" and row["ci95"] == pytest.approx(2.776 * row["diff_se"])
    need = row["seeds_to_decide"]
    assert need is not None and need > 5
    sd = row["diff_se"] * math.sqrt(5)
    assert (
        verdict_row([0.05 + sd * x for x in _unit_spread(need)], +1, "c", "m", "a", "b", "")["verdict"] == "reproduced"
    )
    assert seeds_to_decide(0.02, 0.01, 5, +1) is None  # a mean on the threshold stays undecided


def _unit_spread(n: int) -> list[float]:
    """n numbers with mean 0 and sample s.d. 1."""
    xs = [i - (n - 1) / 2 for i in range(n)]
    sd = math.sqrt(sum(x * x for x in xs) / (n - 1))
    return [x / sd for x in xs]


def test_gap_closes_uses_the_difference_of_gaps():
    runs = _runs(
        {
            "aware_K2": [0.9, 0.91, 0.9],
            "plain_K2": [0.6, 0.62, 0.61],
            "aware_K8": [0.92, 0.93, 0.92],
            "plain_K8": [0.9, 0.91, 0.91],
        }
    )
    assert gap_closes(runs, 2, 8, "m", "")["verdict"] == "reproduced"
    flipped = [dict(r, variant=r["variant"].replace("K2", "Kx").replace("K8", "K2").replace("Kx", "K8")) for r in runs]
    assert gap_closes(flipped, 2, 8, "m", "")["verdict"] == "contradicted"
    assert gap_closes(runs, 2, 8, "m", "")["cross_device"] == 0
    one_on_gpu = [dict(r, device="cuda") if (r["variant"], r["seed"]) == ("plain_K8", 1) else r for r in runs]
    assert gap_closes(one_on_gpu, 2, 8, "m", "")["cross_device"] == 1


@given(st.lists(st.floats(0, 1), min_size=1, max_size=6), st.integers(10, 5000))
def test_eval_se_is_the_binomial_error_of_a_mean(accs, n):
    se = eval_se(accs, n)
    assert se <= 0.5 / math.sqrt(n) / math.sqrt(len(accs)) + 1e-12  # p(1-p) <= 1/4
    if len(accs) == 1:
        assert math.isclose(se, math.sqrt(accs[0] * (1 - accs[0]) / n), abs_tol=1e-12)


@settings(deadline=None, max_examples=10)
@given(st.integers(0, 1000))
def test_ridge_probe_reads_linear_targets_and_not_noise(seed):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(n, 20, generator=g, dtype=torch.float64) for n in (300, 100, 200)]
    w = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = [(xi @ w).argmax(1) for xi in x]
    probe = RidgeProbe(*x)
    assert probe(*y)["acc"] > 0.7  # least squares on one-hot targets is not a perfect separator
    noise = [torch.randint(0, 4, (len(xi),), generator=g) for xi in x]
    assert probe(*noise)["acc"] < 0.45  # chance is 0.25; 20 features on 300 samples overfit a little
    missing = [torch.where(yi == 0, -1, yi) for yi in y]  # -1: the target does not exist there
    assert probe(*missing)["n_test"] == int((y[2] != 0).sum())


def test_the_ledger_survives_a_write_cut_short_and_names_a_bad_line(tmp_path, caplog):
    path = tmp_path / "jobs.jsonl"
    ledger = Ledger(path)
    ledger.add({"fingerprint": "a", "metrics": {"m": 1.0}})
    ledger.add({"fingerprint": "b", "metrics": {"m": 2.0}})
    ledger.add({"fingerprint": "a", "metrics": {"m": 3.0}})  # recomputed: the later line wins
    assert Ledger(path)["a"]["metrics"] == {"m": 3.0} and "b" in Ledger(path)
    with path.open("a") as f:
        f.write('{"fingerprint": "c", "metr')  # the suite was killed mid-write
    assert "c" not in Ledger(path) and "unfinished last line" in caplog.text
    Ledger(path).add({"fingerprint": "d"})
    assert sorted(Ledger(path).records) == ["a", "b", "d"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=f"{path}:2: not a JSON record"):
        Ledger(path)  # a bad line inside the ledger is an error naming it, never skipped


def test_a_stopped_runs_jobs_are_tabled_from_its_ledger(tmp_path, capsys):
    from ablations.report import main

    metrics = {"held_in_acc": 0.75, "held_out_acc": 0.5, "held_out_ranked_acc": 0.6, "acc_color": 0.9}
    job = {"kind": "job", "comparison": "c", "variant": "v", "seed": 1, "metrics": metrics, "train_s": 12.0}
    Ledger(tmp_path / "jobs.jsonl").add({**job, "fingerprint": "k"})
    with mock.patch("sys.argv", ["report", str(tmp_path)]):
        main()
    out = capsys.readouterr().out
    assert "1 finished jobs." in out and "| c | v | 1 | 0.750 | 0.500 | 0.600 | 0.90 |" in out


def _half(x):
    if x == "bad":
        raise ValueError("job failed")
    return x / 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_job_keeps_what_finished(workers):
    """Jobs are handed back one by one as they finish (the runner records each at once), and a
    failure stops new jobs without losing the finished ones."""
    from ablations.pool import finished, open_pool

    got = []
    with open_pool(workers) as pool, pytest.raises(ValueError, match="job failed"):
        for value in finished(pool, _half, [2, 4, "bad", 6, 8, 10, 12, 14, 16]):
            got.append(value)
    assert set(got) <= {1, 2, 3, 4, 5, 6, 7, 8}
    if workers == 1:
        assert got == [1, 2]  # each handed back before the next starts, and nothing after the failure


def test_jobs_on_different_stage0_weights_are_flagged():
    runs = [{"stage0_weights": {"lm": "a", "vision": "v"}}, {"stage0_weights": {"lm": "a"}}]
    assert stage0_warning(stage0_versions(runs)) == ""
    assert "seed0/lm: 2 versions" in stage0_warning(stage0_versions([*runs, {"stage0_weights": {"lm": "b"}}]))
    assert "1 results from before" in stage0_warning(stage0_versions([*runs, {}]))
    assert stage0_warning(stage0_versions([{}, {}])) == ""  # all from before the record: nothing to compare


def test_the_report_says_which_devices_trained_and_whether_a_pair_straddles_two():
    """A suite finished in part on a lent GPU: each job counted once per device, and a per-seed
    difference between a CPU run and a GPU run is counted, not hidden."""
    from ablations.provenance import devices_line, jobs_by_device, timing
    from ablations.verdicts import paired

    def run(v, seed, device, acc, **kw):
        key = f"{v}{seed}"
        return {"variant": v, "seed": seed, "device": device, "metrics": {"held_in_acc": acc}, "fingerprint": key,
                "wall_s": 60.0, **kw}  # fmt: skip

    runs = [run("a", s, "cpu", 0.9) for s in range(3)] + [run("b", s, "cpu", 0.5) for s in range(3)]
    one = {"x": {"runs": runs, "verdicts": [paired(runs, "a", "b", "held_in_acc", 1, "a helps", "")]}}
    assert one["x"]["verdicts"][0]["cross_device"] == 0
    assert devices_line(one) == "device: cpu for 6 jobs"
    runs[0]["device"] = runs[3]["device"] = "cuda"  # seed 0's pair on the GPU: still one device per pair
    same = {"x": {"runs": runs, "verdicts": [paired(runs, "a", "b", "held_in_acc", 1, "a helps", "")]}}
    assert "every verdict's per-seed difference compares two runs on one device" in devices_line(same)
    runs[4]["device"] = "cuda"
    shared = run("b", 1, "cuda", 0.5, same_as="y/b/seed1")  # another comparison's copy of a job: not counted
    mixed = {"x": {"runs": runs, "verdicts": [paired(runs, "a", "b", "held_in_acc", 1, "a helps", "")]},
             "y": {"runs": [shared], "verdicts": []}}  # fmt: skip
    assert "1 of the verdicts' per-seed differences compare runs on two devices" in devices_line(mixed)
    assert jobs_by_device(mixed) == {"cpu": (3, 180.0), "cuda": (3, 180.0)}
    suite = {"wall_s": 600.0, "workers": 2, "serial_s": 360.0, "invocations": 2,
             "lent": [{"device": "NVIDIA H200", "wall_s": 120.0, "workers": 16, "jobs": 3}]}  # fmt: skip
    line = timing(suite, None, jobs_by_device(mixed))
    assert "**10.0 min** wall on this machine over 2 invocations" in line
    assert "plus **2.0 min** on a lent NVIDIA H200 (16 workers, 3 jobs kept)" in line
    assert "3.0 min of jobs on cpu, 3.0 min of jobs on cuda" in line
    runs[4]["device"] = "cpu"
    for r, speed in zip(runs, (100, 10, 10, 500, 10, 10), strict=True):
        r["metrics"]["train_samples_per_s"] = speed
    speeds = summarize(runs)  # seed 0 on cuda, the rest (most) on cpu: speeds from the cpu runs alone
    assert speeds["a"]["train_samples_per_s"]["mean"] == speeds["b"]["train_samples_per_s"]["mean"] == 10
    assert speeds["a"]["held_in_acc"]["n"] == 3  # accuracies from every run


def test_every_ledger_record_names_its_software_and_the_report_lists_it(tmp_path):
    from ablations.provenance import versions_line
    from lab.versions import versions

    ledger = Ledger(tmp_path / "jobs.jsonl")
    mine = ledger.add({"kind": "job", "fingerprint": "a"})
    merged = ledger.add({"kind": "job", "fingerprint": "b", "versions": {"python": "3.12.1", "torch": "2.9.0"}})
    again = Ledger(tmp_path / "jobs.jsonl")
    assert again["a"]["versions"] == mine["versions"] == versions() and set(versions()) >= {"torch", "transformers"}
    assert again["b"]["versions"] == merged["versions"] == {"python": "3.12.1", "torch": "2.9.0"}  # kept as made
    runs = [again["a"], again["b"], {"fingerprint": "old"}, {**again["b"], "fingerprint": "c"}]
    line = versions_line({"x": {"runs": runs}})
    assert "python 3.12.1, torch 2.9.0 (2 jobs)" in line and f"torch {versions()['torch']}" in line
    assert "1 jobs from before versions were recorded" in line


def test_a_record_from_other_stage0_weights_than_those_on_disk_retrains(tmp_path):
    """A job's key names stage 0's config; the weights it started from must be the ones on disk. With
    no stage 0 on disk (a clone of a finished suite) every record stands: the reports rebuild."""
    from safetensors.torch import save_file

    from ablations.report import on_stage0
    from lab.rundir import RunDir

    runner = Runner(cli("x", ["--quick", "--out", str(tmp_path)]))
    ledger = Ledger(tmp_path / "jobs.jsonl")
    for key, weights in (("old", None), ("same", {"lm": "?"}), ("other", {"lm": "0000"}), ("vit", {"vision": "?"})):
        ledger.add({"fingerprint": key, "kind": "job", **({"stage0_weights": weights} if weights else {})})
    ledger.add({"fingerprint": "seed1", "stage0_seed": 1, "stage0_weights": {"lm": "0000"}})
    assert all(map(runner.fresh_records(ledger), ("old", "same", "other", "vit")))
    assert not runner.fresh_records(ledger)("absent")

    lm = runner.stage0_dir(0) / "lm"  # a finished stage-0 LM appears on disk
    lm.mkdir(parents=True)
    save_file({"w": torch.arange(4.0)}, lm / "model.safetensors")
    RunDir(lm).summary_file.write_text("{}")
    ledger.add({"fingerprint": "same", "kind": "job", "stage0_weights": {"lm": weights_digest(lm)}})
    fresh = runner.fresh_records(ledger)
    assert fresh("same") and not fresh("other") and not fresh("old")
    assert fresh("vit")  # a part not on disk has nothing to disagree with
    assert fresh("seed1")  # nor has a stage-0 seed with nothing on disk
    assert [r["fingerprint"] for r in on_stage0(tmp_path, ledger.of_kind("job"))] == ["same", "vit"]
    RunDir(lm).summary_file.unlink()  # an unfinished stage 0 is not the one jobs start from
    assert runner.fresh_records(ledger)("other")


def test_first_trains_one_comparison_and_the_jobs_it_shares_first():
    runner = Runner(cli("x", ["--quick", "--first", "b"]))
    v = lambda name: Variant(name, [])  # noqa: E731
    jobs = [("a", v("x"), 0), ("a", v("shared"), 0), ("b", v("y"), 0), ("b", v("shared"), 0), ("a", v("x"), 1)]
    keys = ["ax0", "s0", "by0", "s0", "ax1"]
    assert runner.order({0, 1, 2, 4}, jobs, keys) == [1, 2, 0, 4]  # b's, its shared job included, then a's
    runner.args.first = None
    assert runner.order({0, 1, 2, 4}, jobs, keys) == [0, 1, 4, 2]  # a comparison at a time, seed by seed
    runner.args.first = "c"
    with pytest.raises(SystemExit, match="--first c: not a comparison"):
        runner.order({0}, jobs, keys)


def test_the_handoff_variant_and_its_verdict_are_full_mode_only():
    from ablations import stage1

    full, quick = ([v.name for v in stage1.variants(q)] for q in (False, True))
    assert set(full) - set(quick) == {"qformer_handoff"}
    handoff = next(v for v in stage1.variants(False) if v.name == "qformer_handoff")
    plain = next(v for v in stage1.variants(False) if v.name == "qformer_no_stage1")
    # the same recipe as qformer_no_stage1 but for the distillation weight in instruction tuning
    assert [s.overrides for s in plain.recipe] == [
        {k: x for k, x in s.overrides.items() if k != "handoff_weight"} for s in handoff.recipe
    ]
    assert handoff.recipe[-1].overrides["handoff_weight"] == stage1.HANDOFF > 0
    names = ("qformer_stage1_zero_shot", "qformer_no_stage1_zero_shot", "qformer_stage1", "qformer_no_stage1")
    runs = _runs({n: [0.5, 0.6] for n in (*names, "mlp_aligned", "mlp_single_stage")}, "held_in_acc")
    claim = "hand-off distillation helps a frozen LLM transfer held-out"
    assert claim not in [v["claim"] for v in stage1.verdicts(runs)]
    ho = _runs({"qformer_handoff": [0.72, 0.73, 0.74], "qformer_no_stage1": [0.62, 0.62, 0.63]}, "held_out_ranked_acc")
    row = next(v for v in stage1.verdicts(runs + ho) if v["claim"] == claim)
    assert (row["metric"], row["verdict"]) == ("held_out_ranked_acc", "reproduced")


def test_a_job_is_keyed_by_what_it_trains_not_by_how_its_recipe_is_spelled(tmp_path):
    """The fingerprint covers each step's resolved config: spelling out a default is the same job
    (trained once), and a setting that resolves differently is another job."""
    runner = Runner(cli("x", ["--quick", "--out", str(tmp_path)]))
    mlp = {"model.connector.kind": "mlp"}
    key = lambda overrides, seed=0: runner.job("c", Variant("v", [Step("instruct", overrides)]), seed)[1]  # noqa: E731
    assert key(mlp) == key({**mlp, "model.connector.mlp_init": "lecun"})  # lab's default, spelled out
    assert key(mlp) != key({**mlp, "model.connector.mlp_init": "torch"})
    assert key(mlp) != key(mlp, seed=1)
    assert runner.job("a", Variant("v", [Step("instruct", mlp)]), 0)[1] == key(mlp)  # shared across comparisons


def test_workers_die_with_the_suite(tmp_path):
    """A stopped suite leaves no worker still training into its run folders."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import time\n"
        "from ablations.pool import open_pool\n"
        "with open_pool(2) as pool:\n"
        "    pool.submit(time.sleep, 60)\n"
        "    import multiprocessing\n"
        "    time.sleep(8)\n"
        "    print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert pids, "the pool started no worker"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    for pid in alive:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived the suite"


def _result(name, recipes, held_in: dict[str, list[float]], held_out: dict, groups=None) -> dict:
    metrics = {"held_out_acc": 0.0, "chance_color": 0.2, "held_in_eval_se": 0.01}
    runs = [
        {
            "variant": v,
            "seed": s,
            "group": (groups or {}).get(v, "main"),
            "metrics": {**metrics, "held_in_acc": x, "held_out_ranked_acc": held_out[v], "acc_color": x},
        }
        for v, xs in held_in.items()
        for s, x in enumerate(xs)
    ]
    return {"comparison": name, "runs": runs, "recipes": recipes, "summary": summarize(runs)}


def test_lora_is_not_a_frozen_llm_and_seeds_line_up_with_their_lm():
    frozen, lora = [{"model.freeze_llm": True}], [{"model.freeze_llm": "auto", "model.llm_lora.r": 8}]
    res = _result(
        "c",
        {"frozen": frozen, "lora": lora, "tuned": [{"model.freeze_llm": False}]},
        {"frozen": [0.6, 0.9], "lora": [0.7, 0.95], "tuned": [0.8, 0.97]},
        {"frozen": 0.55, "lora": 0.6, "tuned": 0.65},
    )
    assert frozen_llm_held_out({"c": res}) == ("c/frozen", 0.55)  # LoRA changes the LLM: not frozen
    for r in res["runs"]:  # held-out families: the ranked score, as the target counts them
        r["metrics"] |= {"acc_relation": 0.1, "ranked_relation": 0.5 + 0.1 * r["seed"]}
    lm = {"0": {"color": 0.7, "relation": 0.57}, "1": {"color": 1.0}}
    rows = [line for line in seed_lines({"c": res}, lm) if line.startswith("| 0 ") or line.startswith("| 1 ")]
    # seed 0: the LM's colour from text beside the frozen variant's colour; then the comparison's mean
    assert rows[0].startswith("| 0 | 0.70 / 0.60 |") and rows[0].endswith(f"| {(0.6 + 0.7 + 0.8) / 3:.3f} |")
    assert "| 0.57 / 0.50 |" in rows[0] and "| nan / 0.60 |" in rows[1]
    assert rows[1].startswith("| 1 | 1.00 / 0.90 |")
    shared = [line for line in seed_lines({"c": res}, {0: {"color": 0.7}}) if line.startswith("| 1 ")]
    assert shared[0].startswith("| 1 | 0.70 / 0.90 |")  # one stage 0 under every seed
    # an exempt variant (below the floors by design, its witness above) drags neither mean
    res["shortfall"] = {"tuned": ["by design", "frozen"]}
    res["summary"]["tuned"]["held_in_acc"]["mean"] = 0.5
    rows = [line for line in seed_lines({"c": res}, lm) if line.startswith("| 0 ")]
    assert rows[0].endswith(f"| {(0.6 + 0.7) / 2:.3f} |")


def test_stage0_is_shared_by_the_seeds_unless_asked(tmp_path):
    shared = Runner(cli("x", ["--quick", "--seeds", "3", "--out", str(tmp_path)]))
    own = Runner(cli("x", ["--quick", "--seeds", "3", "--out", str(tmp_path), "--stage0-per-seed"]))
    assert [shared.stage0_seed(s) for s in range(3)] == [0, 0, 0]
    assert [own.stage0_seed(s) for s in range(3)] == [0, 1, 2]
    v = Variant("x", [Step("instruct", {"model.connector.kind": "linear"})])
    assert shared.job("comp", v, 1) != own.job("comp", v, 1)  # cached jobs are not mixed up


def test_best_variant_target_counts_the_sweep_not_the_controls():
    held_in = {"main": [0.8, 0.8], "sweep": [0.92, 0.92], "control": [0.99, 0.99]}
    res = _result("c", {}, held_in, dict.fromkeys(held_in, 0.5), {"sweep": "sweep", "control": "control"})
    rows, ok = targets({"c": res}, "full")
    assert "| c | sweep 0.920 ✅ | main 0.800 ✅ | none ✅ |" in rows[-1] and ok


def test_an_exempt_variant_needs_a_witness_that_learned():
    """Plain queries under a tight budget may miss the floor; the same model where the effect cannot
    act may not."""
    held_in = {"aware": [0.95, 0.95], "plain": [0.4, 0.4], "plain_1obj": [0.9, 0.9]}
    groups = {"plain_1obj": "control"}
    res = _result("c", {}, held_in, dict.fromkeys(held_in, 0.5), groups)
    rows, ok = targets({"c": res}, "full")
    assert "| c | aware 0.950 ✅ | plain 0.400 ❌ |" in rows[-1] and not ok  # not declared: a miss
    res["shortfall"] = {"plain": ["tight budget", "plain_1obj"]}
    rows, ok = targets({"c": res}, "full")
    assert "| aware 0.950 ✅ | none ✅ | plain 0.400 (tight budget; witness plain_1obj 0.900 ✅) |" in rows[-1]
    assert ok
    res["summary"]["plain_1obj"]["held_in_acc"]["mean"] = 0.5  # the witness learned nothing either
    rows, ok = targets({"c": res}, "full")
    assert "witness plain_1obj 0.500 ❌" in rows[-1] and not ok
    del res["summary"]["plain_1obj"]  # a witness that did not run
    rows, ok = targets({"c": res}, "full")
    assert "witness plain_1obj nan ❌" in rows[-1] and not ok
    for m in ("held_in_acc", "acc_color"):  # one that clears the floors is held to them, whatever it names
        res["summary"]["plain"][m]["mean"] = 0.95
    rows, ok = targets({"c": res}, "full")
    assert "| none | " in rows[-1] and held_to_floors(res, "plain", "full")


def test_smoke_suite_writes_a_report(tmp_path):
    """Every code path of the suite, a few steps each: stage 0 (shared), every comparison's jobs,
    probes, verdicts, the report. It checks plumbing, not models."""
    from ablations.__main__ import main

    argv = ["ablations", "--smoke", "--quick", "--workers", "1", "--out", str(tmp_path)]
    with mock.patch("sys.argv", argv):
        assert main() == 0
    text = (tmp_path / "REPORT.md").read_text()
    assert "one stage 0 shared by every seed" in text and "Every seed starts from the same stage 0." in text
    assert len(list((tmp_path / "stage0").iterdir())) == 1
    assert "Not every job started from the same stage-0 weights" not in text
    for name in ("connector", "instruction_aware", "frozen_encoders", "stage1"):
        assert json.loads((tmp_path / name / "results.json").read_text())["verdicts"]
    # the stage-1 comparison's single-stage MLP is the connector comparison's MLP: trained once
    runs = tmp_path / "_runs"
    results = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in ("connector", "stage1")}
    mlp = next(r for r in results["connector"]["runs"] if r["variant"] == "mlp")
    same = next(r for r in results["stage1"]["runs"] if r["variant"] == "mlp_single_stage")
    assert same["same_as"] == "connector/mlp/seed0" and same["metrics"] == mlp["metrics"]
    assert not (runs / "stage1" / "mlp_single_stage" / "seed0" / "instruct").exists()

    # A fresh clone holds the ledger and stage 0 and none of the run folders: the suite rebuilds
    # the same results from the ledger and trains nothing.
    import lab.train

    shutil.rmtree(runs)
    with mock.patch.object(lab.train, "train", side_effect=RuntimeError("trained")), mock.patch("sys.argv", argv):
        assert main() == 0
    again = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in results}
    assert all(again[n]["summary"] == results[n]["summary"] for n in results)
    assert all(again[n]["verdicts"] == results[n]["verdicts"] for n in results)
    # ... and a job the ledger lacks does train
    with mock.patch.object(lab.train, "train", side_effect=RuntimeError("trained")):
        with mock.patch("sys.argv", [*argv, "--seeds", "2"]), pytest.raises(RuntimeError, match="trained"):
            main()


def test_held_out_sweep_reads_each_lm_three_ways_and_resumes(tmp_path):
    """`python -m ablations held_out`, a few steps each: a comparison on an axis over stage-0 LMs (one
    LM per seed beside one ViT) through the suite's runner and ledger; each model's held-out answers
    scored directly, through its own caption and from the true caption; a rerun trains nothing, a
    third LM trains; the report renders the table. Plumbing, not models."""
    import lab.train
    from ablations.held_out import HANDOFF, main
    from ablations.ledger import Ledger
    from ablations.report_sections import held_out_section
    from ablations.sweep_table import WAYS
    from lab.data import HELD_OUT

    argv = ["--smoke", "--lms", "2", "--workers", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    res = json.loads((tmp_path / "held_out" / "results.json").read_text())
    assert sorted(res["summary"]) == ["handoff_lm0", "handoff_lm1", "plain_lm0", "plain_lm1"]
    records = res["sweep"]["records"]
    assert [r["lm_seed"] for r in records] == [0, 1]
    tried = res["sweep"]["handoff"]["records"]  # the second arm: the same LMs, hand-off distillation on
    want = [(0, HANDOFF, 0.0), (1, HANDOFF, 0.0)]  # (LM, weight in instruction tuning, weight in stage 2)
    assert [(r["lm_seed"], r["handoff_weight"], r["handoff_stage2"]) for r in tried] == want
    assert set(res["sweep"]["handoff"]["paired"]) == {"held_in", "held_out_direct"}
    assert all(0 <= r[w][f] <= 1 for r in records for w in WAYS for f in HELD_OUT)
    assert records[0]["stage0_weights"]["vision"] == records[1]["stage0_weights"]["vision"]
    assert records[0]["stage0_weights"]["lm"] != records[1]["stage0_weights"]["lm"]
    jobs = Ledger(tmp_path / "jobs.jsonl").of_kind("job")  # the suite's ledger: one record per (arm, LM)
    assert sorted(r["stage0_seeds"]["lm"] for r in jobs) == [0, 0, 1, 1]
    assert (tmp_path / "stage0" / "seed1" / "lm").is_dir() and not (tmp_path / "stage0" / "seed1" / "vision").exists()
    with mock.patch.object(lab.train, "train", side_effect=RuntimeError("trained")):
        assert main(argv) == 0
        with pytest.raises(RuntimeError, match="trained"):
            main([*argv[:2], "3", *argv[3:]])  # a third LM is not in the ledger: it trains
    text = "\n".join(held_out_section(tmp_path / "held_out"))
    assert "Held-out over 2 stage-0 LMs" in text and "mean ± s.d. (2 LMs)" in text
    assert f"handoff_weight={HANDOFF:g}" in text and "in instruction tuning" in text
    gaps = [r["handoff_gap"] for r in [*records, *tried]]
    assert all(set(HELD_OUT) <= set(g) and all(x > 0 for x in g["compare_count"]) for g in gaps)
    assert "gap, compare_count" in text


def test_an_lm_axis_keys_each_job_by_its_own_lm():
    """`over_lms`: the LM of each job is its variant's, the ViT the job's own; every other variant's
    fingerprint is what it was, and a measurement of its own sets a job apart from the same recipe."""
    import dataclasses as dc

    from ablations import held_out, stage1
    from ablations.plan import Plan, cli

    plan = Plan(cli("", ["--quick"]))
    swept = held_out.variants(True, 3)
    assert [v.name for v in swept] == [f"{a}_lm{n}" for a in held_out.ARMS for n in range(3)]
    assert plan.part_seeds(swept[2], 0) == {"vision": 0, "lm": 2}
    keys = [plan.job("held_out", v, 0)[1] for v in swept]
    assert len(set(keys)) == len(keys)
    recipe = next(v for v in stage1.variants(True) if v.name == held_out.RECIPE[1])
    assert plan.job("stage1", recipe, 0)[1] != plan.job("held_out", dc.replace(swept[0], name=recipe.name), 0)[1]
    same = dc.replace(recipe, lm_seed=0)  # an axis at the job's own LM, measured alike: the same job
    assert plan.job("stage1", same, 0)[1] == plan.job("stage1", recipe, 0)[1]


def test_lab_ablate_and_python_m_ablations_read_one_registry(monkeypatch, capsys):
    import importlib

    from ablations import registry
    from ablations.__main__ import main as ablations_main
    from lab.cli import main as lab_main

    called = []
    for name in (*registry.SUITE, *registry.SWEEPS):
        mod = importlib.import_module(registry.module(name))
        monkeypatch.setattr(mod, "main", lambda argv, n=name: called.append((n, argv)) or 0)
    for name in (*registry.SUITE, *registry.SWEEPS):
        assert lab_main(["ablate", name, "--quick"]) == 0 and ablations_main([name, "--seeds", "1"]) == 0
    assert called == [(n, a) for n in (*registry.SUITE, *registry.SWEEPS) for a in (["--quick"], ["--seeds", "1"])]
    assert lab_main(["ablate", "bogus"]) == 2 and ablations_main(["bogus"]) == 2
    assert "unknown ablation 'bogus'" in capsys.readouterr().err and "held_out" in registry.NAMES


def test_a_rebuild_that_trains_nothing_leaves_the_suite_clock_alone(tmp_path):
    from argparse import Namespace

    from ablations.ledger import SuiteClock

    args, path = Namespace(workers=2, device="cpu"), tmp_path / "suite.json"
    first = SuiteClock(path, "k", 1, args)
    first.tick({"wall_s": 5.0})
    before = path.read_text()
    rebuild = SuiteClock(path, "k", 1, args)
    rebuild.trains = False
    assert rebuild.tick({"wall_s": 5.0}, cached=True)["invocations"] == 1 and path.read_text() == before
    resumed = SuiteClock(path, "k", 1, args)  # an invocation that trains counts
    assert resumed.tick({"wall_s": 1.0})["invocations"] == 2


def test_a_changed_stage0_is_named_and_replaced_only_when_asked(tmp_path):
    """Stage 0 does not reproduce across machines and every record started from it: a suite whose
    stage-0 settings changed stops before training, naming the change, unless --retrain-stage0."""
    from ablations import preflight
    from lab.data import WordTokenizer, scene_tokenizer

    runner = Runner(cli("x", ["--smoke", "--quick", "--out", str(tmp_path)]))
    for part in ("vision", "lm"):
        runner.stage0(0, part)
    assert preflight.stage0_changes(runner, [0]) == []
    preflight.refuse_stage0_loss(preflight.stage0_changes(runner, [0]), False)  # nothing to replace

    (tmp_path / "deeper.yaml").write_text("optim: {weight_decay: 0.02}\n")
    changed = Runner(
        cli("x", ["--smoke", "--quick", "--out", str(tmp_path), "--config", str(tmp_path / "deeper.yaml")])
    )
    with pytest.raises(
        SystemExit, match=r"stage0/seed0/lm \(trained under other settings: optim.weight_decay: 0.01 -> 0.02\)"
    ):
        preflight.refuse_stage0_loss(preflight.stage0_changes(changed, [0]), changed.args.retrain_stage0)
    asked = Runner(
        cli(
            "x",
            [
                "--smoke",
                "--quick",
                "--out",
                str(tmp_path),
                "--config",
                str(tmp_path / "deeper.yaml"),
                "--retrain-stage0",
            ],
        )
    )
    assert asked.args.retrain_stage0
    preflight.refuse_stage0_loss(preflight.stage0_changes(asked, [0]), asked.args.retrain_stage0)

    # a tokenizer that lacks only words appended since (a new family's) keeps stage 0 valid, and says so
    lm = runner.stage0_dir(0) / "lm"
    WordTokenizer(scene_tokenizer().vocab[5:-2]).save(lm)
    (change,) = preflight.stage0_changes(runner, [0])
    assert change[1].startswith("stays: its tokenizer lacks only the new words") and not change[2]


SPEC = """
name: my_connectors
shared: {model.freeze_vision: true, model.freeze_llm: false}
variants:
  linear: {overrides: {model.connector.kind: linear}}
  mlp: {overrides: {model.connector.kind: mlp}}
claims:
  - claim: an MLP beats a linear projection
    a: mlp
    b: linear
    metric: held_in_acc
    direction: 1
    paper: "LLaVA-1.5: linear -> MLP, GQA 46.8 -> 47.3"
"""


def test_a_comparison_from_a_yaml_spec_runs_through_the_runner_ledger_and_report(tmp_path, capsys):
    from ablations.__main__ import main

    spec = tmp_path / "my.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    assert main(["--spec", str(spec), "--smoke", "--quick", "--workers", "1", "--out", str(out)]) == 0
    result = json.loads((out / "my_connectors" / "results.json").read_text())
    assert {r["variant"] for r in result["runs"]} == {"linear", "mlp"}
    (verdict,) = result["verdicts"]
    assert verdict["claim"] == "an MLP beats a linear projection" and verdict["metric"] == "held_in_acc"
    report = (out / "my_connectors" / "REPORT.md").read_text()
    assert "| my_connectors | an MLP beats a linear projection | LLaVA-1.5" in report.split("## Details")[0]
    assert len(Ledger(out / "jobs.jsonl").of_kind("job")) == 2
    capsys.readouterr()
    assert main(["--spec", str(spec), "--smoke", "--quick", "--workers", "1", "--out", str(out), "--plan"]) == 0
    assert "2 of 2 jobs found" in capsys.readouterr().out  # the ledger holds both: nothing retrains

    spec.write_text(SPEC.replace("model.connector.kind: mlp", "model.conector.kind: mlp"))
    assert main(["--spec", str(spec), "--smoke", "--quick", "--out", str(out), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "variant mlp, stage instruct: unknown config key model.conector (did you mean model.connector?)" in err
    spec.write_text(SPEC.replace("a: mlp", "a: mpl"))
    assert main(["--spec", str(spec), "--smoke", "--quick", "--out", str(out)]) == 2
    assert "claims[0].a='mpl' is not a variant" in capsys.readouterr().err


def test_a_misspelled_override_fails_when_the_suite_is_planned(tmp_path):
    """Checked against TrainConfig before anything trains; one spelling per key (no section shorthand)."""
    from lab.config import ConfigError

    runner = Runner(cli("x", ["--smoke", "--quick", "--out", str(tmp_path)]))
    typo = Variant("t", [Step("instruct", {"model.conector.kind": "mlp"})])
    with pytest.raises(ConfigError, match="model.conector"):
        runner.job("c", typo, 0)
    short = Variant("s", [Step("instruct", {"model.connector": "mlp"})])
    with pytest.raises(ConfigError, match=r"variant s, stage instruct: model.connector is a section"):
        runner.job("c", short, 0)


@pytest.mark.parametrize("stage", ["vision", "lm", "instruct"])
def test_the_readme_walkthrough_configs_are_the_suites_regime(stage):
    """configs/regime/*.yaml, which the README's walkthrough trains with, resolve to the quick suite's
    configs (stage 0, and the connector comparison's linear recipe): the regime cannot drift apart."""
    from ablations.connector import RECIPE
    from lab.train import build_config

    runner = Runner(cli("x", ["--quick"]))
    steps = {"vision": 1000, "lm": 2000, "instruct": 600}[stage]
    overrides = {**RECIPE, "model.connector.kind": "linear"} if stage == "instruct" else {}
    suite = runner.config(stage, 0, overrides, steps).identity()
    root = Path(__file__).resolve().parents[1]
    ours = build_config(stage, config_file=root / "configs" / "regime" / f"{stage}.yaml").identity()
    assert ours == suite


def test_plan_says_which_layer_set_each_key(tmp_path):
    """`--plan`'s provenance: a key set by every variant of a comparison is the comparison's, the rest of a
    step's overrides the variant's; the regime, the mode, a --config file and the budget name themselves."""
    from ablations import connector

    (tmp_path / "wd.yaml").write_text("optim: {weight_decay: 0.02, lr: 9.0}\n")
    plan = Runner(cli("x", ["--quick", "--config", str(tmp_path / "wd.yaml"), "--out", str(tmp_path)]))
    c = connector.comparison(True)
    linear = next(v for v in c.variants if v.name == "linear")
    ((stage, keys),) = plan.provenance(c, linear, 1)
    assert stage == "instruct"
    assert keys["model.connector.kind"] == ("linear", "variant")
    assert keys["model.freeze_vision"] == (True, "comparison")
    assert keys["optim.lr"] == (2e-3, "regime")  # the regime overrides the --config file's lr
    assert keys["optim.weight_decay"] == (0.02, "--config")
    assert keys["optim.warmup_steps"] == (10, "mode")
    assert keys["seed"] == (1, "budget") and "save_every" not in keys  # not part of what a job computes
    assert "model.llm.hidden_size" not in keys  # a lab default


@pytest.mark.parametrize("name", ["connector", "held_out"])
def test_plan_trains_nothing_for_one_comparison_or_the_sweep(name, tmp_path, capsys):
    import lab.train
    from ablations.__main__ import main

    with mock.patch.object(lab.train, "train", side_effect=RuntimeError("trained")):
        assert main([name, "--smoke", "--quick", "--out", str(tmp_path), "--plan"]) == 0
    assert "jobs found" in capsys.readouterr().out
    assert not (tmp_path / "jobs.jsonl").exists()
