"""The Trainer's settings and the choices each takes: a plain dataclass (no TensorFlow), so
pipeline/configs.py and the runners' flags use the same tuples the Trainer checks against."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

from schema.settings import settings_from_dict
from trainer.augment_config import AugmentConfig, augment_config

PRECISIONS = ("auto", "fp32", "mixed_bfloat16", "mixed_float16")
XLA_MODES = ("auto", "on", "off")
INPUTS = ("auto", "dali", "tfdata")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("cosine", "poly", "constant")
# Reach run_fn through TFX's TrainArgs / EvalArgs (fn_args.train_steps, .eval_steps), which it
# reads; the Trainer's custom_config carries the other fields only.
STEPS_FROM_TRAIN_ARGS = ("train_steps", "eval_steps")


@dataclasses.dataclass
class TrainConfig:
    train_steps: int = 2000         # optimizer steps in all
    eval_steps: int = 50            # validation batches at each validation
    batch_size: int = 8             # images per step, over all replicas
    learning_rate: float = 1e-3     # the peak (after warm-up) learning rate
    optimizer: str = "adam"         # one of OPTIMIZERS
    lr_schedule: str = "cosine"     # one of LR_SCHEDULES (cosine and poly warm up first)
    warmup_steps: int = 50          # linear warm-up steps (cosine and poly schedules)
    weight_decay: float = 1e-4      # adamw only
    early_stopping_patience: int = 0   # epochs without a better validation Dice; 0 = off
    precision: str = "auto"     # one of PRECISIONS (auto: trainer/precision.py measures)
    xla: str = "auto"           # one of XLA_MODES
    gpus: str = "all"           # all | N (the first N) | "0,2" (those ids)
    cpu_replicas: int = 1       # >1 on a CPU-only machine: that many logical CPU replicas
    shuffle_buffer: int = 256   # examples; TFX's default of 10,000 images would need GBs
    steps_per_epoch: int = 100  # how often validation and TensorBoard run
    input: str = "auto"         # one of INPUTS (auto: dali when its TF plugin imports, else tfdata)
    # Tumour-rich sampling: each training slice with tumour is read this many times per pass
    # over the data (1: as stored). Both inputs (trainer/inputs.py, trainer/dali_input.py).
    tumour_slice_repeat: int = 1
    seed: int = 0               # weights, shuffling and augmentation: a rerun trains the same
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able: the component's custom_config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Inverse of to_dict; a missing key takes its default, an unknown one is an error."""
        return settings_from_dict(cls, d, "train", augment=augment_config(d.get("augment")))
