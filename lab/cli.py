"""The `lab` command: train, eval, generate, chat, scene, check, ablate, bench.

lab train --stage instruct --out runs/x --config configs/instructblip_tiny.yaml --model.connector linear
lab eval --checkpoint runs/x --out runs/x/eval.json
lab scene --out scene.png                  # a generated scene image, with its question and answer
lab generate --checkpoint runs/x --image scene.png --prompt "what color is the circle ?"
lab chat --checkpoint llava-1.5-7b-hf --image photo.jpg   # a conversation, the reply printed as it is generated
lab check --data llava_v1_5_mix665k.json --image-folder data/   # decode every image ahead of time, in parallel
lab ablate [all|connector|instruction_aware|frozen_encoders|stage1|held_out] --quick
lab bench [--cpu]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _model_and_processor(checkpoint: str, image: str):
    """(model, processor, PIL image) or an error line."""
    from PIL import Image

    import lab

    if not Path(image).exists():
        raise FileNotFoundError(f"--image {image} does not exist")
    model = lab.load_pretrained(checkpoint)
    processor = lab.load_processor(checkpoint, cfg=model.cfg)
    with Image.open(image) as im:
        return model, processor, im.convert("RGB")


def generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lab generate", description="Answer a prompt about one image")
    p.add_argument("--checkpoint", required=True, help="a trained run folder (or any lab/transformers model folder)")
    p.add_argument("--image", required=True, help="an image file (prepared by the checkpoint's image processor)")
    p.add_argument("--prompt", required=True, help="the question or instruction")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--verbatim", action="store_true", help="send the prompt as typed, without the chat template")
    args = p.parse_args(argv)
    from lab.eval import replies

    try:
        model, processor, image = _model_and_processor(args.checkpoint, args.image)
        batch = processor(images=image, text=args.prompt, verbatim=args.verbatim)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(replies(model, processor, batch, args.max_new_tokens)[0])
    return 0


class _Printer:
    """A streamer for `generate`: prints each new piece of the reply as its token arrives."""

    def __init__(self, processor) -> None:
        self.processor, self.ids, self.shown = processor, [], ""

    def put(self, token) -> None:
        self.ids += token[0].tolist()
        text = self.processor.decode(self.ids)
        print(text[len(self.shown) :], end="", flush=True)
        self.shown = text

    def end(self) -> None:
        print(flush=True)


def chat(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lab chat", description="A conversation about one image, in the terminal")
    p.add_argument("--checkpoint", required=True, help="a trained run folder (or any lab/transformers model folder)")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args(argv)
    from lab.eval import replies

    try:
        model, processor, image = _model_and_processor(args.checkpoint, args.image)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    multi = processor.placement == "lab" or processor.chat_template is not None
    if not multi:
        print("note: this checkpoint has no chat template; each question is answered on its own", file=sys.stderr)
    print("an empty line or end of input ends the chat", file=sys.stderr)
    turns: list[tuple[str, str]] = []
    while True:
        print("USER: ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            print()
            return 0
        turns = [*turns, ("user", line.strip())] if multi else [("user", line.strip())]
        try:
            batch = processor(images=image, conversations=[turns])
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print("ASSISTANT: ", end="", flush=True)
        reply = replies(model, processor, batch, args.max_new_tokens, streamer=_Printer(processor))[0]
        turns.append(("assistant", reply))


def scene(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lab scene", description="Write one generated scene image with its question")
    p.add_argument("--out", default="scene.png", help="the image file to write")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--index", type=int, default=0, help="which sample of the split")
    p.add_argument("--size", type=int, help="image side in pixels (default: the scene data's)")
    args = p.parse_args(argv)
    from PIL import Image

    from lab.data import SceneDataConfig, SceneTasks
    from lab.data.tokenizer import IMAGE

    cfg = SceneDataConfig()
    if args.size:
        cfg = cfg.replace(scene=cfg.scene.replace(image_size=args.size))
    sample = SceneTasks(cfg, args.split)[args.index]
    Image.fromarray(sample.image).save(args.out)
    print(f"{args.out}: question {sample.turns[0][1].replace(IMAGE, '').strip()!r}, answer {sample.turns[1][1]!r}")
    return 0


def check(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lab check", description="Check a LLaVA JSON data set ahead of training: every record's turns, "
        "and every image decoded, in parallel; the results are cached, so training re-checks nothing unchanged"
    )  # fmt: skip
    p.add_argument("--data", required=True, help="LLaVA-format JSON")
    p.add_argument("--image-folder", required=True, help="folder holding the images named in --data")
    p.add_argument("--workers", type=int, default=None, help="processes (default: the CPUs available)")
    args = p.parse_args(argv)
    import logging
    import time

    from lab.data.llava import LlavaJSON
    from lab.train.threads import cpu_budget

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    try:
        data = LlavaJSON(args.data, args.image_folder, None, workers=args.workers or cpu_budget(), decode=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.data}: {len(data)} records usable, every image decoded ({time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train", "eval", "generate", "chat", "scene", "check", "ablate", "bench"}
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
    if cmd in ("generate", "chat", "scene", "check"):
        return {"generate": generate, "chat": chat, "scene": scene, "check": check}[cmd](rest)
    if cmd == "ablate":
        from ablations.__main__ import main as ablate  # one registry of comparisons: ablations.registry

        return ablate(rest)
    import os

    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if "--cpu" in rest else {})}  # must precede `import triton`
    return subprocess.call([sys.executable, "-m", "benchmarks.kernels", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
