"""Training configs: one dataclass per run, presets per stage, `a.b.c=value` overrides.

A YAML file under `configs/` is just a serialized `TrainConfig`; unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from lab.config import Config, ConfigError, check_choice, check_range, setting
from lab.data.datasets import SceneDataConfig
from lab.data.tasks import FAMILIES, HELD_IN
from lab.models import ConnectorConfig, LLMConfig, QFormerConfig, VisionConfig, VLMConfig
from lab.models.blip2_stage1 import Stage1Config
from lab.models.clip import ClipConfig
from lab.models.connectors import sections as connector_sections
from lab.models.vlm import LLM_CONFIGS

STAGE_NAMES = ("vision", "lm", "stage1", "stage2", "instruct")


def scene_model(connector: str = "qformer", instruction_aware: bool = True, num_queries: int = 8) -> VLMConfig:
    """A small InstructBLIP-style model sized for 32 px scenes and the word tokenizer (2 CPU cores)."""
    d = 64
    qformer = None
    if connector == "qformer":  # QFormerConfig's defaults are this model's: one definition
        qformer = QFormerConfig(num_query_tokens=num_queries, instruction_aware=instruction_aware)
    return VLMConfig(
        vision=VisionConfig(image_size=32, patch_size=4, hidden_size=d, intermediate_size=2 * d, num_layers=2),
        connector=ConnectorConfig(kind=connector, qformer=qformer),
        llm=LLMConfig(
            vocab_size=128,
            hidden_size=96,
            intermediate_size=192,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            max_position_embeddings=256,
        ),
        freeze_vision="auto",  # frozen when loaded from --init, trained when it starts random
        freeze_llm="auto",
    )


@dataclasses.dataclass
class OptimConfig(Config):
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    clip_grad: float = 1.0
    beta2: float = 0.98

    def __post_init__(self) -> None:
        check_range("optim.lr", self.lr, 0, above=True)
        check_range("optim.weight_decay", self.weight_decay, 0)
        check_range("optim.warmup_steps", self.warmup_steps, 0)
        check_range("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_range("optim.clip_grad", self.clip_grad, 0)
        check_range("optim.beta2", self.beta2, 0, 0.9999)


@dataclasses.dataclass
class TrainConfig(Config):
    stage: str = "instruct"
    model: VLMConfig = dataclasses.field(default_factory=scene_model)
    data: SceneDataConfig = dataclasses.field(default_factory=SceneDataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
    batch_size: int = 32  # global: all processes and accumulation steps together
    grad_accum: int = 1
    max_steps: int = 600  # total optimizer steps of the run; the LR schedule ends here
    save_every: int = setting(100, identity=False)
    seed: int = 0
    llava_data: str = ""  # LLaVA-format JSON instead of generated scenes
    image_folder: str = ""
    # LLaVA JSON: an unusable record (its turns, or an image that does not open or decode) stops the run,
    # naming it ("stop"), or is left out and counted ("skip"; in the loader the next record stands in).
    # A run that stops on a bad record trains on the records as given: "stop" is not in its identity.
    bad_images: str = setting("stop", inert="stop")
    bf16: bool = True  # autocast on CUDA only
    strategy: str = "ddp"  # several processes (torchrun): "ddp" or "fsdp" (FSDP2; lab.train.parallel)
    # stage lm: loss on the "answer" tokens only, or on "all" text tokens. Measured (4-layer LM,
    # 1,500 steps, question first): answer 0.83 mean held-in text accuracy, all 0.75.
    lm_loss: str = "answer"
    # torch.compile the vision encoder, the connector and the LLM (Module.compile: same weights, same
    # names). Off by default: the first step compiles for a minute or more on 2 CPU cores, for a
    # step 0.87x as long after (benchmarks/results/profile_step_cpu.txt); short runs lose.
    compile: bool = setting(False, identity=False)
    # stages stage2 and instruct: weight of the hand-off distillation loss (`lab.train.handoff`): the
    # frozen LLM's states after the image matched to its own after the true caption. 0: off.
    handoff_weight: float = setting(0.0, inert=0.0)  # a loss that is off computes nothing

    # identity() (lab.config.Config): what a run's result depends on. A resumed run must match it, it
    # is saved as the run's train_config.json, and the ablations' fingerprints are built from it.

    def __post_init__(self) -> None:
        for name, cls in (
            ("model", VLMConfig),
            ("data", SceneDataConfig),
            ("optim", OptimConfig),
            ("clip", ClipConfig),
            ("stage1", Stage1Config),
        ):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls.from_dict(getattr(self, name)))
        check_choice("stage", self.stage, STAGE_NAMES)
        check_choice("lm_loss", self.lm_loss, ("all", "answer"))
        check_choice("strategy", self.strategy, ("ddp", "fsdp"))
        check_choice("bad_images", self.bad_images, ("stop", "skip"))
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size {self.batch_size} must be a positive multiple of grad_accum {self.grad_accum}"
            )
        if self.max_steps < 1 or self.save_every < 1:
            raise ConfigError("max_steps and save_every must be >= 1")
        check_range("handoff_weight", self.handoff_weight, 0)
        if self.handoff_weight:
            from lab.train import handoff

            handoff.check(self.model.llm, self.stage, bool(self.llava_data))
        if bool(self.llava_data) != bool(self.image_folder):
            raise ConfigError("llava_data and image_folder go together: give both --data and --image-folder")


# Per-stage settings: (full, quick). Quick finishes in about a minute on 2 CPU cores. The LM
# reads every family, held-out ones included, as text ("<question> scene : <caption> ."): a real
# LLM knows what "left of" means from text; what it has never seen is the question asked of pixels.
PRESETS: dict[str, tuple[dict, dict]] = {
    "vision": (
        {"max_steps": 600, "optim": {"lr": 1e-3}, "data": {"stream": "caption"}},
        {"max_steps": 150, "save_every": 25, "optim": {"lr": 2e-3, "warmup_steps": 10}, "data": {"stream": "caption"}},
    ),
    "lm": (  # lr 3e-3 leaves the LM on a bag-of-words plateau: it never binds colour to shape
        {"max_steps": 800, "optim": {"lr": 1e-3}, "data": {"stream": "text", "families": list(FAMILIES)}},
        {
            "max_steps": 200,
            "save_every": 25,
            "optim": {"lr": 1e-3, "warmup_steps": 10},
            "data": {"stream": "text", "families": list(FAMILIES)},
        },
    ),
    "stage1": (
        {"max_steps": 600, "optim": {"lr": 1e-3}, "data": {"stream": "caption"}},
        {"max_steps": 100, "save_every": 25, "optim": {"lr": 2e-3, "warmup_steps": 10}, "data": {"stream": "caption"}},
    ),
    "stage2": (
        {"max_steps": 600, "optim": {"lr": 1e-3}, "data": {"stream": "caption"}},
        {"max_steps": 100, "save_every": 25, "optim": {"lr": 2e-3, "warmup_steps": 10}, "data": {"stream": "caption"}},
    ),
    "instruct": (
        {"max_steps": 1000, "optim": {"lr": 1e-3}, "data": {"stream": "instruct", "families": list(HELD_IN)}},
        {"max_steps": 200, "save_every": 25, "optim": {"lr": 2e-3, "warmup_steps": 10}, "data": {"stream": "instruct"}},
    ),
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_override(data: dict, key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; the config's strict `from_dict` then names unknown keys."""
    if key.endswith(".connector") and isinstance(value, str):
        key = key + ".kind"  # shorthand: --model.connector linear
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {} if node.get(p) is None else node[p]
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {key}: {p!r} is a value, not a section")
        node = node[p]
    node[leaf] = value
    if leaf == "kind" and parents[-1:] == ["connector"]:
        for section in connector_sections():  # only the chosen kind keeps its section
            if value != section:
                node.pop(section, None)
    # kind="qformer" without a section: ConnectorConfig fills QFormerConfig(), as it does for YAML
    if leaf == "family" and parents[-1:] == ["llm"]:  # keep only the keys the new family's config has
        fields = LLM_CONFIGS.get(value, LLMConfig).__dataclass_fields__
        for k in [k for k in node if k not in fields]:
            node.pop(k)


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested config dict as dotted keys: {"optim": {"lr": 1}} -> {"optim.lr": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=value` strings -> {key: value}; values parsed as YAML scalars (1, 1e-3, true, [a, b])."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. model.llm.num_layers=4")
        k, v = item.split("=", 1)
        out[k.strip().lstrip("-")] = _scalar(v)
    return out


def _scalar(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "2e-3" as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def build_config(
    stage: str,
    quick: bool = False,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    preset: dict[str, Any] | None = None,
) -> TrainConfig:
    """Preset for the stage (quick or full), then a YAML file, then overrides, in that order. `preset`
    (dotted keys) replaces lab's preset: the ablation suite sets its own (`ablations.regime`)."""
    check_choice("stage", stage, STAGE_NAMES)
    if preset is None:
        data = merge(TrainConfig(stage=stage).to_dict(), PRESETS[stage][1 if quick else 0])
    else:
        data = TrainConfig(stage=stage).to_dict()
        for k, v in preset.items():
            set_override(data, k, v)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"{path} is not valid YAML{line}: {getattr(e, 'problem', e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file} must hold a mapping of config keys")
        for k, v in flatten(loaded).items():  # one key at a time, so connector.kind drops the Q-Former
            set_override(data, k, v)
    for k, v in (overrides or {}).items():
        set_override(data, k, v)
    data["stage"] = stage
    return TrainConfig.from_dict(data)
