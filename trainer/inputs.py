"""The Trainer's input: Transform's gzip TFRecords of transformed examples -> batches of
(image [B,H,W,K], {output name: target}), through tf.data or NVIDIA DALI, with augmentation on
the training split. Batches have a static shape (drop_remainder) so XLA and multi-replica
training see fixed shapes.

Entry point for trainer/run.py:

    make_input_datasets(train_files, eval_files, transformed_feature_spec, output_names,
                        train_cfg, strategy=None, cache_dir=None, seed=0, dali_device=None)
        -> (train_ds, eval_ds, description)

  train_cfg  custom_config["train"] (TrainConfig as a dict): uses batch_size (global),
             shuffle_buffer, input ("auto" | "dali" | "tfdata"; auto = dali when its TF plugin
             imports) and augment (AugmentConfig as a dict; train split only).
  strategy   the tf.distribute strategy; with several replicas DALI runs one pipeline per
             replica (shard_id = replica) and the datasets are already distributed; tf.data
             datasets are left for Keras to distribute, except with several workers
             (MultiWorkerMirroredStrategy): then each worker reads its own shard of the
             records (`make_dataset(shard=...)`), in per-replica batches that add up to the
             global batch, and DALI is not used (`resolve_input`).
  cache_dir  local directory for DALI's uncompressed copies of the shards
             (`dali_cache_directory(fn_args.model_run_dir)`: <pipeline_root>/Trainer/dali_cache).
  seed       shuffling and augmentation (reproducible for a given seed).
  dali_device  "cpu" | "gpu" for DALI's operators; default gpu when TensorFlow sees one.
  Returns datasets ready for keras.Model.fit and a one-line description for the log.
  `first_batch(eval_ds)` gives (images, masks) as numpy for the TensorBoard image callback,
  also from a distributed dataset.

`make_dataset` is the plain tf.data reader (benchmarks, tests).
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from preprocessing import features as F
from trainer import dali_input
from trainer.augment import augment_batch
from trainer.augment_config import AugmentConfig, augment_config
from trainer.checkpoints import trainer_root
from trainer.device import is_multi_worker
from trainer.train_config import INPUTS, TrainConfig

TEMP_CACHE_DIR = os.path.join(tempfile.gettempdir(), "unet3plus_dali_cache")


def _list_files(file_patterns: Sequence[str]) -> List[str]:
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {list(file_patterns)}")
    return files


def targets_for_outputs(output_names: Sequence[str], features: Dict[str, tf.Tensor]
                        ) -> Dict[str, tf.Tensor]:
    """Every mask output (final and deep-supervision side outputs) learns the mask; the
    classification-guided module's "organ" output learns organ presence."""
    return {name: features[F.ORGAN] if name == "organ" else features[F.MASK]
            for name in output_names}


def _augment_fn(cfg: AugmentConfig, seed: int, affine: bool = True, intensity: bool = True):
    """(batch index, features) -> augmented features; the batch index seeds the batch."""
    def fn(index, feats):
        image, mask, organ = augment_batch(
            feats[F.IMAGE], feats[F.MASK], tf.stack([tf.cast(seed, tf.int64), index]), cfg,
            affine=affine, intensity=intensity)
        return dict(feats, **{F.IMAGE: image, F.MASK: mask, F.ORGAN: organ})
    return fn


def _repeat_tumour_record(record: tf.Tensor, times: int) -> tf.data.Dataset:
    has_tumor = tf.io.parse_single_example(
        record, {F.HAS_TUMOR: tf.io.FixedLenFeature([], tf.int64, default_value=0)})[F.HAS_TUMOR]
    return tf.data.Dataset.from_tensors(record).repeat(
        tf.where(has_tumor > 0, tf.constant(times, tf.int64), tf.constant(1, tf.int64)))


