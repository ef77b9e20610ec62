"""Precision, XLA and distribution for this machine, every choice overridable.

Precision `auto` (trainer/precision.py): on CPU, bf16 only where the CPU has native bf16 and a
short probe of the configured widths measures it faster than fp32, fp32 otherwise; on GPU, bf16
from compute capability 8.0, fp16 with loss scaling below. XLA `auto`: on with GPUs; off on CPU,
where XLA trained UNet 3+ 3.4x slower than oneDNN's kernels (bench/train_throughput.py --xla on).
Replicas: MirroredStrategy over the chosen GPUs ("all", the first N, or a list of ids); on a
CPU-only machine `cpu_replicas` > 1 splits the CPU into logical devices so the multi-replica
path runs (and is tested) without GPUs.

`decide_settings` is the pure decision (GPU capabilities, CPU flags and the probe injected);
`resolve_device_settings` gathers those facts from TensorFlow and this machine.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from trainer import precision as P
from trainer.train_config import PRECISIONS, XLA_MODES



@dataclasses.dataclass(frozen=True)
class DeviceSettings:
    policy: str               # Keras dtype policy name: float32 | mixed_bfloat16 | mixed_float16
    jit_compile: bool
    devices: Tuple[str, ...]  # one replica per device; empty: TF's default device
    reason: str
    bf16_speedup: Optional[float] = None   # the CPU probe's fp32/bf16 step-time ratio, if run

    @property
    def replicas(self) -> int:
        return max(len(self.devices), 1)

    def to_dict(self) -> dict:
        return {"policy": self.policy, "jit_compile": self.jit_compile,
                "devices": list(self.devices), "replicas": self.replicas,
                "reason": self.reason, "bf16_speedup": self.bf16_speedup}

    def apply(self) -> None:
        keras.mixed_precision.set_dtype_policy(self.policy)

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


def _policy_name(precision: str) -> str:
    return "float32" if precision == "fp32" else precision


def decide_settings(precision: str, xla: str, gpu_capabilities: Sequence[Tuple[int, int]],
                    cpu_flags: Iterable[str], probe: Callable[[], Tuple[float, float]],
                    devices: Tuple[str, ...] = ()) -> DeviceSettings:
    """The decision alone. `gpu_capabilities`: compute capability of each GPU used (empty on a
    CPU-only run); `probe`: () -> (fp32, bf16) seconds per step, called only when precision is
    auto on a CPU with native bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if xla not in XLA_MODES:
        raise ValueError(f"xla must be one of {XLA_MODES}, got {xla!r}")
    where = f"{len(gpu_capabilities)} GPU(s)" if gpu_capabilities else "CPU only"
    if precision != "auto":
        choice = P.PrecisionChoice(_policy_name(precision), f"precision forced to {precision}")
    elif gpu_capabilities:
        choice = P.choose_gpu_precision(gpu_capabilities)
    else:
        choice = P.choose_cpu_precision(cpu_flags, probe)
    if xla == "auto":
        jit = bool(gpu_capabilities)
        xla_reason = f"XLA auto on {where} -> {'on' if jit else 'off'}"
    else:
        jit = xla == "on"
        xla_reason = f"XLA forced {xla}"
    replicas = f"{max(len(devices), 1)} replica(s) {list(devices) or ''}".strip()
    return DeviceSettings(choice.policy, jit, devices,
                          "; ".join((f"{where}: {choice.reason}", xla_reason, replicas)),
                          choice.bf16_speedup)


def gpu_compute_capabilities(gpu_ids: Sequence[int]) -> List[Tuple[int, int]]:
    gpus = tf.config.list_physical_devices("GPU")
    caps = []
    for i in gpu_ids:
        details = tf.config.experimental.get_device_details(gpus[i])
        caps.append(tuple(details.get("compute_capability", (0, 0))))
    return caps


def resolve_device_settings(precision: str = "auto", xla: str = "auto", gpus: str = "all",
                            cpu_replicas: int = 1, filters: Optional[Sequence[int]] = None,
                            skip_filters: Optional[int] = None,
                            probe_cache_dir: Optional[str] = None) -> DeviceSettings:
    """Settings for this machine. `filters`/`skip_filters`: the model's widths, which the CPU
    precision probe times (cached per machine, TF version and width in `probe_cache_dir`);
    needed only for precision auto on a CPU with native bf16."""
    if precision not in PRECISIONS:   # fail before touching devices
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    gpu_ids = select_gpus(gpus, len(tf.config.list_physical_devices("GPU")))
    if gpu_ids:
        devices = tuple(f"/gpu:{i}" for i in gpu_ids) if len(gpu_ids) > 1 else ()
    else:
        devices = (tuple(f"/cpu:{i}" for i in range(cpu_replicas))
                   if cpu_replicas > 1 and split_cpu(cpu_replicas) else ())
    if filters is not None and skip_filters is not None:
        probe = P.cached_probe(filters, skip_filters, probe_cache_dir)
    else:
        def probe():
            raise ValueError("precision auto on a bf16-capable CPU times the model: pass its "
                             "filters and skip_filters")
    settings = decide_settings(precision, xla, gpu_compute_capabilities(gpu_ids), P.cpu_flags(),
                               probe, devices)
    logging.info("Device settings: %s", settings.reason)
    return settings


def synchronize_batch_norm(model: keras.Model) -> None:
    """With several replicas, BatchNorm uses the statistics of the global batch (all-reduced),
    so the forward pass of a multi-replica step equals one replica's on the same global batch.
    The update is not bit-equal to plain BatchNorm's: Keras' synchronized BatchNorm computes
    its moments another way, and over 3 steps the first stage's weight updates differ by up to
    ~15% from unsynchronized BatchNorm on one replica, while two synchronized replicas match
    one synchronized replica to ~0.4% of the update (tests/test_multi_replica.py)."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
