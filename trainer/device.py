"""Precision, XLA and distribution for this machine, every choice overridable.

Precision `auto` (trainer/precision.py): on CPU, bf16 only where the CPU has native bf16 and a
short probe of the configured widths measures it faster than fp32, fp32 otherwise; on GPU, bf16
from compute capability 8.0, fp16 with loss scaling below. XLA `auto`: on with GPUs; off on CPU,
where XLA trained UNet 3+ 3.4x slower than oneDNN's kernels (bench/train_throughput.py --xla on).
Replicas: MirroredStrategy over the chosen GPUs ("all", the first N, or a list of ids); on a
CPU-only machine `cpu_replicas` > 1 splits the CPU into logical devices so the multi-replica
path runs (and is tested) without GPUs.
Workers: when TF_CONFIG names more than one worker (chief and/or workers; a TFJob or Vertex AI
sets it on every pod), MultiWorkerMirroredStrategy over all of them instead, each worker
training on its chosen GPUs or on one CPU replica (`cluster_role` reads TF_CONFIG; which
worker writes what: trainer/checkpoints.py `role_directories`).

`decide_settings` is the pure decision (GPU capabilities, CPU flags and the probe injected);
`resolve_device_settings` gathers those facts from TensorFlow and this machine.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from trainer import precision as P
from trainer.train_config import PRECISIONS, XLA_MODES



@dataclasses.dataclass(frozen=True)
class ClusterRole:
    """This process's place in the training cluster that TF_CONFIG describes."""
    task_type: str = "worker"
    task_index: int = 0
    workers: int = 1          # processes training together: the chief and the workers
    has_chief: bool = False   # the cluster names a "chief" task

    @property
    def multi_worker(self) -> bool:
        return self.workers > 1

    @property
    def is_chief(self) -> bool:
        # TF's rule: the "chief" task, or worker 0 when the cluster names no chief.
        return self.task_type in ("chief", "master") or (
            self.task_type == "worker" and self.task_index == 0 and not self.has_chief)

    @property
    def name(self) -> str:
        return f"{self.task_type}:{self.task_index}"


def cluster_role(tf_config: Optional[str] = None) -> ClusterRole:
    """The role TF_CONFIG (the environment's when None) gives this process; one worker when it
    is unset or names no cluster. Parameter servers and evaluator tasks are refused: this trainer
    runs synchronous data parallelism, where every task trains."""
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    config = json.loads(text) if text.strip() else {}
    cluster = config.get("cluster") or {}
    if not cluster:
        return ClusterRole()
    if cluster.get("ps"):
        raise ValueError("TF_CONFIG names parameter servers (ps): parameter-server training is "
                         "not supported; give chief and/or worker tasks only")
    task = config.get("task") or {}
    task_type, task_index = task.get("type", "worker"), int(task.get("index", 0))
    if task_type not in ("chief", "master", "worker"):
        raise ValueError(f"TF_CONFIG task type {task_type!r}: this trainer runs only as a chief "
                         f"or worker task (no side-car evaluator)")
    has_chief = bool(cluster.get("chief") or cluster.get("master"))
    workers = sum(len(cluster.get(job) or []) for job in ("chief", "master", "worker"))
    return ClusterRole(task_type, task_index, max(workers, 1), has_chief)