def make_dataset(file_patterns: Sequence[str], transformed_feature_spec: Dict,
                 output_names: Sequence[str], batch_size: int, shuffle: bool,
                 shuffle_buffer: int = 256, repeat: bool = True, seed: int = 0,
                 augment=None, shard: Optional[Tuple[int, int]] = None,
                 tumour_repeat: int = 1) -> tf.data.Dataset:
    """tf.data input. Without shuffling, records come file by file in sorted order, as DALI's
    reader gives them, so the two inputs can be compared batch for batch. `augment`: an
    AugmentConfig or its dict (None or enabled=False: none). `shard`: (count, index): keep
    every count-th record from the index-th; every worker reads the same stream (the order is
    then deterministic), so the shards partition it, and batch i of the `count` workers
    together holds the records of batch i of one unsharded reader of `count` x `batch_size`.
    `tumour_repeat` (shuffled input only): each record with has_tumor = 1 comes that many times,
    before the shuffle buffer, which spreads the copies over batches."""
    spec = {k: transformed_feature_spec[k] for k in dali_input.FEATURES}
    files = _list_files(file_patterns)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                           cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=shard is not None)
        if tumour_repeat > 1:
            ds = ds.flat_map(lambda record: _repeat_tumour_record(record, tumour_repeat))
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    else:
        ds = tf.data.TFRecordDataset(ds, compression_type="GZIP", buffer_size=1 << 22)
    if repeat:
        ds = ds.repeat()
    if shard is not None:   # before parsing and augmenting: each worker does only its part
        ds = ds.shard(*shard)
        seed = seed + 104729 * shard[1]   # augmentation draws differ between the workers
    ds = ds.batch(batch_size, drop_remainder=True).map(
        lambda serialized: tf.io.parse_example(serialized, spec),
        num_parallel_calls=tf.data.AUTOTUNE)
    cfg = augment_config(augment) if augment is not None else None
    if cfg is not None and cfg.enabled:
        ds = ds.enumerate().map(_augment_fn(cfg, seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda feats: (feats[F.IMAGE], targets_for_outputs(output_names, feats)),
                  num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def resolve_input(requested: str, multi_worker: bool = False) -> Tuple[str, str]:
    """("dali" | "tfdata", why). With several workers tf.data only: our DALI input runs one
    pipeline per replica (InputReplicationMode.PER_REPLICA), which MultiWorkerMirroredStrategy
    does not implement."""
    if requested not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, got {requested!r}")
    if multi_worker:
        if requested == "dali":
            raise ValueError("input 'dali' is not supported with several workers (TF_CONFIG): "
                             "its per-replica pipelines need InputReplicationMode.PER_REPLICA, "
                             "which MultiWorkerMirroredStrategy does not implement; use "
                             "input 'tfdata' or 'auto'")
        return "tfdata", (f"input {requested}: tf.data, sharded per worker (DALI is not "
                          f"supported with several workers)")
    available, error = dali_input.plugin_available()
    if requested == "tfdata":
        return "tfdata", "input forced to tfdata"
    if requested == "dali":
        if not available:
            raise RuntimeError(f"input 'dali' requested but DALI's TensorFlow plugin does not "
                               f"import ({error}); install nvidia-dali-tf-plugin or use tfdata")
        return "dali", "input forced to dali"
    if available:
        return "dali", "input auto: DALI's TensorFlow plugin imports"
    return "tfdata", f"input auto: DALI's TensorFlow plugin does not import ({error})"


def operator_device() -> str:
    """DALI operators on the GPU when TensorFlow sees one."""
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def dali_cache_directory(model_run_dir: str) -> str:
    """<pipeline_root>/Trainer/dali_cache next to the Trainer's outputs (shared by every run of
    the Trainer, keyed inside by the Transform output); a local temp directory when the
    pipeline root is remote, since DALI reads local files."""
    if "://" in model_run_dir:
        return TEMP_CACHE_DIR
    return os.path.join(trainer_root(model_run_dir), "dali_cache")


def _dali_replica(spec: dali_input.PipelineSpec, output_names: Sequence[str], shard_id: int,
                  num_shards: int, device_id: Optional[int]) -> tf.data.Dataset:
    ds = dali_input.make_dali_dataset(spec, shard_id, num_shards, device_id)
    cfg = spec.augment
    if dali_input.needs_tf_elastic(cfg, spec.op_device):
        # No CPU remap in DALI: the elastic deformation, then brightness/contrast/noise, run as
        # the shared TF ops after it (applied with the configured probability, drawn apart from
        # DALI's draw for the affine part); they recompute `organ`.
        augment = _augment_fn(cfg, spec.seed + 104729 * shard_id, affine=False)
        ds = ds.enumerate().map(
            lambda i, batch: augment(i, dict(zip(dali_input.FEATURES, batch))),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda *batch: dict(zip(dali_input.FEATURES, batch)))
    return ds.map(lambda feats: (feats[F.IMAGE], targets_for_outputs(output_names, feats)))


def make_dali_input(files: Sequence[str], transformed_feature_spec: Dict,
                    output_names: Sequence[str], batch_size: int, shuffle: bool, cache_dir: str,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    augment=None, shuffle_buffer: int = 256, seed: int = 0,
                    op_device: Optional[str] = None, num_threads: Optional[int] = None,
                    tumour_repeat: int = 1):
    """DALI input; `batch_size` is global. One replica: a DALIDataset (tf.data.Dataset). Several:
    a distributed dataset with one DALI pipeline per replica, each reading its shard."""
    op_device = op_device or operator_device()
    cfg = augment_config(augment) if augment is not None else None
    shards = dali_input.prepare_shards(_list_files(files), cache_dir, tumour_repeat)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if batch_size % replicas:
        raise ValueError(f"batch size {batch_size} is not divisible by {replicas} replicas")
    spec = dali_input.PipelineSpec(
        shards=shards, shapes=dali_input.feature_shapes(transformed_feature_spec),
        batch_size=batch_size // replicas, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
        seed=seed, augment=cfg if cfg is not None and cfg.enabled else None,
        op_device=op_device, num_threads=num_threads or min(4, os.cpu_count() or 1))
    gpu = op_device == "gpu"
    gpu_ids = [tf.DeviceSpec.from_string(d).device_index or 0
               for d in (strategy.extended.worker_devices if replicas > 1 else ["/gpu:0"])]
    # The DALIDataset sits on the host even when its operators run on a GPU (DALI then copies
    # the batch back): tf.data transformations cannot follow a GPU-placed DALIDataset (DALI's
    # docs), and the .map to Keras' (image, {output: target}) structure (and, on the CPU, the
    # elastic op) must. Keras / the strategy then copy each batch to its replica's device.
    if replicas == 1:
        with tf.device("/cpu:0"):
            return _dali_replica(spec, output_names, 0, 1, gpu_ids[0] if gpu else None)

    def replica_dataset(context: tf.distribute.InputContext):
        i = context.input_pipeline_id
        with tf.device("/cpu:0"):
            return _dali_replica(spec, output_names, i, context.num_input_pipelines,
                                 gpu_ids[i] if gpu else None)

    # One pipeline per replica (DALI's recipe for MirroredStrategy), each reading its shard;
    # the strategy fetches each replica's batches to its device.
    options = tf.distribute.InputOptions(
        experimental_fetch_to_device=True,
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
    return strategy.distribute_datasets_from_function(replica_dataset, options)


def describe_augmentation(cfg: Optional[AugmentConfig]) -> str:
    if cfg is None or not cfg.enabled:
        return "augmentation off"
    lo, hi = cfg.scale_range
    clo, chi = cfg.contrast_range
    return (f"augmentation p={cfg.probability:g}: rotation +-{cfg.rotation_degrees:g} deg, "
            f"scale {lo:g}-{hi:g}, elastic alpha {cfg.elastic_alpha:g} px sigma "
            f"{cfg.elastic_sigma:g} px, brightness +-{cfg.brightness:g}, contrast "
            f"{clo:g}-{chi:g}, noise {cfg.noise_std:g}, left-right flip "
            f"{'on' if cfg.flip_left_right else 'off'}")


def make_input_datasets(train_files: Sequence[str], eval_files: Sequence[str],
                        transformed_feature_spec: Dict, output_names: Sequence[str],
                        train_cfg: Union[TrainConfig, dict],
                        strategy: Optional[tf.distribute.Strategy] = None,
                        cache_dir: Optional[str] = None, seed: int = 0,
                        dali_device: Optional[str] = None):
    """(train_ds, eval_ds, description); see the module docstring. `train_cfg`: TrainConfig or
    its dict (missing keys take TrainConfig's defaults). dali_device: "cpu" | "gpu" for DALI's
    operators (default: gpu when TensorFlow sees one)."""
    if not isinstance(train_cfg, TrainConfig):
        train_cfg = TrainConfig.from_dict(train_cfg)
    kind, why = resolve_input(train_cfg.input, is_multi_worker(strategy))
    augment = train_cfg.augment
    batch = train_cfg.batch_size
    buffer = train_cfg.shuffle_buffer
    repeat = train_cfg.tumour_slice_repeat
    aug_text = describe_augmentation(augment)
    if repeat > 1:
        aug_text += f"; training slices with tumour read {repeat}x per pass"
    if kind == "tfdata" and is_multi_worker(strategy):
        train_ds = _per_worker(strategy, batch, train_files, transformed_feature_spec,
                               output_names, shuffle=True, shuffle_buffer=buffer, seed=seed,
                               augment=augment, tumour_repeat=repeat)
        eval_ds = _per_worker(strategy, batch, eval_files, transformed_feature_spec,
                              output_names, shuffle=False)
        description = (f"tf.data ({why}), global batch {batch} = "
                       f"{strategy.num_replicas_in_sync} replicas x "
                       f"{batch // strategy.num_replicas_in_sync}; {aug_text}")
    elif kind == "tfdata":
        train_ds = make_dataset(train_files, transformed_feature_spec, output_names, batch,
                                shuffle=True, shuffle_buffer=buffer, seed=seed,
                                augment=augment, tumour_repeat=repeat)
        eval_ds = make_dataset(eval_files, transformed_feature_spec, output_names, batch,
                               shuffle=False)
        description = f"tf.data ({why}); {aug_text}"
    else:
        cache_dir = cache_dir or TEMP_CACHE_DIR
        op_device = dali_device or operator_device()
        common = dict(transformed_feature_spec=transformed_feature_spec,
                      output_names=output_names, batch_size=batch, cache_dir=cache_dir,
                      strategy=strategy, op_device=op_device)
        train_ds = make_dali_input(train_files, shuffle=True, augment=augment,
                                   shuffle_buffer=buffer, seed=seed, tumour_repeat=repeat,
                                   **common)
        eval_ds = make_dali_input(eval_files, shuffle=False, **common)
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        elastic = (" (elastic, then intensity, as TF ops after DALI: DALI has no CPU remap)"
                   if dali_input.needs_tf_elastic(augment, op_device) else "")
        description = (f"DALI ({why}); operators on {op_device}, {replicas} pipeline(s), "
                       f"cache {cache_dir}; {aug_text}{elastic}")
    logging.info("Input: %s", description)
    return train_ds, eval_ds, description


def _per_worker(strategy: tf.distribute.Strategy, global_batch: int, files: Sequence[str],
                *args, **kwargs):
    """A distributed dataset in which each worker reads its shard of the records, batched per
    replica. Rather than Keras' distribution of one global-batch dataset, which with several
    workers shards the finished batches (auto-shard policy DATA: every worker would parse and
    augment every global batch, then keep its part)."""
    def worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Raises if the global batch does not split evenly over the replicas.
        per_replica = context.get_per_replica_batch_size(global_batch)
        return make_dataset(files, *args, batch_size=per_replica,
                            shard=(context.num_input_pipelines, context.input_pipeline_id),
                            **kwargs)
    return strategy.distribute_datasets_from_function(worker_dataset)


def first_batch(dataset) -> Tuple[np.ndarray, np.ndarray]:
    """(images, masks) of the first batch as numpy, from a dataset or a distributed dataset
    (the replicas' parts concatenated), e.g. for the TensorBoard image callback."""
    images, targets = next(iter(dataset))
    mask = targets[F.MASK] if F.MASK in targets else next(iter(targets.values()))

    def local(x):
        parts = getattr(x, "values", (x,))
        return np.concatenate([np.asarray(p) for p in parts])
    return local(images), local(mask)
