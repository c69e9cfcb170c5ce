"""Data: procedural scenes and their tasks, the word tokenizer, LLaVA JSON, the collator."""

from lab.data.collate import IGNORE, Collator, pixels
from lab.data.datasets import SPLITS, Sample, SceneDataConfig, SceneTasks, Shuffled, export_llava
from lab.data.llava import BadImage, LlavaJSON
from lab.data.scenes import Scene, SceneConfig, render, sample_scene
from lab.data.tasks import FAMILIES, HELD_IN, HELD_OUT, caption, make_task, normalize, slot_recall, vocabulary
from lab.data.tokenizer import HFTokenizer, WordTokenizer, load_tokenizer


def scene_tokenizer() -> WordTokenizer:
    """The tokenizer of the generated scene language (same for every stage and run)."""
    return WordTokenizer(vocabulary())


__all__ = [
    "FAMILIES",
    "HELD_IN",
    "HELD_OUT",
    "IGNORE",
    "Collator",
    "BadImage",
    "HFTokenizer",
    "LlavaJSON",
    "SPLITS",
    "Sample",
    "Scene",
    "SceneConfig",
    "SceneDataConfig",
    "SceneTasks",
    "Shuffled",
    "WordTokenizer",
    "caption",
    "export_llava",
    "load_tokenizer",
    "make_task",
    "normalize",
    "pixels",
    "render",
    "sample_scene",
    "scene_tokenizer",
    "slot_recall",
    "vocabulary",
]
