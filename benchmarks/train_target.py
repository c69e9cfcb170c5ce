"""#4 target: stage 0 then instruction tuning of a small VLM (LLaVA's recipe by default), held-in
accuracy on 3-object scenes against wall-clock time (2 CPU cores).

    python benchmarks/train_target.py --out benchmarks/results/train_target [--connector mlp --stage2-steps 600]

Every stage runs in the ablation regime (`ablations.regime.REGIME`, `STAGE`): 48 px scenes,
patch 8, 4-layer ViT and LLM, the ViT's dense stage-0 loss, the LM's family mix. Instruction tuning
follows the connector comparison's recipe (stage-0 ViT frozen, connector and LLM tuned); with
`--stage2-steps`, the connector is first aligned with both encoders frozen (LLaVA's stage 1).

Held-in accuracy (question families; caption is scored by slot recall) is measured on the
validation split after each chunk of instruct steps, and on the test split at the end.
`train_wall_s` counts training time only (stage 0 included), not evaluation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import lab
from ablations.regime import REGIME, STAGE
from lab.data import SceneDataConfig, load_tokenizer
from lab.eval import evaluate_scenes
from lab.train import build_config, train
from lab.train.config import parse_overrides

THREE = {"data.scene.min_objects": 3, "data.scene.max_objects": 3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/train_target")
    p.add_argument("--vision-steps", type=int, default=1000)
    p.add_argument("--lm-steps", type=int, default=4000)
    p.add_argument("--stage2-steps", type=int, default=0, help="caption pretraining of the connector first (0: none)")
    p.add_argument("--instruct-steps", type=int, default=3000)
    p.add_argument("--chunks", type=int, default=4, help="evaluate on val after each chunk of instruct steps")
    p.add_argument("--connector", default="linear", help="connector kind (stage 2 and instruct)")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for instruct")
    args = p.parse_args()
    out = Path(args.out)
    work = out / "_runs"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    curve = []

    def cfg(stage: str, **o):
        return build_config(stage, overrides={**REGIME, **STAGE.get(stage, {}), **o})

    train(cfg("vision", max_steps=args.vision_steps, **THREE), work / "vision", progress=False)
    train(cfg("lm", max_steps=args.lm_steps), work / "lm", progress=False)
    init = [work / "vision", work / "lm"]
    if args.stage2_steps:
        s2 = cfg("stage2", max_steps=args.stage2_steps, **THREE, **{"model.connector.kind": args.connector})
        train(s2, work / "stage2", init=init, progress=False)
        init = [work / "stage2"]
    t_stage0 = time.perf_counter() - t0  # all pretraining before instruction tuning
    train_s = t_stage0
    extra = parse_overrides(args.set)
    data = SceneDataConfig.from_dict({"scene": {"min_objects": 3, "max_objects": 3, "image_size": 48}})
    recipe = {"model.connector.kind": args.connector, "model.freeze_vision": True, "model.freeze_llm": False}
    instruct = cfg("instruct", max_steps=args.instruct_steps, **THREE, **{**recipe, **extra})
    for c in range(1, args.chunks + 1):  # one run, paused after each chunk to evaluate
        stop = args.instruct_steps * c // args.chunks
        t1 = time.perf_counter()
        train(
            instruct,
            work / "instruct",
            init=init if c == 1 else [],
            resume=c > 1,
            progress=False,
            stop_at=stop,
        )
        train_s += time.perf_counter() - t1
        model, tok = lab.load_pretrained(work / "instruct"), load_tokenizer(work / "instruct")
        res = evaluate_scenes(model, tok, data, per_family=64, split="val")
        curve.append(
            {
                "instruct_step": stop,
                "train_wall_s": train_s,
                "val_held_in_acc": res["held_in_acc"],
                "val_acc": res["acc"],
            }
        )
        print(json.dumps(curve[-1]), flush=True)
    test = evaluate_scenes(model, tok, data, per_family=100, split="test")
    result = {"pretrain_wall_s": t_stage0, "curve": curve, "test": test, "args": vars(args)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"test_held_in_acc": test["held_in_acc"], "train_wall_s": curve[-1]["train_wall_s"]}))


if __name__ == "__main__":
    main()
