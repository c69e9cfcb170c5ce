"""LoRA adapters on the LLM or the ViT, through peft.

LoRA (Hu et al., 2021) freezes a pretrained weight W and learns a low-rank update, W + (alpha/r)·BA,
with A `r × d_in` and B `d_out × r` (B starts at zero, so training starts from the pretrained
model). It is the middle ground LLaVA users ask for between a frozen and a fully tuned LLM.

peft does the work: `attach` wraps the part's linear layers in peft's LoRA layers (only the
adapters train), `merge` folds the update back into plain `nn.Linear` weights, and `split_state`
names the adapters as peft does, for `lab.convert` to save them as a peft adapter folder
(`adapter_config.json`, `adapter_model.safetensors`), which `peft.PeftModel.from_pretrained` reads.

lab's layers fuse projections (`qkv`, `gate_up`), so an adapter on `qkv` shares its rank across
query, key and value; that is the one difference from LoRA on separate q/k/v projections.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lab.config import Config, ConfigError

PREFIX = "base_model.model."  # peft's name prefix for a PeftModel around the part


@dataclasses.dataclass
class LoRAConfig(Config):
    r: int = 0  # rank; 0 means no adapters
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # on the adapter's input
    # names of linear layers; None: every linear layer of a block, as LLaVA's LoRA recipe does
    # (Llama: qkv, o, gate_up, down; OPT: qkv, o, fc1, fc2; ViT: qkv, proj, fc1, fc2)
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ConfigError(f"LoRA rank r={self.r} must be >= 0 (0 turns LoRA off)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout={self.dropout} must be in [0, 1)")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(t, str) for t in self.target_modules)
        ):
            raise ConfigError(f"LoRA target_modules must be a non-empty list of layer names, got {self.target_modules}")

    @property
    def on(self) -> bool:
        return self.r > 0

    def peft(self, module: nn.Module):
        """peft's LoraConfig for this part, with the default targets resolved against `module`."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules or block_linears(module)),
            bias="none",
        )


def block_linears(module: nn.Module) -> list[str]:
    """The names of the linear layers inside the part's transformer blocks (`module.layers`)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in module.layers.named_modules() if isinstance(m, nn.Linear)})


def has_lora(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def wrapped(module: nn.Module) -> list[str]:
    """The names of the layers that carry adapters now (what a saved adapter config lists)."""
    from peft.tuners.lora import LoraLayer

    return sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, LoraLayer)})


def attach(module: nn.Module, cfg: LoRAConfig, part: str) -> int:
    """Wrap `module`'s target linear layers in LoRA layers, in place; freezes everything else in
    `module`. Returns the number of adapter parameters."""
    from peft.tuners.lora import LoraModel

    names = {n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(cfg.target_modules or []) - names)
    if missing:
        raise ConfigError(f"model.{part}_lora.target_modules: no linear layer named {missing} in the {part}")
    if has_lora(module):
        raise ConfigError(f"the {part} already has LoRA adapters")
    LoraModel(module, cfg.peft(module), "default")  # replaces the layers inside `module`; the wrapper is not kept
    return sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)


def merge(module: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain `nn.Linear` back."""
    from peft.tuners.lora import LoraLayer

    for name, layer in list(module.named_modules()):
        if isinstance(layer, LoraLayer):
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, layer.get_base_layer())
    return module


def split_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base weights under the plain layer names, adapter weights under peft's adapter names)."""
    base, adapters = {}, {}
    for k, v in module.state_dict().items():
        if "lora_" in k:
            adapters[PREFIX + k.replace(".default", "")] = v
        else:
            base[k.replace(".base_layer.", ".")] = v
    return base, adapters
