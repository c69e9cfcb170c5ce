"""Connectors: how image features become LLM input embeddings.

- `qformer`: a Q-Former compresses the image into `num_query_tokens` outputs, then a linear
  projection into the LLM width (BLIP-2, InstructBLIP). Fixed token budget per image.
- `linear`: project every patch feature (LLaVA-1).
- `mlp`: Linear, GELU, Linear on every patch feature (LLaVA-1.5).
- `perceiver`: Flamingo's Perceiver Resampler, `num_latents` learned latents reading the image,
  then a linear projection into the LLM width. Fixed token budget, like the Q-Former.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from lab.config import Config, ConfigError, check_choice
from lab.models.perceiver import PerceiverConfig, PerceiverResampler
from lab.models.qformer import QFormer, QFormerConfig
from lab.models.vision import ACTIVATIONS

CONNECTORS = ("qformer", "linear", "mlp", "perceiver")
PROJECTOR_IMPLS = ("eager", "triton")
MLP_INITS = ("lecun", "torch")


@dataclasses.dataclass
class ConnectorConfig(Config):
    kind: str = "qformer"
    qformer: QFormerConfig | None = None  # required for kind="qformer"
    perceiver: PerceiverConfig | None = None  # required for kind="perceiver"
    bias: bool = True
    hidden_act: str = "gelu"  # mlp only
    # mlp only: "triton" runs lab_kernels.mlp_projector (exact GELU, fused); named like qformer.attn_impl
    mlp_impl: str = "eager"
    # mlp only: "lecun" draws each layer's weights from U(±sqrt(3 / fan_in)), which keeps a feature's
    # scale through the layer; "torch" is nn.Linear's default, U(±sqrt(1 / fan_in)), a third of the
    # variance per layer. With "torch" the two layers hand the LLM visual tokens at a fifth of the RMS
    # of its text embeddings (0.19-0.21 vs 1.0; the linear connector 0.52-0.61), and the MLP learned
    # several times slower than linear (ablations/HISTORY.md). Loading weights ignores it.
    mlp_init: str = "lecun"

    RENAMED: ClassVar[dict[str, str]] = {"impl": "mlp_impl"}

    def __post_init__(self) -> None:
        check_choice("connector.kind", self.kind, CONNECTORS)
        check_choice("connector.mlp_impl", self.mlp_impl, PROJECTOR_IMPLS)
        check_choice("connector.mlp_init", self.mlp_init, MLP_INITS)
        check_choice("connector.hidden_act", self.hidden_act, tuple(ACTIVATIONS))
        if self.kind == "qformer" and self.qformer is None:
            self.qformer = QFormerConfig()
        if self.kind != "qformer" and self.qformer is not None:
            raise ConfigError(f"connector.qformer is set but connector.kind={self.kind!r}")
        if self.kind == "perceiver" and self.perceiver is None:
            self.perceiver = PerceiverConfig()
        if self.kind != "perceiver" and self.perceiver is not None:
            raise ConfigError(f"connector.perceiver is set but connector.kind={self.kind!r}")
        if self.mlp_impl == "triton" and (self.kind != "mlp" or self.hidden_act != "gelu"):
            raise ConfigError("connector.mlp_impl='triton' needs kind='mlp' with hidden_act='gelu'")

    def num_tokens(self, num_features: int) -> int:
        """LLM tokens per image."""
        if self.kind == "qformer":
            return self.qformer.num_query_tokens
        return self.perceiver.num_latents if self.kind == "perceiver" else num_features


class QFormerConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        if cfg.qformer.encoder_hidden_size != vision_dim:
            raise ConfigError(
                f"qformer.encoder_hidden_size={cfg.qformer.encoder_hidden_size} "
                f"must equal vision.hidden_size={vision_dim}"
            )
        self.qformer = QFormer(cfg.qformer)
        self.proj = nn.Linear(cfg.qformer.hidden_size, llm_dim, bias=cfg.bias)

    def forward(self, features, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        return self.proj(self.qformer(features, instruction_ids, instruction_mask))


class LinearConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(vision_dim, llm_dim, bias=cfg.bias)

    def forward(self, features, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        _refuse_instruction(instruction_ids)
        return self.proj(features)


class MLPConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, llm_dim, bias=cfg.bias)
        self.fc2 = nn.Linear(llm_dim, llm_dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.impl = cfg.mlp_impl
        if cfg.mlp_init == "lecun":
            for layer in (self.fc1, self.fc2):
                bound = math.sqrt(3 / layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound)

    def forward(self, features, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        _refuse_instruction(instruction_ids)
        if self.impl == "triton":
            from lab_kernels import mlp_projector

            return mlp_projector(features, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(self.fc1(features)))


class PerceiverConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.resampler = PerceiverResampler(cfg.perceiver, vision_dim)
        self.proj = nn.Linear(vision_dim, llm_dim, bias=cfg.bias)

    def forward(self, features, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        _refuse_instruction(instruction_ids)
        return self.proj(self.resampler(features))


def _refuse_instruction(instruction_ids: torch.Tensor | None) -> None:
    if instruction_ids is not None:
        raise ValueError(
            "instruction_ids were given, but this model's connector has no instruction-aware queries; "
            "use connector.kind='qformer' with qformer.instruction_aware=True"
        )


def build_connector(cfg: ConnectorConfig, vision_dim: int, llm_dim: int) -> nn.Module:
    kinds = {"qformer": QFormerConnector, "linear": LinearConnector, "mlp": MLPConnector}
    cls = {**kinds, "perceiver": PerceiverConnector}[cfg.kind]
    return cls(cfg, vision_dim, llm_dim)