@dataclasses.dataclass(frozen=True)
class DeviceSettings:
    policy: str               # Keras dtype policy name: float32 | mixed_bfloat16 | mixed_float16
    jit_compile: bool
    devices: Tuple[str, ...]  # one replica per device of this worker; empty: TF's default
    reason: str
    bf16_speedup: Optional[float] = None   # the CPU probe's fp32/bf16 step-time ratio, if run
    role: ClusterRole = ClusterRole()

    @property
    def replicas(self) -> int:
        """Replicas in sync: this worker's times the number of workers."""
        return max(len(self.devices), 1) * self.role.workers

    def to_dict(self) -> dict:
        return {"policy": self.policy, "jit_compile": self.jit_compile,
                "devices": list(self.devices), "replicas": self.replicas,
                "workers": self.role.workers, "task": self.role.name,
                "chief": self.role.is_chief,
                "reason": self.reason, "bf16_speedup": self.bf16_speedup}

    def apply(self) -> None:
        keras.mixed_precision.set_dtype_policy(self.policy)

    def strategy(self) -> tf.distribute.Strategy:
        """Create it once per process, before TensorFlow runs anything: MultiWorkerMirrored
        has to configure the runtime's collective ops first."""
        if self.role.multi_worker:
            return _multi_worker_strategy(self.replicas)
        if len(self.devices) > 1:
            return tf.distribute.MirroredStrategy(devices=list(self.devices))
        return tf.distribute.get_strategy()


def _multi_worker_strategy(replicas: int) -> tf.distribute.Strategy:
    try:   # reads TF_CONFIG itself, and connects to the other workers (waits for them)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        raise RuntimeError(
            f"Cannot start MultiWorkerMirroredStrategy ({e}). It must be created before "
            f"TensorFlow runs any op in this process: call run_fn in a fresh process") from e
    if strategy.num_replicas_in_sync != replicas:
        raise RuntimeError(f"MultiWorkerMirroredStrategy has {strategy.num_replicas_in_sync} "
                           f"replicas, expected {replicas}: every worker must see the same "
                           f"number of devices")
    return strategy


def is_multi_worker(strategy: Optional[tf.distribute.Strategy]) -> bool:
    """True when the strategy's replicas span several processes (more replicas in sync than
    this worker has devices)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))


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
                    devices: Tuple[str, ...] = (),
                    role: ClusterRole = ClusterRole()) -> DeviceSettings:
    """The decision alone. `gpu_capabilities`: compute capability of each GPU used (empty on a
    CPU-only run); `probe`: () -> (fp32, bf16) seconds per step, called only when precision is
    auto on a CPU with native bf16 and one worker; `role`: from TF_CONFIG (`cluster_role`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if xla not in XLA_MODES:
        raise ValueError(f"xla must be one of {XLA_MODES}, got {xla!r}")
    where = f"{len(gpu_capabilities)} GPU(s)" if gpu_capabilities else "CPU only"
    if precision != "auto":
        choice = P.PrecisionChoice(_policy_name(precision), f"precision forced to {precision}")
    elif gpu_capabilities:
        choice = P.choose_gpu_precision(gpu_capabilities)
    elif role.multi_worker:
        # Every worker must build the same model: a timing probe could differ between machines.
        choice = P.PrecisionChoice("float32", f"precision auto with {role.workers} workers on "
                                   f"CPU -> fp32 (no bf16 probe: its timing could differ "
                                   f"between the workers, which must agree)")
    else:
        choice = P.choose_cpu_precision(cpu_flags, probe)
    if xla == "auto":
        jit = bool(gpu_capabilities)
        xla_reason = f"XLA auto on {where} -> {'on' if jit else 'off'}"
    else:
        jit = xla == "on"
        xla_reason = f"XLA forced {xla}"
    per_worker = " per worker" if role.multi_worker else ""
    replicas = f"{max(len(devices), 1)} replica(s){per_worker} {list(devices) or ''}".strip()
    return DeviceSettings(choice.policy, jit, devices,
                          "; ".join((f"{where}: {choice.reason}", xla_reason, replicas,
                                     _distribution_reason(role, len(devices)))),
                          choice.bf16_speedup, role)


def _distribution_reason(role: ClusterRole, devices: int) -> str:
    if role.multi_worker:
        duty = ("the chief: exports the model, writes TensorBoard logs, the best weights and "
                "the training report" if role.is_chief else
                "not the chief: writes its outputs to a temporary directory, deleted at the end")
        return (f"MultiWorkerMirroredStrategy: TF_CONFIG names {role.workers} workers, "
                f"{max(devices, 1) * role.workers} replicas in sync; this is {role.name}, "
                f"{duty}")
    if devices > 1:
        return "MirroredStrategy over this machine's replicas (TF_CONFIG names no other worker)"
    return "one replica, no distribution strategy (TF_CONFIG names no other worker)"


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
                            probe_cache_dir: Optional[str] = None,
                            role: Optional[ClusterRole] = None) -> DeviceSettings:
    """Settings for this machine. `filters`/`skip_filters`: the model's widths, which the CPU
    precision probe times (cached per machine, TF version and width in `probe_cache_dir`);
    needed only for precision auto on a CPU with native bf16. `role`: TF_CONFIG's by default.
    Touches no TensorFlow op with several workers, so that the strategy can still be made."""
    if precision not in PRECISIONS:   # fail before touching devices
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    role = cluster_role() if role is None else role
    gpu_ids = select_gpus(gpus, len(tf.config.list_physical_devices("GPU")))
    if role.multi_worker:
        devices = _multi_worker_devices(gpu_ids, cpu_replicas)
    elif gpu_ids:
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
                               probe, devices, role)
    logging.info("Device settings: %s", settings.reason)
    return settings


