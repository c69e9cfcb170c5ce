"""Training: stage definitions, the trainer, checkpoints, configs."""

from lab.train.config import STAGE_NAMES, TrainConfig, build_config, scene_model
from lab.train.stages import STAGES, build_stage
from lab.train.trainer import RunError, train

__all__ = ["STAGES", "STAGE_NAMES", "RunError", "TrainConfig", "build_config", "build_stage", "scene_model", "train"]
