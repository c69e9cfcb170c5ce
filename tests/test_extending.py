"""docs/extending.md, followed as written in a temporary copy of the repository: a pooling connector,
a question family and a comparison variant are added, smoke jobs train, answers decode to real words,
the report builds, and the committed quick ledger's records are all still found."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
# Where each block goes: the doc's marker comment, then a python block.
MARKER = re.compile(r"<!-- (?P<where>[^\n]+?) -->\n```python\n(?P<code>.*?)```", re.S)


def recipe_edits() -> list[tuple[str, str]]:
    return [(m["where"], m["code"]) for m in MARKER.finditer(DOC.read_text())]


def apply(copy: Path, where: str, code: str) -> None:
    """One marker: 'append to F', 'in F, after the line: X', 'in F, before the line: X', 'in F, at the
    end of NAME' (inside the dict literal NAME, before its closing brace)."""
    if where.startswith("append to "):
        path = copy / where.removeprefix("append to ")
        path.write_text(path.read_text() + "\n\n" + code)
        return
    m = re.fullmatch(r"in (?P<file>\S+), (?P<how>after the line|before the line|at the end of):? (?P<what>.+)", where)
    assert m, f"docs/extending.md: a marker the test cannot follow: {where!r}"
    path = copy / m["file"]
    text = path.read_text()
    if m["how"] == "at the end of":
        start = text.index(f"\n{m['what']}: ")
        close = text.index("\n}\n", start)
        text = text[: close + 1] + code + text[close + 1 :]
    else:
        line = next(ln for ln in text.splitlines(keepends=True) if ln.strip() == m["what"].strip())
        i = text.index(line)
        text = (
            text[: i + len(line)] + code + text[i + len(line) :]
            if m["how"] == "after the line"
            else text[:i] + code + text[i:]
        )
    path.write_text(text)


def run(copy: Path, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{copy / 'kernels'}", "LAB_CACHE_DIR": str(copy / "cache")}
    r = subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def found(plan: str) -> tuple[int, int]:
    m = re.search(r"quick/jobs.jsonl: (\d+) of (\d+) jobs found", plan)
    assert m, plan
    return int(m[1]), int(m[2])


def test_the_recipes_work_as_written(tmp_path):
    copy = tmp_path / "lab"
    skip = shutil.ignore_patterns("__pycache__", "_runs", "*.png")
    for part in ("lab", "ablations", "kernels", "docs"):
        shutil.copytree(ROOT / part, copy / part, ignore=skip)
    before = found(run(copy, "-m", "ablations", "--quick", "--plan"))
    assert before[0] == before[1] > 0  # every committed quick record is current

    edits = recipe_edits()
    assert [w.split(",")[0].split()[-1] for w, _ in edits] == [
        "lab/models/connectors.py",
        "lab/models/connectors.py",
        "lab/data/tasks.py",
        "lab/data/tasks.py",
        "ablations/connector.py",
    ]
    for where, code in edits[:2] + edits[4:]:  # the connector and its variant
        apply(copy, where, code)
    plan = run(copy, "-m", "ablations", "--quick", "--plan")
    assert found(plan) == (before[0], before[1] + 3), plan  # every old record, and the 3 seeds of pool_2x2
    assert "3 not in the ledger" in plan

    for where, code in edits[2:4]:  # the family
        apply(copy, where, code)
    plan = run(copy, "-m", "ablations", "--quick", "--plan")
    assert found(plan)[0] == before[0], plan  # still found; said to retrain for the family's score
    assert f"{before[0]} of those found predate the families ['shape_at']" in plan

    out = copy / "smoke"
    run(copy, "-m", "ablations", "connector", "--smoke", "--quick", "--out", str(out))
    results = json.loads((out / "connector" / "results.json").read_text())
    pool = [r for r in results["runs"] if r["variant"] == "pool_2x2"]
    assert pool and "acc_shape_at" in pool[0]["metrics"]
    assert pool[0]["metrics"]["chance_shape_at"] == pytest.approx(1 / 5)  # four shapes or "nothing"
    assert pool[0]["metrics"]["llm_tokens_per_image"] == 4
    check = (
        "import sys; from lab.data import load_tokenizer; from lab.data.tasks import FAMILY, ANY_SCENE;"
        "tok = load_tokenizer(sys.argv[1]);"
        "answers = FAMILY['shape_at'].answer_set(ANY_SCENE);"
        "assert all(tok.unk_id not in tok.encode(a) and tok.decode(tok.encode(a)) == a for a in answers), answers;"
        "print(tok.vocab[-3:])"
    )
    final = out / "_runs" / "connector" / "pool_2x2" / "seed0" / "instruct"
    assert "nothing" in run(copy, "-c", check, str(final))
    run(copy, "-m", "ablations.report", str(out))
    assert "pool_2x2" in (out / "connector" / "table.md").read_text()
