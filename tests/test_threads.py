"""`lab train` takes its share of the CPUs: affinity, cgroup quota, other lab trainings."""

from __future__ import annotations

import os
import subprocess
import sys

from lab.train import threads


def test_cpu_budget_reads_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert threads.cpu_budget(quota) == 4
    quota.write_text("200000 100000\n")  # 2 CPUs' worth of time
    assert threads.cpu_budget(quota) == 2
    quota.write_text("50000 100000\n")  # half a CPU: still one thread
    assert threads.cpu_budget(quota) == 1
    assert threads.cpu_budget(tmp_path / "missing") == 4


def test_running_trainings_share_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / str(other.pid)).touch()  # another lab training, alive
        (tmp_path / "999999999").touch()  # a dead one: cleaned up, not counted
        n, why = threads.auto_threads(tmp_path, tmp_path / "no-quota")
        assert n == 1 and "2 CPU(s) available, 1 other lab training(s) running" in why
        assert not (tmp_path / "999999999").exists()
        threads.unregister(tmp_path)
        other.kill()
        other.wait()
        assert threads.auto_threads(tmp_path, tmp_path / "no-quota")[0] == 2  # alone again
    finally:
        other.kill()
        threads.unregister(tmp_path)


def test_cli_says_how_many_threads_and_refuses_zero(tmp_path, capsys, caplog):
    from lab.cli import main

    base = ["train", "--stage", "lm", "--quick", "--max-steps", "1", "--no-progress", "batch_size=4"]
    assert main([*base, "--out", str(tmp_path / "a"), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    with caplog.at_level("INFO", logger="lab"):
        assert main([*base, "--out", str(tmp_path / "b"), "--threads", "1"]) == 0
    assert "1 torch thread(s) (--threads)" in caplog.text
