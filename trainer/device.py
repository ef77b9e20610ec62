"""Precision, XLA and distribution chosen from the device, every choice overridable.

CPU: mixed_bfloat16 without XLA (on a 2-core AVX-512-BF16 CPU bf16 trains UNet 3+ 2.2x faster
than fp32, and XLA makes it 3.4x slower; see shared/STACK.md). GPU: mixed_float16 with XLA.
"""
from __future__ import annotations

import dataclasses
import logging

import keras
import tensorflow as tf

PRECISIONS = ("auto", "fp32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class DeviceSettings:
    policy: str            # Keras dtype policy name
    jit_compile: bool
    num_gpus: int
    reason: str

    def apply(self) -> None:
        keras.mixed_precision.set_dtype_policy(
            "float32" if self.policy == "fp32" else self.policy)

    def strategy(self) -> tf.distribute.Strategy:
        # One replica per GPU when there are several; the default strategy otherwise.
        if self.num_gpus > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()


def resolve_device_settings(precision: str = "auto", xla: str = "auto") -> DeviceSettings:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if xla not in ("auto", "on", "off"):
        raise ValueError(f"xla must be auto, on or off, got {xla!r}")
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    device = f"{num_gpus} GPU(s)" if num_gpus else "CPU only"
    reasons = []
    if precision == "auto":
        policy = "mixed_float16" if num_gpus else "mixed_bfloat16"
        reasons.append(f"precision auto on {device} -> {policy}")
    else:
        policy = precision
        reasons.append(f"precision forced to {policy}")
    if xla == "auto":
        jit = bool(num_gpus)
        reasons.append(f"XLA auto on {device} -> {'on' if jit else 'off'}")
    else:
        jit = xla == "on"
        reasons.append(f"XLA forced {xla}")
    settings = DeviceSettings(policy, jit, num_gpus, "; ".join(reasons))
    logging.info("Device settings: %s", settings.reason)
    return settings
