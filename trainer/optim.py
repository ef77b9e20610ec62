"""Optimizer and learning-rate schedule from the train config."""
from __future__ import annotations

import keras

from trainer.train_config import LR_SCHEDULES, OPTIMIZERS



def make_learning_rate(schedule: str, learning_rate: float, total_steps: int,
                       warmup_steps: int):
    """cosine: linear warm-up to `learning_rate`, then cosine decay to 0 at `total_steps`.
    poly: polynomial decay (power 0.9, the usual choice for segmentation) after the same
    warm-up. constant: `learning_rate` throughout."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return learning_rate
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else learning_rate,
            decay_steps=decay_steps, warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps)
    return WarmupPolyDecay(learning_rate, decay_steps, warmup_steps)


@keras.saving.register_keras_serializable(package="unet3plus")
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, learning_rate: float, decay_steps: int, warmup_steps: int,
                 power: float = 0.9):
        self.learning_rate = learning_rate
        self.decay_steps = decay_steps
        self.warmup_steps = warmup_steps
        self.power = power

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.learning_rate * step / max(self.warmup_steps, 1)
        progress = keras.ops.clip((step - self.warmup_steps) / self.decay_steps, 0.0, 1.0)
        decayed = self.learning_rate * (1.0 - progress) ** self.power
        return keras.ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "decay_steps": self.decay_steps,
                "warmup_steps": self.warmup_steps, "power": self.power}


def make_optimizer(name: str, learning_rate, weight_decay: float = 1e-4):
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
