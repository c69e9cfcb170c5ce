"""Evaluation of one ablation run: exact match on val and test with its own standard error,
chance levels per question family, and how far a tuned ViT drifted from its stage-0 heads."""

from __future__ import annotations

import math
from pathlib import Path

from lab.rundir import RunDir


def evaluate(model, final: Path, eval_overrides: dict, per_family: int, seed: int) -> dict:
    """Held-in / held-out exact match on val and test, per-family test accuracy, and the
    evaluation's own standard error (binomial, per family, propagated to the family mean)."""
    import torch

    from lab.data import SceneDataConfig, load_tokenizer
    from lab.eval import QA_HELD_IN, evaluate_scenes
    from lab.train.config import set_override

    tok = load_tokenizer(final)
    data = RunDir(final).train_config()["data"]
    data["pool"] = 0  # a small tuning pool is still tested on the whole distribution
    for k, v in eval_overrides.items():
        set_override(data, k, v)
    data = SceneDataConfig.from_dict(data)
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        torch.manual_seed(seed)
        res = evaluate_scenes(model, tok, data, per_family=per_family, split=split, caption_samples=64)
        prefix = "" if split == "test" else "val_"
        metrics[prefix + "held_in_acc"] = res["held_in_acc"]
        metrics[prefix + "held_out_acc"] = res["held_out_acc"]
        metrics[prefix + "held_out_ranked_acc"] = res["held_out_ranked_acc"]
        held_in = [res["acc"][f] for f in QA_HELD_IN if f in res["acc"]]
        metrics[prefix + "held_in_eval_se"] = eval_se(held_in, per_family)
        if split == "test":
            metrics.update({f"acc_{k}": a for k, a in res["acc"].items()})
            metrics.update({f"ranked_{k}": a for k, a in res["acc_ranked"].items()})
            metrics.update({f"chance_{k}": c for k, c in chance(data).items()})
            metrics["caption_slot_recall"] = res["caption_slot_recall"]
    return metrics


def chance(data) -> dict[str, float]:
    """Uniform guessing over each question family's possible answers, for these scenes."""
    from lab.data.tasks import FAMILY

    return {name: fam.chance(data.scene) for name, fam in FAMILY.items() if fam.answers is not None}


def eval_se(accs: list[float], n: int) -> float:
    """Standard error of a mean of family accuracies, each measured on n questions."""
    return math.sqrt(sum(p * (1 - p) / n for p in accs)) / len(accs) if accs else float("nan")


def retrieval(model, vision_run: Path, final: Path, n: int = 64, batch: int = 32) -> float:
    """Top-1 image->caption retrieval (batches of 32, val split) of `model`'s vision encoder,
    scored with the stage-0 contrastive heads: how much a tuned encoder drifted from them."""
    import torch
    from safetensors.torch import load_file

    from lab.data import SceneDataConfig, SceneTasks, load_tokenizer, pixels
    from lab.data.collate import text_ids
    from lab.models.clip import ClipConfig, ContrastiveHeads, retrieval_accuracy

    tok = load_tokenizer(final)
    cfg = RunDir(vision_run).train_config()
    heads = ContrastiveHeads(ClipConfig.from_dict(cfg["clip"]), model.cfg.vision.hidden_size, len(tok))
    heads.load_state_dict(load_file(RunDir(vision_run).heads_file))
    heads.to(next(model.parameters()).device)
    ds = SceneTasks(SceneDataConfig.from_dict(cfg["data"]), "val")
    accs = []
    with torch.no_grad():
        for i in range(0, n, batch):
            samples = [ds[j] for j in range(i, i + batch)]
            ids, mask = text_ids([s.turns[-1][1] for s in samples], tok)
            dev = next(model.parameters()).device
            image = model.vision(pixels([s.image for s in samples]).to(dev))
            accs.append(retrieval_accuracy(heads.similarity(image, ids.to(dev), mask.to(dev))))
    return sum(accs) / len(accs)
