"""The training loop: AdamW + warmup/cosine, clipping, accumulation, DDP, exact resume.

Determinism is by construction: sample `i` of the training stream is a pure function of `i`,
so the data position is one integer; weights, optimizer, scheduler and RNG states are saved
with it. A resumed run therefore computes exactly the losses an uninterrupted one would.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import re
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

import lab
from lab.config import ConfigError
from lab.convert.configs import UnsupportedModelError
from lab.convert.retrieval import from_stage1
from lab.data import scene_tokenizer
from lab.data.image_processor import scene_processor
from lab.data.llava import BadRecord, llava_texts, read_records
from lab.data.tokenizer import HFTokenizer, WordTokenizer, load_tokenizer
from lab.rundir import RunDir
from lab.train.checkpoint import (
    config_difference,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    state_tensors,
    truncate_metrics,
)
from lab.train.config import TrainConfig
from lab.train.loader import default_workers, pop_skipped, step_batches, to_device
from lab.train.parallel import Parallel
from lab.train.stages import COMPONENTS, Stage, build_stage
from lab.versions import versions

log = logging.getLogger("lab")


class RunError(RuntimeError):
    """A run that cannot start or continue as asked (resume mismatch, existing output...)."""


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: gloo on CPU, nccl on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_sum(x: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def lr_lambda(cfg: TrainConfig):
    warm, total, floor = cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def run_tokenizer(cfg: TrainConfig, init: list[Path]):
    """The scene tokenizer, or one fit to LLaVA data. An --init run's scene tokenizer must be the
    same or a prefix of it: a family added since brings words appended after the old ones
    (`lab.data.tasks.vocabulary`), every old id keeps its meaning, and the new words start from the
    untrained rows of the embedding. An --init folder with a transformers tokenizer (a pretrained
    LLM's) decides instead: its ids are what that LLM's embeddings mean; the image placeholder takes
    `model.image_token_id`."""
    saved = {d: load_tokenizer(d, image_id=cfg.model.image_token_id) for d in init}
    for d, other in saved.items():
        if isinstance(other, HFTokenizer):
            log.info("tokenizer: the transformers tokenizer of --init %s (image placeholder id %d)", d, other.image_id)
            return other
    if cfg.llava_data:
        tok = WordTokenizer.fit(llava_texts(read_records(cfg.llava_data)[0]))
    else:
        tok = scene_tokenizer()
    for d, other in saved.items():
        if cfg.llava_data and isinstance(other, WordTokenizer):
            tok = other  # keep the vocabulary the initial weights were trained with
        elif isinstance(other, WordTokenizer) and other != tok:
            if tok.vocab[: len(other)] != other.vocab:
                raise RunError(
                    f"--init {d} was trained with a different tokenizer ({len(other)} vs {len(tok)} words, "
                    "and not a prefix of this one)"
                )
            log.info("tokenizer: %d words added since --init %s: %s", len(tok) - len(other), d, tok.vocab[len(other) :])
    return tok


def load_init(stage: Stage, folders: list[Path]) -> list[str]:
    """Copy the trained components of earlier runs into this stage's model; returns them all."""
    got: dict[str, Path] = {}
    own = stage.vlm.state_dict()
    for folder in folders:
        run = RunDir(folder).summary()
        comps = run.get("components", list(COMPONENTS))
        src = lab.load_pretrained(folder, merge_lora=True).state_dict()  # adapters folded in
        for comp in comps:
            if comp in got:
                raise RunError(f"component {comp!r} comes from both {got[comp]} and {folder}; give each once")
            got[comp] = folder
            keys = [k for k in own if k.startswith(comp + ".")]
            wrong = [k for k in keys if k in src and src[k].shape != own[k].shape]
            if wrong:
                raise RunError(
                    f"--init {folder}: {comp} tensors do not fit this config, e.g. {wrong[0]} "
                    f"{list(src[wrong[0]].shape)} vs {list(own[wrong[0]].shape)}"
                )
            found = [k for k in keys if k in src]
            if not found:
                raise RunError(f"--init {folder} has no {comp} tensors for this model")
            stage.vlm.load_state_dict({k: src[k] for k in found}, strict=False)
            left = sorted(set(keys) - set(found))
            unused = sorted(k for k in src if k.startswith(comp + ".") and k not in own)
            log.info(
                "init %s from %s (%d tensors)%s%s",
                comp,
                folder,
                len(found),
                f"; left at init: {left}" if left else "",
                f"; not used: {unused}" if unused else "",
            )
    return sorted(got)


_LOCK_FDS: set[int] = set()  # run-folder locks this process holds; loader workers close their copies


def _lock(out: Path):
    """An OS lock on `out/.lock`, held while this process lives: a second writer gets an error,
    and a lock left by a killed process is gone with it (its loader workers, which inherit the file
    at fork, close it first thing: `_LOCK_FDS`)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    f = open(RunDir(out).lock_file, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunError(f"another process is writing {out}; wait for it to finish or choose another --out") from None
    _LOCK_FDS.add(f.fileno())
    return f


def train(
    cfg: TrainConfig,
    out: str | Path,
    init: list[str | Path] = (),
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> dict:
    """Run one stage into `out`; returns the run summary (also written to `out/run.json`).

    `stop_at` pauses the run after that step (checkpoint and export written, LR schedule still
    that of `max_steps`); `resume=True` continues it, e.g. to evaluate along the way. `--resume`
    on a folder with no run yet starts one, as torchrun restarts expect."""
    lock = _lock(Path(out)) if os.environ.get("RANK", "0") == "0" else None
    try:
        return _train(cfg, Path(out), [Path(p) for p in init], resume, progress, stop_at)
    finally:
        if lock is not None:
            _LOCK_FDS.discard(lock.fileno())
            lock.close()


def _train(cfg: TrainConfig, out: Path, init: list[Path], resume: bool, progress: bool, stop_at: int | None) -> dict:
    rank, world, device = setup_distributed()
    main = rank == 0
    local = cfg.batch_size // world
    if cfg.batch_size % (world * cfg.grad_accum):
        raise RunError(
            f"batch_size {cfg.batch_size} must divide into {world} processes x {cfg.grad_accum} accumulation steps"
        )
    micro = local // cfg.grad_accum

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    tok = run_tokenizer(cfg, init)
    stage = build_stage(cfg, tok)
    inherited = load_init(stage, init)
    run = RunDir(out)
    if resume and run.trainable_file.exists():  # decide exactly as the run did, with or without --init now
        inherited = json.loads(run.trainable_file.read_text())["inherited"]
    decisions = stage.set_trainable(inherited)
    if not any(p.requires_grad for p in stage.parameters()):
        raise RunError(f"stage {cfg.stage} has nothing to train with these freeze settings")
    stage.to(device)
    if cfg.compile:
        for part in ("vision", "connector", "llm"):
            getattr(stage.vlm, part).compile()
        log.info("torch.compile: vision, connector and llm (compiled on the first step)")
    par = Parallel(cfg.strategy, world)
    par.shard(stage)  # FSDP: before the optimizer, which must hold the sharded parameters
    params = [p for p in stage.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=(0.9, cfg.optim.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    components = sorted(set(inherited) | set(stage.trained_components()))
    workers, why = default_workers(torch.get_num_threads())
    if cfg.data.workers is not None:
        workers, why = cfg.data.workers, f"{cfg.data.workers} loader worker(s) (data.workers)"
    log.info(why)
    data = stage.dataset("train", workers)  # bad records stop the run here, before its folder is written

    step, position, components = _start_or_resume(
        cfg, run, stage, par, opt, sched, tok, resume, inherited, decisions, components, main
    )

    model = par.wrap(stage)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()
    t_start, samples_done, launches_before, skipped = time.perf_counter(), 0, _kernel_launches(), 0
    stage.train()
    end = min(stop_at or cfg.max_steps, cfg.max_steps)
    loader = step_batches(
        data, stage.batch_fn(), position=position, steps=end - step, batch_size=cfg.batch_size, rank=rank,
        local=local, micro=micro, accum=cfg.grad_accum, workers=workers, pin=device.type == "cuda",
        close_fds=tuple(_LOCK_FDS),
    )  # fmt: skip

    def save() -> None:
        if main or par.fsdp:  # FSDP gathers the full state: every process takes part
            tensors, opt_state = par.model_state(stage), par.optimizer_state(stage, opt)
        if main:
            state = {"step": step, "position": position, "optimizer": opt_state}
            state |= {"scheduler": sched.state_dict(), "rng": rng_state(), "components": components}
            save_checkpoint(out, step, tensors, state)

    with _stop_signals() as stop, _StepLog(run, cfg, step, progress) if main else nullcontext() as record:
        while step < end:
            t0 = time.perf_counter()
            try:
                batches = next(loader)
            except BadRecord as e:  # decoding happens in the loader at this scale: stop cleanly, keep the steps
                save()
                # a worker's error arrives as its traceback's text: keep the last line, less the class name
                why = re.sub(r"^[\w.]*Bad(Image|Record): ", "", str(e).strip().splitlines()[-1])
                raise RunError(f"{why}; stopped at step {step} with a checkpoint: fix or remove the record and "
                               "--resume, or set bad_images=skip") from None  # fmt: skip
            skipped += pop_skipped(batches)
            batches = [to_device(b, device) for b in batches]
            loss = _accumulate(model, stage, par, batches, device, autocast, step, position)
            grad_norm = par.grad_norm(torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            position += cfg.batch_size
            samples_done += cfg.batch_size
            if main:
                record(step, loss, sched.get_last_lr()[0], grad_norm, time.perf_counter() - t0)
            interrupted = all_sum(float(stop["signal"]), device) > 0
            if step % cfg.save_every == 0 or interrupted or step == end:
                save()
            if interrupted:
                raise KeyboardInterrupt(f"interrupted at step {step}; checkpoint saved, continue with --resume")
    if skipped:
        log.warning(
            "bad_images=skip: %d sample(s) replaced by the next record for an image that did not decode", skipped
        )
    wall = time.perf_counter() - t_start
    summary = {
        "stage": cfg.stage,
        "components": components,
        "steps": step,
        "samples_per_s": samples_done / wall if wall > 0 else None,
        "trainable_parameters": sum(p.numel() for p in params),
        "world_size": world,
        "loader_workers": workers,
        "skipped_samples": skipped,  # bad_images=skip: replaced in the loader, and left out before step 1
        "left_out_records": getattr(getattr(data, "data", data), "left_out", 0),
        "versions": versions(),  # python, torch, transformers, triton, peft (lab.versions)
        "kernel_launches": dict(_kernel_launches() - launches_before),  # per Triton kernel: proof a fused path ran
    }
    if par.fsdp:  # export a plain copy of the stage, built from the gathered tensors
        full = par.model_state(stage)
        if main:
            stage = build_stage(cfg, tok)
            stage.load_state_dict(full)
    if main:
        export(stage, out, summary)
    if world > 1:
        dist.barrier()
    return summary


@contextlib.contextmanager
def _stop_signals():
    """SIGINT / SIGTERM set a flag instead of killing the step: the loop checkpoints, then stops."""
    stop = {"signal": 0}
    handlers = {sig: signal.signal(sig, lambda s, _f: stop.update(signal=s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)


class _StepLog:
    """Each step's record, on the main process: a line of metrics.jsonl, TensorBoard, the progress bar."""

    def __init__(self, run: RunDir, cfg: TrainConfig, step: int, progress: bool) -> None:
        self.batch, self.t_start = cfg.batch_size, time.perf_counter()
        self.file = open(run.metrics_file, "a")  # noqa: SIM115 - closed in __exit__
        self.writer = _tensorboard(run.root)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=step, desc=cfg.stage, unit="step", dynamic_ncols=True)

    def __enter__(self):
        return self

    def __call__(self, step: int, loss: float, lr: float, grad_norm: float, dt: float) -> None:
        rec = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "samples_per_s": self.batch / dt}
        rec["elapsed_s"] = time.perf_counter() - self.t_start
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.writer is not None:
            self.writer.add_scalar("loss", loss, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{self.batch / dt:.0f}")

    def __exit__(self, *exc) -> bool:
        self.file.close()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        return False


def _start_or_resume(cfg, run: RunDir, stage, par, opt, sched, tok, resume, inherited, decisions, components, main):
    """Load the newest intact checkpoint into stage, optimizer and schedule (`--resume`), or record
    a fresh run's config and freeze decisions. Returns (step, data position, components)."""
    out, step, position = run.root, 0, 0
    fresh = not resume
    if resume and not run.train_config_file.exists():
        log.info("--resume: %s holds no run yet; starting it", out)
        fresh = True
    elif resume:
        diff = config_difference(_saved_config(run), cfg.identity())
        if diff:
            raise RunError(f"--resume: {out} was trained with another config; differences: {diff}")
        ckpt = latest_checkpoint(out)
        if ckpt is None and any(run.checkpoints.glob("step-*")):
            raise RunError(f"--resume: no intact checkpoint under {run.checkpoints} (see the warnings above)")
        if ckpt is None:
            log.info("--resume: %s stopped before its first checkpoint; starting over with its saved config", out)
            fresh = True
        else:
            state = load_checkpoint(ckpt, par.loader(stage))
            par.load_optimizer(stage, opt, state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            step, position, components = state["step"], state["position"], state["components"]
            if main:
                truncate_metrics(run.metrics_file, step)
                log.info("resumed %s at step %d", ckpt, step)
    if fresh and main:
        if not resume and run.holds_run():
            raise RunError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        truncate_metrics(run.metrics_file, 0)
        run.train_config_file.write_text(json.dumps(cfg.identity(), indent=2))
        decided = {"inherited": sorted(inherited), "parts": [dataclasses.asdict(d) for d in decisions]}
        run.trainable_file.write_text(json.dumps(decided, indent=2))
        if isinstance(tok, WordTokenizer):
            tok.save(out)
        elif isinstance(tok, HFTokenizer):  # so that --init of this run finds the same ids
            tok.tok.save_pretrained(str(out))
    return step, position, components


def _accumulate(model, stage, par, batches, device, autocast, step, position) -> float:
    """Forward and backward over the micro-batches of one step; returns the mean loss per labelled
    token over every process (each micro-batch's loss is a sum, divided by the global token count)."""
    total = all_sum(float(sum(stage.count(b) for b in batches)), device)
    if total == 0:
        raise RunError(f"step {step + 1}: the batch has no labelled tokens (only prompts?)")
    loss_sum = 0.0
    for m, b in enumerate(batches):
        with par.sync(model, last=m == len(batches) - 1), autocast:
            part = model(b)
        (part * par.world / total).backward()  # DDP and FSDP average over processes; undo that
        loss_sum += part.detach().float().item()
    loss = all_sum(loss_sum, device) / total
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {step + 1} (data position {position}); stopping")
    return loss


def export(stage: Stage, out: Path, summary: dict) -> None:
    """The run's result as a model folder: `lab.load_pretrained(out)` and `--init out` read it."""
    lab.save_pretrained(stage.vlm, out)
    # How this run's training prepared its images (scenes and LLaVA JSON alike: a square resize, x / 127.5 - 1),
    # so that generate, eval and transformers' own processor prepare them the same way.
    scene_processor(stage.vlm.cfg.vision.image_size).save(out)
    run = RunDir(out)
    if stage.aux is not None:
        run.heads_file.parent.mkdir(exist_ok=True)
        save_file(state_tensors(stage.aux), run.heads_file)
    if stage.name == "stage1":  # the run as transformers' Blip2ForImageTextRetrieval, where its ViT has that layout
        try:
            lab.save_pretrained(from_stage1(stage.vlm, stage.aux), run.retrieval)
        except UnsupportedModelError as e:
            log.info("stage 1: no %s written (%s)", run.retrieval, e)
    run.summary_file.write_text(json.dumps(summary, indent=2))


def _saved_config(run: RunDir) -> dict:
    """The run's saved config as this version reads it: keys renamed since (Config.RENAMED) take
    their new names and keys added since take their defaults, so an older run folder still resumes.
    One that no longer parses is compared as written, and the difference names the key."""
    saved = json.loads(run.train_config_file.read_text())
    try:
        return TrainConfig.from_dict(saved).identity()
    except (ConfigError, TypeError):
        return saved


def _kernel_launches() -> collections.Counter:
    """Triton launches so far in this process, per kernel (`lab_kernels.launches`); empty while no fused
    path has imported the kernels (importing them here would import triton before a caller's
    TRITON_INTERPRET)."""
    kernels = sys.modules.get("lab_kernels")
    return collections.Counter(kernels.launches if kernels else {})


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
