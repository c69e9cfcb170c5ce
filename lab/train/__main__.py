"""`python -m lab.train --stage {vision,lm,stage1,stage2,instruct} --out DIR [options] [key=value ...]`"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lab.config import ConfigError
from lab.train.config import STAGE_NAMES, build_config, parse_overrides


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab.train",
        description="Train one stage. Config overrides: key=value or --key=value, e.g. model.llm.num_layers=4",
    )
    p.add_argument("--stage", required=True, choices=STAGE_NAMES, help="which training stage to run")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoints/, the trained model")
    p.add_argument(
        "--init", action="append", default=[], help="earlier run folder(s) whose trained parts to start from"
    )
    p.add_argument("--max-steps", type=int, help="total optimizer steps of the run (sets the LR schedule)")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quick", action="store_true", help="settings that finish in about a minute on 2 CPU cores")
    p.add_argument("--config", help="YAML file with config values (applied after the stage preset)")
    p.add_argument("--data", help="LLaVA-format JSON instead of generated scenes (stage2, instruct)")
    p.add_argument("--image-folder", help="folder holding the images named in --data")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads", type=int, help="torch threads (default: this process's CPUs / lab trainings running now)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args, rest = parser().parse_known_args(argv)
    try:
        overrides = parse_overrides(_pairs(rest))
        for key, value in (
            ("max_steps", args.max_steps),
            ("save_every", args.save_every),
            ("seed", args.seed),
            ("llava_data", args.data),
            ("image_folder", args.image_folder),
        ):
            if value is not None:
                overrides[key] = value
        cfg = build_config(args.stage, args.quick, args.config, overrides)
    except ConfigError as e:
        if os.environ.get("LAB_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    import torch

    from lab.train import threads
    from lab.train.trainer import RunError, train

    n, why = threads.auto_threads()  # registers this training, so the next one counts it
    if args.threads is not None:
        n, why = args.threads, f"{args.threads} torch thread(s) (--threads)"
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    logging.getLogger("lab").info(why)
    try:
        summary = train(cfg, args.out, args.init, args.resume, progress=not args.no_progress)
    except (RunError, FileNotFoundError, ValueError, FloatingPointError) as e:
        if os.environ.get("LAB_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"{e}", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(before)  # an in-process caller keeps its own setting
        threads.unregister()
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per torchrun process
        print(f"done: {summary['steps']} steps, {summary['samples_per_s']:.0f} samples/s -> {args.out}")
    return 0


def _pairs(rest: list[str]) -> list[str]:
    """['--a.b', '3', 'c=1', '--d=2'] -> ['a.b=3', 'c=1', 'd=2']"""
    out, i = [], 0
    while i < len(rest):
        item = rest[i]
        if item.startswith("--") and "=" not in item:
            if i + 1 >= len(rest):
                raise ConfigError(f"option {item} needs a value")
            out.append(f"{item[2:]}={rest[i + 1]}")
            i += 2
            continue
        if not item.startswith("--") and "=" not in item:
            raise ConfigError(f"unrecognized argument {item!r}; config overrides look like key=value")
        out.append(item.lstrip("-"))
        i += 1
    return out


if __name__ == "__main__":
    sys.exit(main())
