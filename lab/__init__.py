"""lab: a research sandbox for BLIP-2, InstructBLIP and LLaVA style vision-language models."""

from lab.models import VisionLanguageModel, VLMConfig


def load_pretrained(path, **kwargs):
    """Load a local checkpoint folder written by transformers or by lab (no network)."""
    from lab.convert import load_pretrained as _load

    return _load(path, **kwargs)


__all__ = ["VisionLanguageModel", "VLMConfig", "load_pretrained"]