def _multi_worker_devices(gpu_ids: Sequence[int], cpu_replicas: int) -> Tuple[str, ...]:
    """MultiWorkerMirroredStrategy trains on every GPU TensorFlow sees, or on one CPU device:
    hide the GPUs not chosen; logical CPU devices are not used."""
    if cpu_replicas > 1 and not gpu_ids:
        logging.warning("cpu_replicas=%d ignored: with several workers each trains one CPU "
                        "replica", cpu_replicas)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpu_ids) < len(gpus):
        tf.config.set_visible_devices([gpus[i] for i in gpu_ids], "GPU")
    return tuple(f"/gpu:{i}" for i in range(len(gpu_ids))) if len(gpu_ids) > 1 else ()


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


def enable_multi_worker_fit(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Works around the two places where fit() of Keras 3 (3.12, TF backend) fails when a
    MultiWorkerMirroredStrategy spans several workers (keras-team/keras#20585):

    1. fit() and evaluate() first build the metrics from one input batch passed through
       strategy.reduce, which cannot reduce a nested batch across workers. Here they are built
       from the input's element spec (one replica's part): only shapes and dtypes matter, and
       reading a batch first would start the input over with a second iterator, whose seeded
       shuffle order would depend on how far the first had read ahead.
    2. each step's logs are reduced with strategy.reduce("MEAN", v, axis=0), which fails on
       scalars; here with axis=None: the mean over all replicas of all workers, as Keras takes
       it over the replicas of one machine.

    Epoch-end logs (validation Dice for BestWeights and EarlyStopping) are read from the metrics'
    all-reduced state, so every worker sees the same values. Does nothing with one worker."""
    if not is_multi_worker(strategy):
        return
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer
    if not getattr(keras_tf_trainer.reduce_per_replica, "multi_worker_mean", False):
        keras_tf_trainer.reduce_per_replica = _multi_worker_mean(
            keras_tf_trainer.reduce_per_replica)

    def symbolic_build(iterator=None, data_batch=None):
        if data_batch is None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        # A per-replica value or spec -> its first replica's part; a plain one stays as it is.
        local = tf.nest.map_structure(
            lambda part: tf.nest.flatten(part, expand_composites=True)[0], data_batch)
        with strategy.scope():
            model._symbolic_build(data_batch=local)
    model._maybe_symbolic_build = symbolic_build


def _multi_worker_mean(reduce_per_replica):
    def reduce(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return keras.tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)
    reduce.multi_worker_mean = True
    return reduce


def wait_for_workers(strategy: tf.distribute.Strategy) -> None:
    """Returns when every worker has reached this call (an all-reduce of one number): e.g. so
    that no worker exits, and its TFX executor looks for the model, before the chief wrote it."""
    if is_multi_worker(strategy):
        strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.constant(1.0))), axis=None)
