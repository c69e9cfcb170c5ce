"""Connectors: how image features become LLM input embeddings, one registry entry per kind.

- `qformer`: a Q-Former compresses the image into `num_query_tokens` outputs, then a linear
  projection into the LLM width (BLIP-2, InstructBLIP). Fixed token budget per image.
- `linear`: project every patch feature (LLaVA-1).
- `mlp`: Linear, GELU, Linear on every patch feature (LLaVA-1.5).
- `perceiver`: Flamingo's Perceiver Resampler, `num_latents` learned latents reading the image,
  then a linear projection into the LLM width. Fixed token budget, like the Q-Former.

A connector is `Module(cfg: ConnectorConfig, features: Features, llm_dim: int)` with
`forward(features, instruction_ids=None, instruction_mask=None) -> b tokens llm_dim`. `Features`
(lab.models.vision) gives the feature width, the patch grid's side and whether a CLS token leads.
`CONNECTORS` is the one list of kinds: the config's choices, `build_connector`, the token count, which
config section a kind owns (`--model.connector.kind` keeps only that one) and the tests read it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from lab.config import Config, ConfigError, check_choice, config_type, setting
from lab.models.perceiver import PerceiverConfig, PerceiverResampler
from lab.models.qformer import QFormer, QFormerConfig
from lab.models.vision import ACTIVATIONS, Features

PROJECTOR_IMPLS = ("eager", "triton")
MLP_INITS = ("lecun", "torch")


@dataclasses.dataclass
class ConnectorConfig(Config):
    kind: str = "qformer"
    # A kind's own settings live in a section named like it (CONNECTORS[kind].section), None unless
    # that kind is chosen. Sections added from now on are declared `setting(None, inert=None)`, so a
    # new connector leaves every saved fingerprint as it was; these two predate that rule and stay in
    # every fingerprint, as None where unused.
    qformer: QFormerConfig | None = setting(None)
    perceiver: PerceiverConfig | None = setting(None)
    bias: bool = True
    hidden_act: str = "gelu"  # mlp only
    # mlp only: "triton" runs lab_kernels.mlp_projector (exact GELU, fused); named like qformer.attn_impl
    mlp_impl: str = "eager"
    # mlp only: "lecun" draws each layer's weights from U(±sqrt(3 / fan_in)), which keeps a feature's
    # scale through the layer; "torch" is nn.Linear's default, U(±sqrt(1 / fan_in)), a third of the
    # variance per layer. With "torch" the two layers hand the LLM visual tokens at a fifth of the RMS
    # of its text embeddings (0.19-0.21 vs 1.0; the linear connector 0.52-0.61), and the MLP learned
    # several times slower than linear (ablations/HISTORY.md, "The MLP projector learned slowly because of its
    # init"). Loading weights ignores it.
    mlp_init: str = "lecun"

    RENAMED: ClassVar[dict[str, str]] = {"impl": "mlp_impl"}

    def __post_init__(self) -> None:
        check_choice("connector.kind", self.kind, tuple(CONNECTORS))
        check_choice("connector.mlp_impl", self.mlp_impl, PROJECTOR_IMPLS)
        check_choice("connector.mlp_init", self.mlp_init, MLP_INITS)
        check_choice("connector.hidden_act", self.hidden_act, tuple(ACTIVATIONS))
        hints = typing.get_type_hints(ConnectorConfig)
        for name in sections():
            mine = CONNECTORS[self.kind].section == name
            if mine and getattr(self, name) is None:  # the kind's defaults, as YAML `{kind: qformer}` gets
                setattr(self, name, config_type(hints[name])())
            if not mine and getattr(self, name) is not None:
                raise ConfigError(f"connector.{name} is set but connector.kind={self.kind!r}")
        if self.mlp_impl == "triton" and (self.kind != "mlp" or self.hidden_act != "gelu"):
            raise ConfigError("connector.mlp_impl='triton' needs kind='mlp' with hidden_act='gelu'")

    def num_tokens(self, features: Features) -> int:
        """LLM tokens per image."""
        return CONNECTORS[self.kind].tokens(self, features)


class QFormerConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, features: Features, llm_dim: int) -> None:
        super().__init__()
        if cfg.qformer.encoder_hidden_size != features.dim:
            raise ConfigError(
                f"qformer.encoder_hidden_size={cfg.qformer.encoder_hidden_size} "
                f"must equal vision.hidden_size={features.dim}"
            )
        self.qformer = QFormer(cfg.qformer)
        self.proj = nn.Linear(cfg.qformer.hidden_size, llm_dim, bias=cfg.bias)

    def forward(self, features, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        return self.proj(self.qformer(features, instruction_ids, instruction_mask))


class LinearConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, features: Features, llm_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(features.dim, llm_dim, bias=cfg.bias)

    def forward(self, features, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        refuse_instruction(instruction_ids)
        return self.proj(features)


class MLPConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, features: Features, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features.dim, llm_dim, bias=cfg.bias)
        self.fc2 = nn.Linear(llm_dim, llm_dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.impl = cfg.mlp_impl
        if cfg.mlp_init == "lecun":
            for layer in (self.fc1, self.fc2):
                bound = math.sqrt(3 / layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound)

    def forward(self, features, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        refuse_instruction(instruction_ids)
        if self.impl == "triton":
            from lab_kernels import mlp_projector

            return mlp_projector(features, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(self.fc1(features)))


class PerceiverConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, features: Features, llm_dim: int) -> None:
        super().__init__()
        self.resampler = PerceiverResampler(cfg.perceiver, features.dim)
        self.proj = nn.Linear(features.dim, llm_dim, bias=cfg.bias)

    def forward(self, features, instruction_ids=None, instruction_mask=None) -> torch.Tensor:
        refuse_instruction(instruction_ids)
        return self.proj(self.resampler(features))


def refuse_instruction(instruction_ids: torch.Tensor | None) -> None:
    """For connectors without instruction-aware queries: instruction ids are a mistake, not ignored."""
    if instruction_ids is not None:
        raise ValueError(
            "instruction_ids were given, but this model's connector has no instruction-aware queries; "
            "use connector.kind='qformer' with qformer.instruction_aware=True"
        )


@dataclasses.dataclass(frozen=True)
class ConnectorKind:
    """One connector: its module, its LLM tokens per image, the config section holding its own
    settings (None: none beyond ConnectorConfig's shared ones), and the transformers architectures
    built on it (`lab.convert` converts a lab model with it both ways when the rest matches)."""

    module: Callable[[ConnectorConfig, Features, int], nn.Module]
    tokens: Callable[[ConnectorConfig, Features], int]
    section: str | None = None
    transformers: tuple[str, ...] = ()


def _every_feature(cfg: ConnectorConfig, features: Features) -> int:
    return features.count


CONNECTORS: dict[str, ConnectorKind] = {
    "qformer": ConnectorKind(
        QFormerConnector, lambda c, f: c.qformer.num_query_tokens, "qformer", ("blip-2", "instructblip")
    ),
    "linear": ConnectorKind(LinearConnector, _every_feature),
    "mlp": ConnectorKind(MLPConnector, _every_feature, transformers=("llava",)),
    "perceiver": ConnectorKind(PerceiverConnector, lambda c, f: c.perceiver.num_latents, "perceiver"),
}


def sections() -> tuple[str, ...]:
    """The config sections connectors own (ConnectorConfig fields)."""
    return tuple(k.section for k in CONNECTORS.values() if k.section)


def build_connector(cfg: ConnectorConfig, features: Features, llm_dim: int) -> nn.Module:
    return CONNECTORS[cfg.kind].module(cfg, features, llm_dim)
