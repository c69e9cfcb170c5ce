from lab.models.causal_lm import CausalLM
from lab.models.connectors import ConnectorConfig
from lab.models.llm import LanguageModel, LLMConfig
from lab.models.lora import LoRAConfig
from lab.models.opt import OPTConfig, OPTDecoder
from lab.models.perceiver import PerceiverConfig, PerceiverResampler
from lab.models.qformer import QFormer, QFormerConfig
from lab.models.vision import VisionConfig, VisionEncoder
from lab.models.vlm import VisionLanguageModel, VLMConfig, VLMOutput

__all__ = [
    "CausalLM",
    "ConnectorConfig",
    "LanguageModel",
    "LLMConfig",
    "LoRAConfig",
    "OPTConfig",
    "OPTDecoder",
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
