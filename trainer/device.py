"""Precision, XLA and distribution chosen from the device, every choice overridable.

CPU: mixed_bfloat16 without XLA (on a 2-core AVX-512-BF16 CPU bf16 trains UNet 3+ 2.2x faster
than fp32, and XLA makes it 3.4x slower; see shared/STACK.md). GPU: mixed_float16 with XLA.
Replicas: MirroredStrategy over the chosen GPUs ("all", the first N, or a list of ids); on a
CPU-only machine `cpu_replicas` > 1 splits the CPU into logical devices so the multi-replica
path runs (and is tested) without GPUs.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import List, Tuple

import keras
import tensorflow as tf

PRECISIONS = ("auto", "fp32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class DeviceSettings:
    policy: str              # Keras dtype policy name
    jit_compile: bool
    devices: Tuple[str, ...]  # one replica per device; empty: TF's default device
    reason: str

    @property
    def num_gpus(self) -> int:
        return sum("GPU" in d.upper() for d in self.devices)

    @property
    def replicas(self) -> int:
        return max(len(self.devices), 1)

    def apply(self) -> None:
        keras.mixed_precision.set_dtype_policy(
            "float32" if self.policy == "fp32" else self.policy)

    def strategy(self) -> tf.distribute.Strategy:
        if self.replicas > 1:
            return tf.distribute.MirroredStrategy(devices=list(self.devices))
        return tf.distribute.get_strategy()


def select_gpus(gpus: str, available: int) -> List[int]:
    """"all" -> every GPU; "N" -> the first N; "0,2" -> those ids."""
    if gpus == "all":
        return list(range(available))
    if "," not in gpus and gpus.strip().isdigit():
        return list(range(min(int(gpus), available)))
    ids = [int(g) for g in gpus.split(",") if g.strip()]
    missing = [i for i in ids if i >= available]
    if missing:
        raise ValueError(f"GPU ids {missing} requested, only {available} GPU(s) present")
    return ids


def split_cpu(replicas: int) -> bool:
    """Splits the CPU into `replicas` logical devices. Only possible before TensorFlow has
    initialized its devices (a fresh process); returns False otherwise."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
        return True
    except RuntimeError as e:
        # Listing logical devices initializes the runtime, so only ask after trying to split.
        if len(tf.config.list_logical_devices("CPU")) >= replicas:
            return True
        logging.warning("Cannot split the CPU into %d devices (%s); training on one replica",
                        replicas, e)
        return False


def resolve_device_settings(precision: str = "auto", xla: str = "auto", gpus: str = "all",
                            cpu_replicas: int = 1) -> DeviceSettings:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if xla not in ("auto", "on", "off"):
        raise ValueError(f"xla must be auto, on or off, got {xla!r}")
    gpu_ids = select_gpus(gpus, len(tf.config.list_physical_devices("GPU")))
    if gpu_ids:
        devices = tuple(f"/gpu:{i}" for i in gpu_ids) if len(gpu_ids) > 1 else ()
        device = f"{len(gpu_ids)} GPU(s)"
    else:
        devices = (tuple(f"/cpu:{i}" for i in range(cpu_replicas))
                   if cpu_replicas > 1 and split_cpu(cpu_replicas) else ())
        device = "CPU only"
    reasons = []
    if precision == "auto":
        policy = "mixed_float16" if gpu_ids else "mixed_bfloat16"
        reasons.append(f"precision auto on {device} -> {policy}")
    else:
        policy = precision
        reasons.append(f"precision forced to {policy}")
    if xla == "auto":
        jit = bool(gpu_ids)
        reasons.append(f"XLA auto on {device} -> {'on' if jit else 'off'}")
    else:
        jit = xla == "on"
        reasons.append(f"XLA forced {xla}")
    reasons.append(f"{max(len(devices), 1)} replica(s) {list(devices) or ''}".strip())
    settings = DeviceSettings(policy, jit, devices, "; ".join(reasons))
    logging.info("Device settings: %s", settings.reason)
    return settings


def synchronize_batch_norm(model: keras.Model) -> None:
    """With several replicas, BatchNorm uses the statistics of the global batch (all-reduced),
    so a multi-replica step computes what one replica computes on the same global batch."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
