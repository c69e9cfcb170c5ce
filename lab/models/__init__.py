from lab.models.connectors import ConnectorConfig
from lab.models.llm import LanguageModel, LLMConfig
from lab.models.perceiver import PerceiverConfig, PerceiverResampler
from lab.models.qformer import QFormer, QFormerConfig
from lab.models.vision import VisionConfig, VisionEncoder
from lab.models.vlm import VisionLanguageModel, VLMConfig, VLMOutput

__all__ = [
    "ConnectorConfig",
    "LanguageModel",
    "LLMConfig",
    "PerceiverConfig",
    "PerceiverResampler",
    "QFormer",
    "QFormerConfig",
    "VisionConfig",
    "VisionEncoder",
    "VisionLanguageModel",
    "VLMConfig",
    "VLMOutput",
]
