"""How a stage is spread over processes: one process, DDP, or FSDP2.

- `ddp` (default under torchrun): every process holds the whole model; gradients are averaged.
- `fsdp`: `torch.distributed.fsdp.fully_shard` (FSDP2, per-parameter sharding), as prismatic-vlms
  trains at scale. Each transformer block of every part is one unit, the stage is the root unit;
  parameters, gradients and optimizer state are sharded over the processes.

Both average gradients over processes, so the trainer's loss normalisation (each micro-batch's
summed loss divided by the global token count, times the world size) is the same for both, and
2 processes match 1 (tested). Checkpoints hold *full* tensors under the unsharded names in
either case: an FSDP run gathers them (a collective every process joins), and resumes by
scattering them back, so a checkpoint does not depend on the strategy's layout.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch
from torch import nn

from lab.config import ConfigError
from lab.train.checkpoint import state_tensors

log = logging.getLogger("lab")
STRATEGIES = ("ddp", "fsdp")


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


class Parallel:
    """The strategy of one run: wraps the stage, and reads and writes its full state."""

    def __init__(self, strategy: str, world: int) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy={strategy!r} is not one of {list(STRATEGIES)}")
        self.world = world
        self.fsdp = strategy == "fsdp" and world > 1

    def shard(self, stage: nn.Module) -> None:
        """FSDP: shard in place, before the optimizer is built (it must see the sharded parameters)."""
        if not self.fsdp:
            return
        from torch.distributed.fsdp import fully_shard

        if any("lora_" in n for n, _ in stage.named_parameters()):
            raise ConfigError("strategy=fsdp with LoRA adapters is not supported yet; use strategy=ddp")
        blocks = [b for m in stage.modules() if isinstance(getattr(m, "layers", None), nn.ModuleList) for b in m.layers]
        for block in blocks:
            fully_shard(block)
        fully_shard(stage)
        log.info("strategy fsdp: %d blocks and the stage sharded over %d processes", len(blocks), self.world)

    def wrap(self, stage: nn.Module) -> nn.Module:
        """The module the training step calls."""
        if self.world > 1 and not self.fsdp:
            return nn.parallel.DistributedDataParallel(stage, find_unused_parameters=True)
        return stage

    def sync(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Gradient accumulation: processes exchange gradients on the last micro-batch only."""
        if self.world == 1:
            return contextlib.nullcontext()
        if self.fsdp:
            model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else model.no_sync()

    def model_state(self, stage: nn.Module) -> dict[str, torch.Tensor]:
        """Full tensors under the unsharded names (every process must call this under FSDP)."""
        if not self.fsdp:
            return state_tensors(stage)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return {k: v.contiguous() for k, v in get_model_state_dict(stage, options=_options()).items()}

    def optimizer_state(self, stage: nn.Module, opt: torch.optim.Optimizer) -> dict:
        if not self.fsdp:
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(stage, opt, options=_options())

    def loader(self, stage: nn.Module) -> Callable[[dict], tuple[list[str], list[str]]]:
        """A function that loads full tensors into the (possibly sharded) stage and returns
        (missing, unexpected) keys."""
        if not self.fsdp:
            return lambda tensors: stage.load_state_dict(tensors, strict=False)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, strict=False)
        return lambda tensors: set_model_state_dict(stage, tensors, options=options)

    def load_optimizer(self, stage: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
        if not self.fsdp:
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(stage, opt, state, options=StateDictOptions(full_state_dict=True))

    @staticmethod
    def grad_norm(norm: torch.Tensor) -> float:
        """clip_grad_norm_'s total norm as a float (a DTensor under FSDP)."""
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
