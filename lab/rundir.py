"""The run folder: every file a training run writes, named once.

    OUT/
      model.safetensors, config.json | lab_config.json, tokenizer.json   the model (`lab.load_pretrained`)
      preprocessor_config.json   how the run prepared its images (`lab.data.image_processor`)
      train_config.json   the resolved TrainConfig (what `--resume` must match)
      trainable.json      what the stage trains and why (`lab.train.trainable`)
      run.json            stage, components holding trained weights, throughput, software versions
      metrics.jsonl       one line per optimizer step
      heads/model.safetensors   the stage's own heads (contrastive, stage 1), outside the VLM
      retrieval/          stage 1 only: the run as transformers' Blip2ForImageTextRetrieval
      adapters/llm/, adapters/vision/   LoRA adapters as peft adapter folders (`lab.models.lora`)
      checkpoints/step-NNNNNN/, checkpoints/latest   (`lab.train.checkpoint`)
      .lock               held by the one process writing the run

Train writes these; eval, the ablation runner and the probes read them through `RunDir`, so a
renamed file is renamed in one place.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def train_config_file(self) -> Path:
        return self.root / "train_config.json"

    @property
    def trainable_file(self) -> Path:
        return self.root / "trainable.json"

    @property
    def summary_file(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def retrieval(self) -> Path:
        return self.root / "retrieval"

    @property
    def heads_file(self) -> Path:
        return self.root / "heads" / "model.safetensors"

    def adapters(self, part: str) -> Path:
        return self.root / "adapters" / part

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def holds_run(self) -> bool:
        """Whether a run has started here (a config, metrics or checkpoints exist)."""
        return self.train_config_file.exists() or self.metrics_file.exists() or self.checkpoints.exists()

    def train_config(self) -> dict:
        """The saved TrainConfig as a dict; {} for a folder that was not written by `lab train`."""
        f = self.train_config_file
        return json.loads(f.read_text()) if f.exists() else {}

    def summary(self) -> dict:
        """run.json (stage, components, throughput); {} when absent (e.g. a transformers folder)."""
        f = self.summary_file
        return json.loads(f.read_text()) if f.exists() else {}
