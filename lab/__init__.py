"""lab: a research sandbox for BLIP-2, InstructBLIP and LLaVA style vision-language models."""

from lab.models import VisionLanguageModel, VLMConfig


def load_pretrained(path, **kwargs):
    """Load a local checkpoint folder written by transformers or by lab (no network)."""
    from lab.convert import load_pretrained as _load

    return _load(path, **kwargs)


def save_pretrained(model, path, **kwargs):
    """Write safetensors + config; transformers-readable when the design has an equivalent. (A
    function on the convert side, not a model method: the models layer knows nothing of formats.)"""
    from lab.convert import save_pretrained as _save

    return _save(model, path, **kwargs)


def load_processor(path, **kwargs):
    """The checkpoint's processor: images and prompts -> the model's inputs, as its own processor
    prepares them (image preprocessing, chat template, placeholders); `lab.data.processor`."""
    from lab.convert.processor import load_processor as _load

    return _load(path, **kwargs)


__all__ = ["VisionLanguageModel", "VLMConfig", "load_pretrained", "load_processor", "save_pretrained"]
