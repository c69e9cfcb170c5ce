from lab.models.causal_lm import CausalLM, Seq2SeqLM
from lab.models.connectors import ConnectorConfig
from lab.models.llm import LanguageModel, LLMConfig
from lab.models.lora import LoRAConfig
from lab.models.opt import OPTConfig, OPTDecoder
from lab.models.perceiver import PerceiverConfig, PerceiverResampler
from lab.models.qformer import QFormer, QFormerConfig
from lab.models.t5 import T5Config, T5Model
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
    "Seq2SeqLM",
    "T5Config",
    "T5Model",
    "VisionConfig",
    "VisionEncoder",
    "VisionLanguageModel",
    "VLMConfig",
    "VLMOutput",
]
