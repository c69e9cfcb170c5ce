"""The `lab` command: train, eval, generate, ablate, bench.

lab train --stage instruct --out runs/x --config configs/instructblip_tiny.yaml --model.connector linear
lab eval --checkpoint runs/x --out runs/x/eval.json
lab generate --checkpoint runs/x --image cat.png --prompt "what color is the circle ?"
lab ablate [all|connector|instruction_aware|frozen_encoders|stage1|held_out] --quick
lab bench [--cpu]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lab generate", description="Answer a prompt about one image")
    p.add_argument("--checkpoint", required=True, help="a trained run folder (or any lab/transformers model folder)")
    p.add_argument("--image", required=True, help="an image file (resized to the model's image size)")
    p.add_argument("--prompt", required=True, help="the question or instruction")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    import numpy as np
    from PIL import Image

    import lab
    from lab.data import Sample, load_tokenizer
    from lab.eval import answer

    if not Path(args.image).exists():
        print(f"error: --image {args.image} does not exist", file=sys.stderr)
        return 1
    try:
        model = lab.load_pretrained(args.checkpoint)
        tok = load_tokenizer(args.checkpoint, model.cfg.image_token_id)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = model.cfg.vision.image_size
    with Image.open(args.image) as im:
        pixels = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.uint8)
    sample = Sample(pixels, [("human", f"<image> {args.prompt}"), ("gpt", "")])
    print(answer(model, tok, [sample], args.max_new_tokens)[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train", "eval", "generate", "ablate", "bench"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; choose one of {sorted(commands)}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        from lab.train.__main__ import main as train_main

        return train_main(rest)
    if cmd == "eval":
        from lab.eval import main as eval_main

        return eval_main(rest)
    if cmd == "generate":
        return generate(rest)
    if cmd == "ablate":
        from ablations.__main__ import main as ablate  # one registry of comparisons: ablations.registry

        return ablate(rest)
    import os

    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if "--cpu" in rest else {})}  # must precede `import triton`
    return subprocess.call([sys.executable, "-m", "benchmarks.kernels", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
