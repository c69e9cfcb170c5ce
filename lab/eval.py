"""Evaluation: exact match per task family (held-in and held-out), caption slot recall, cost.

`python -m lab.eval --checkpoint DIR [--data PATH.json --image-folder DIR] --out FILE`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

import lab
from lab.data import (
    FAMILIES,
    HELD_OUT,
    Collator,
    LlavaJSON,
    SceneDataConfig,
    SceneTasks,
    normalize,
    slot_recall,
)
from lab.data.datasets import as_text
from lab.data.tasks import ANSWER_SETS, MIN_OBJECTS, QA_HELD_IN, TEMPLATES, unknown_words
from lab.data.tokenizer import IMAGE, load_tokenizer
from lab.models import VisionLanguageModel
from lab.models.vlm import llm_logits
from lab.rundir import RunDir


def collator_for(model: VisionLanguageModel, tok) -> Collator:
    q = model.cfg.connector.qformer
    return Collator(tok, model.cfg.image_tokens, instruction=bool(q and q.instruction_aware))


@torch.no_grad()
def answer(model: VisionLanguageModel, tok, samples, max_new_tokens: int = 8, collator=None) -> list[str]:
    """Greedy replies to the samples' last human turn."""
    collator = collator or collator_for(model, tok)
    batch = collator(samples, prompt_only=True)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model.generate(
        batch["pixel_values"],
        batch["input_ids"],
        batch["attention_mask"],
        batch.get("instruction_ids"),
        batch.get("instruction_mask"),
        max_new_tokens=max_new_tokens,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    replies = []
    start = 1 if model.cfg.llm.family == "t5" else batch["input_ids"].shape[1]  # T5 returns decoder tokens
    for row in out[:, start:].tolist():
        if tok.eos_id in row:
            row = row[: row.index(tok.eos_id)]
        replies.append(tok.decode(row))
    return replies


@torch.no_grad()
def replies(model: VisionLanguageModel, processor, batch: dict, max_new_tokens: int = 32, streamer=None) -> list[str]:
    """Greedy replies to a processor's batch (`lab.load_processor`), decoded as the checkpoint's tokenizer does."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model.generate(
        **batch, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer, **processor.generation_ids()
    )
    start = 0 if model.cfg.llm.family == "t5" else batch["input_ids"].shape[1]  # T5 returns decoder tokens
    eos = processor.generation_ids().get("eos_token_id")
    rows = [r[: r.index(eos)] if eos in r else r for r in out[:, start:].tolist()]
    return [processor.decode(r).strip() for r in rows]


@torch.no_grad()
def rank(model: VisionLanguageModel, tok, samples, candidates, collator=None) -> list[str]:
    """For each sample, the candidate answer the model finds most likely after the prompt (log-
    likelihood summed over the answer's tokens and <eos>): InstructBLIP's "vocabulary ranking" for
    held-out tasks with a closed answer set. Unlike generation, it cannot reply outside the set.
    Samples without an image are read by the LLM alone (pass a text collator: `Collator(tok, 0)`)."""
    collator = collator or collator_for(model, tok)
    device = next(model.parameters()).device
    scores = []
    for c in candidates:
        batch = collator([dataclasses.replace(s, turns=[*s.turns[:-1], (s.turns[-1][0], c)]) for s in samples])
        batch = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in batch:
            logits = model(
                batch["pixel_values"],
                batch["input_ids"],
                batch["attention_mask"],
                batch.get("instruction_ids"),
                batch.get("instruction_mask"),
            ).logits[:, :-1]
        else:  # text-only samples: the LLM alone reads them
            ids = batch["input_ids"]
            logits = llm_logits(model.llm, model.llm.embed(ids), ids, batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        scores.append((logp * (labels != -100)).sum(1))
    best = torch.stack(scores, 1).argmax(1).tolist()
    return [candidates[i] for i in best]


@torch.no_grad()
def through_words(
    model: VisionLanguageModel, tok, samples, candidates, request: str, max_new_tokens: int, collator=None
) -> tuple[list[str], list[str]]:
    """Caption, then answer from the caption as text: the model describes each sample's image
    (`request`, a human turn holding <image>), and its own LLM, with no image, ranks the candidate
    answers to the sample's question with the image replaced by that description, written as the
    LM read scenes in its text pretraining (`as_text`). Returns (picks, descriptions).

    Why: a frozen LLM that answers a question from a caption may still fail to answer it from the
    connector's soft tokens. Handing it the same image as words, through the same model, tells the
    two apart: when this route succeeds where `rank` fails, the information crossed the connector
    and what was lost is the hand-off to the LLM (a measurement, not a variant: two passes per
    question, as in caption-then-answer pipelines)."""
    for s in samples:
        if s.image is None or IMAGE not in s.turns[0][1]:
            raise ValueError(f"through_words: a sample without an image or no {IMAGE} in its turn: {s.turns[0][1]!r}")
    asks = [dataclasses.replace(s, turns=[("human", request), ("gpt", "")]) for s in samples]
    said = answer(model, tok, asks, max_new_tokens, collator)
    texts = [as_text(s, words) for s, words in zip(samples, said, strict=True)]
    return rank(model, tok, texts, candidates, Collator(tok, 0)), said


@torch.no_grad()
def handoff_gap(model: VisionLanguageModel, tok, samples, collator=None) -> list[float]:
    """Per decoder layer of the LLM, the mean over `samples` of the hand-off distillation's relative error
    (`lab.train.handoff.loss`): how far the frozen LLM's states on what follows the image are from its own
    states when the image is replaced by the true caption as text. Samples of one question family.

    Why: distillation fits this gap on held-in questions only. Measured on a held-out family, it says
    whether the fit carried over to a question form the connector never trained on. Through the held-out
    sweep's LMs (val; ablations/HISTORY.md, "Hand-off distillation: a larger weight ..."), the models
    whose compare_count gap stayed at their held-in level were those that answered compare_count from
    the image."""
    from lab.train import handoff

    batch = (collator or collator_for(model, tok))(samples) | handoff.text_twins(samples, tok)
    _, student, teacher, masks, suffix = handoff.student_and_teacher(model, batch)
    return [handoff.loss([s], [t], masks, suffix).item() / len(samples) for s, t in zip(student, teacher, strict=True)]


def evaluate_scenes(
    model: VisionLanguageModel,
    tok,
    data: SceneDataConfig,
    families: tuple[str, ...] = FAMILIES,
    per_family: int = 64,
    split: str = "test",
    batch_size: int = 128,
    caption_samples: int | None = None,
    words: bool = False,
) -> dict:
    """Exact-match accuracy per family on `per_family` samples of `split` each (captions, long
    to generate and scored by slot recall, on `caption_samples` if given). Held-out families with a
    closed answer set are also scored by ranking (`rank`): `acc_ranked`, `held_out_ranked_acc`.
    `words`: those families also through the model's own caption (`through_words`: `acc_words`,
    `held_out_words_acc`) and by its LLM from the true caption (`acc_from_caption`), ranked alike."""
    unknown = unknown_words(tok, families)
    if unknown:
        raise ValueError(f"the model's tokenizer cannot encode these families' words (trained before them?): {unknown}")
    model.eval()
    acc: dict[str, float] = {}
    ranked: dict[str, float] = {}
    by_words: dict[str, float] = {}
    from_caption: dict[str, float] = {}
    describe = TEMPLATES["caption"][0]
    request = f"{describe} {IMAGE}" if data.question_first else f"{IMAGE} {describe}"
    caption_tokens = 4 * data.scene.max_objects * 2 + 4
    recall: list[float] = []
    for fam in families:
        if data.scene.max_objects < MIN_OBJECTS.get(fam, 1):
            continue  # e.g. relations in one-object scenes
        ds = SceneTasks(data.replace(families=[fam], stream="caption" if fam == "caption" else "instruct"), split)
        n = caption_samples if fam == "caption" and caption_samples is not None else per_family
        samples = [ds[i] for i in range(n)]
        hits = 0
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            new = 4 * data.scene.max_objects * 2 + 4 if fam == "caption" else 6
            for s, reply in zip(chunk, answer(model, tok, chunk, new), strict=True):
                hits += normalize(reply) == normalize(s.turns[-1][1])
                if fam == "caption":
                    recall.append(slot_recall(s.scene, reply))
        acc[fam] = hits / len(samples)
        if fam in HELD_OUT and fam in ANSWER_SETS:
            hits = 0
            for i in range(0, len(samples), batch_size):
                chunk = samples[i : i + batch_size]
                picks = rank(model, tok, chunk, ANSWER_SETS[fam])
                hits += sum(p == normalize(s.turns[-1][1]) for p, s in zip(picks, chunk, strict=True))
            ranked[fam] = hits / len(samples)
            if words:
                text = SceneTasks(data.replace(families=[fam], stream="text"), split)
                truth = [normalize(s.turns[-1][1]) for s in samples]
                picks = []
                for i in range(0, len(samples), batch_size):
                    picks += through_words(
                        model, tok, samples[i : i + batch_size], ANSWER_SETS[fam], request, caption_tokens
                    )[0]
                by_words[fam] = sum(map(str.__eq__, picks, truth)) / len(samples)
                picks = []
                for i in range(0, len(samples), batch_size):  # the same scenes and questions, as text
                    chunk = [text[j] for j in range(i, min(i + batch_size, len(samples)))]
                    picks += rank(model, tok, chunk, ANSWER_SETS[fam], Collator(tok, 0))
                from_caption[fam] = sum(map(str.__eq__, picks, truth)) / len(samples)
    held_in = [acc[f] for f in QA_HELD_IN if f in acc]
    held_out = [acc[f] for f in HELD_OUT if f in acc]
    return {
        "acc": acc,
        "held_in_acc": sum(held_in) / len(held_in) if held_in else float("nan"),
        "held_out_acc": sum(held_out) / len(held_out) if held_out else float("nan"),
        "acc_ranked": ranked,
        "held_out_ranked_acc": sum(ranked.values()) / len(ranked) if ranked else float("nan"),
        **(
            {
                "acc_words": by_words,
                "held_out_words_acc": sum(by_words.values()) / len(by_words) if by_words else float("nan"),
                "acc_from_caption": from_caption,
            }
            if words
            else {}
        ),
        "caption_slot_recall": sum(recall) / len(recall) if recall else float("nan"),
        "split": split,
        "per_family": per_family,
    }


def evaluate_llava(model: VisionLanguageModel, processor, path: str, image_folder: str, batch_size: int = 32) -> dict:
    """Exact match (case and whitespace folded) of the reply with each record's last assistant turn.
    Images and prompts go through the checkpoint's processor (`lab.load_processor`): its image
    preprocessing, and its chat template for a transformers checkpoint."""
    model.eval()
    ds = LlavaJSON(path, image_folder, image_size=None)  # the files' own pixels: the processor prepares them
    hits = 0
    for i in range(0, len(ds), batch_size):
        chunk = [ds[j] for j in range(i, min(len(ds), i + batch_size))]
        batch = processor(images=[s.image for s in chunk], conversations=[s.turns[:-1] for s in chunk])
        for s, reply in zip(chunk, replies(model, processor, batch, 32), strict=True):
            hits += normalize(reply) == normalize(s.turns[-1][1])
    return {"acc": {"llava": hits / len(ds)}, "exact_match": hits / len(ds), "n": len(ds)}


def cost(model: VisionLanguageModel, folder: Path) -> dict:
    run = RunDir(folder).summary()
    return {
        "trainable_parameters": run.get("trainable_parameters"),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "llm_tokens_per_image": model.cfg.image_tokens,
        "train_samples_per_s": run.get("samples_per_s"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.eval", description="Evaluate a trained checkpoint folder")
    p.add_argument("--checkpoint", required=True, help="a run folder written by lab.train (or any lab model folder)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--data", help="LLaVA-format JSON to evaluate on instead of generated scenes")
    p.add_argument("--image-folder", help="folder holding the images named in --data")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--per-family", type=int, default=100, help="generated samples per task family")
    args = p.parse_args(argv)
    folder = Path(args.checkpoint)
    try:
        model = lab.load_pretrained(folder)
        t0 = time.perf_counter()
        if args.data:
            if not args.image_folder:
                raise ValueError("--data needs --image-folder")
            result = evaluate_llava(model, lab.load_processor(folder, cfg=model.cfg), args.data, args.image_folder)
        else:
            tok = load_tokenizer(folder, model.cfg.image_token_id)
            saved = RunDir(folder).train_config()
            data = SceneDataConfig.from_dict(saved["data"]) if saved else SceneDataConfig()
            result = evaluate_scenes(model, tok, data, per_family=args.per_family, split=args.split)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result["cost"] = cost(model, folder)
    result["eval_s"] = time.perf_counter() - t0
    result["checkpoint"] = str(folder)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k in ("acc", "held_in_acc", "held_out_acc")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
