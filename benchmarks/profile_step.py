"""Where a training step's time goes: lab vs transformers on the same converted weights (the model
and batch of `test_model_speed.py`), with torch.profiler, on the CPU.

    python -m benchmarks.profile_step [--tag before] [--steps 10] [--compile]

Writes benchmarks/results/profile_step_<tag>.txt: each implementation's median step time, their
ratio, and the five ops with the most self CPU time. `--compile` adds a third contender: a second
copy of lab's model whose vision encoder, connector and LLM are torch.compiled (the trainer's
`compile` flag).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.test_model_speed import build
from lab.convert import from_transformers
from tests import hf_factory as F

RESULTS = Path(__file__).parent / "results"


def steps(hf, lab, px, ids, mask, instr, compiled=None):
    labels = ids.masked_fill(ids == F.IMAGE_TOKEN, -100)

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(px, ids, mask, instruction_ids=instr, labels=labels).loss.backward()

        return run

    def hf_step():
        hf.zero_grad(set_to_none=True)
        hf(pixel_values=px, input_ids=ids, attention_mask=mask, qformer_input_ids=instr, labels=labels).loss.backward()

    hf.train(), lab.train()
    fns = {"lab": step(lab), "transformers": hf_step}
    if compiled is not None:
        compiled.train()
        fns["lab+compile"] = step(compiled)
    return fns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", default="now")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    hf, lab, *batch = build()
    compiled = None
    if args.compile:
        compiled = from_transformers(hf, connector={"qformer": {"attention_dropout": 0.0, "hidden_dropout": 0.0}})
        for part in ("vision", "connector", "llm"):
            getattr(compiled, part).compile()
    fns = steps(hf, lab, *batch, compiled=compiled)
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn(), fn()  # warm-up (and compilation)
    for _ in range(args.steps):  # interleaved, so drift in machine load hits both alike
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"threads {torch.get_num_threads()}, {args.steps} interleaved steps each, median seconds per step"]
    lines += [f"  {k}: {v:.4f}" for k, v in med.items()]
    for name in (k for k in med if k != "transformers"):
        lines.append(f"  ratio {name} / transformers: {med[name] / med['transformers']:.3f}")
    for name, fn in fns.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fn()
        lines += ["", f"{name}: top 5 ops by self CPU time (3 steps)"]
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=5, max_name_column_width=40))
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"profile_step_{args.tag}.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
