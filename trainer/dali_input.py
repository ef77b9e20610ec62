"""NVIDIA DALI input from Transform's output, with augmentation in DALI operators.

DALI's TFRecord reader cannot read gzip files (Transform writes gzip), so `prepare_shards`
rewrites the shards uncompressed, each with a DALI index file ("offset size" per record, what
DALI's tfrecord2idx writes), once per Transform output: the copies live in
`<cache_dir>/<key>/`, key = hash of the source paths and sizes, and are built in a temporary
directory with a completion marker written last, then renamed into place, so a killed
conversion is never mistaken for a finished one and a rerun on the same data reuses them.

Operators run on the GPU when TensorFlow sees one (DALI `device_id` = the replica's GPU) and on
the CPU otherwise (`device_id=None`, CPU operators only); the DALIDataset itself stays on the
host (see trainer/inputs.py, make_dali_input). Augmentation (train split only):
rotation + scaling (+ optional flip) as one `fn.warp_affine` with the same matrix for image
(linear) and mask (nearest), `fn.brightness_contrast` and `fn.noise.gaussian` on the image.
The elastic deformation needs a per-pixel map: DALI's `fn.experimental.remap` does that, but
only on the GPU, so on the CPU the shared TF ops of trainer/augment.py apply it with `.map`
after the DALIDataset (`needs_tf_elastic`), followed by brightness/contrast/noise (noise added
before a resampling would be smeared by it).

Batches have a static shape; the reader wraps around at the end of an epoch, like
`repeat().batch(drop_remainder=True)`.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from common import storage
from preprocessing import features as F
from trainer.augment import gaussian_kernel, has_affine, is_geometric
from trainer.augment_config import AugmentConfig

MARKER = "COMPLETE.json"
FEATURES = (F.IMAGE, F.MASK, F.ORGAN)


def plugin_available() -> Tuple[bool, str]:
    """(True, "") when DALI's TensorFlow plugin imports, else (False, why)."""
    try:
        import nvidia.dali.plugin.tf  # noqa: F401
    except Exception as e:  # ImportError, or the plugin's library failing to load
        return False, f"{type(e).__name__}: {e}"
    return True, ""


# ---------------------------------------------------------------------------------------------
# gzip shards -> uncompressed shards + index files, cached
#
# The sources (Transform's shards) may be URIs (gs://, s3://) and are read through tf.io.gfile;
# the cache is a local folder on purpose, since DALI's reader opens local files only
# (trainer/inputs.py dali_cache_directory picks a local temp folder for a remote pipeline root).
# So the cache is built with os, shutil and open(), and tests/test_remote_io.py allow-lists them.


@dataclasses.dataclass(frozen=True)
class DaliShards:
    records: Tuple[str, ...]
    indexes: Tuple[str, ...]
    directory: str
    built: bool          # False: reused from the cache


def cache_key(files: Sequence[str]) -> str:
    """Transform artifacts are immutable, so their paths and sizes identify the data."""
    for f in files:
        storage.ensure_filesystem(f)
    entries = [(storage.absolute(f), tf.io.gfile.stat(f).length) for f in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:20]


def _decompress(source: str, target: str) -> None:
    """A gzip shard (local or a URI) -> an uncompressed local file for DALI."""
    storage.ensure_filesystem(source)
    with tf.io.gfile.GFile(source, "rb") as raw, gzip.GzipFile(fileobj=raw) as unzipped, \
            open(target, "wb") as out:
        shutil.copyfileobj(unzipped, out, 1 << 22)


def _has_tumor(f, offset: int, record: int) -> bool:
    f.seek(offset + 12)
    example = tf.train.Example.FromString(f.read(record - 16))
    values = example.features.feature[F.HAS_TUMOR].int64_list.value
    return bool(values and values[0])


def write_index(record_path: str, index_path: str, tumour_repeat: int = 1) -> int:
    """Writes DALI's index of an uncompressed TFRecord file: one "offset size" line per record
    (record = 8-byte length, 4-byte CRC, data, 4-byte CRC). Returns the number of records.
    tumour_repeat > 1: a record with has_tumor = 1 gets that many lines, so DALI's reader reads
    it that many times per epoch (tumour-rich sampling without copying any data)."""
    size = os.path.getsize(record_path)
    lines, offset = [], 0
    with open(record_path, "rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(8)
            if len(header) < 8:
                raise ValueError(f"{record_path}: truncated record header at byte {offset}")
            record = 16 + struct.unpack("<Q", header)[0]
            if offset + record > size:
                raise ValueError(f"{record_path}: truncated record at byte {offset}")
            times = tumour_repeat if tumour_repeat > 1 and _has_tumor(f, offset, record) else 1
            lines.extend([f"{offset} {record}\n"] * times)
            offset += record
    with open(index_path, "w") as f:
        f.writelines(lines)
    return len(lines)


def prepare_shards(files: Sequence[str], cache_dir: str, tumour_repeat: int = 1) -> DaliShards:
    """Uncompressed copies + index files of the gzip TFRecord `files`, built once per set of
    files (and tumour_repeat, see write_index) under `cache_dir` (a local directory: DALI
    reads local files) and reused after."""
    if storage.is_uri(cache_dir):
        raise ValueError(f"DALI's cache must be a local folder (DALI reads local files only), "
                         f"got {cache_dir}")
    files = sorted(files)
    key = cache_key(files) + (f"-tumour{tumour_repeat}" if tumour_repeat > 1 else "")
    final = os.path.join(cache_dir, key)
    names = [f"shard-{i:05d}" for i in range(len(files))]
    shards = DaliShards(tuple(os.path.join(final, n + ".tfrecord") for n in names),
                        tuple(os.path.join(final, n + ".idx") for n in names), final, False)
    if os.path.exists(os.path.join(final, MARKER)):
        return shards
    if os.path.exists(final):   # a copy without its marker: not finished; redo it
        logging.warning("DALI cache %s has no completion marker; rebuilding it", final)
        shutil.rmtree(final, ignore_errors=True)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = os.path.join(cache_dir, f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        counts = []
        for source, name in zip(files, names):
            record = os.path.join(tmp, name + ".tfrecord")
            _decompress(source, record)
            counts.append(write_index(record, os.path.join(tmp, name + ".idx"), tumour_repeat))
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"sources": files, "records": counts}, f)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same copy first; use theirs.
            if not os.path.exists(os.path.join(final, MARKER)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("DALI cache: %d gzip shards (%d records) -> %s", len(files), sum(counts), final)
    return dataclasses.replace(shards, built=True)


# ---------------------------------------------------------------------------------------------
# The DALI pipeline


def feature_shapes(transformed_feature_spec: Dict) -> Dict[str, List[int]]:
    """Per-example shapes of image [H,W,K], mask [H,W,C] and organ [1] from the spec."""
    return {name: [int(d) for d in transformed_feature_spec[name].shape] for name in FEATURES}


def needs_tf_elastic(cfg: Optional[AugmentConfig], op_device: str) -> bool:
    """Elastic deformation (and then the intensity changes) runs in DALI on the GPU (remap)
    and as TF ops after it on the CPU."""
    return cfg is not None and cfg.enabled and cfg.elastic_alpha > 0 and op_device == "cpu"


def _uniform(lo: float, hi: float):
    from nvidia.dali import fn

    # DALI's uniform rejects an empty range; a fixed value is the same draw.
    return fn.random.uniform(range=[float(lo), float(hi)]) if hi > lo else float(lo)


def _coin(probability: float):
    """1.0 with `probability`, else 0.0 (coin_flip gives no floats)."""
    from nvidia.dali import fn, types
    return fn.cast(fn.random.coin_flip(probability=probability), dtype=types.FLOAT)


def _affine(image, mask, cfg: AugmentConfig, applied, height: int, width: int):
    """Rotation and scaling (and flip) about the centre: one matrix, linear for the image,
    nearest for the mask. No fill_value: coordinates are clamped to the border, which keeps
    one-hot masks one-hot."""
    from nvidia.dali import fn, types

    lo, hi = cfg.scale_range
    scale = 1.0 + (_uniform(lo, hi) - 1.0) * applied
    sx = scale * (1.0 - 2.0 * _coin(0.5) * applied) if cfg.flip_left_right else scale
    centre = [width / 2.0, height / 2.0]    # DALI: (x, y), pixel i spans [i, i + 1]
    matrix = fn.transforms.scale(scale=fn.stack(sx, scale), center=centre)
    if cfg.rotation_degrees > 0:
        r = float(cfg.rotation_degrees)
        matrix = fn.transforms.rotation(matrix, angle=_uniform(-r, r) * applied, center=centre)
    return (fn.warp_affine(image, matrix=matrix, inverse_map=False,
                           interp_type=types.INTERP_LINEAR),
            fn.warp_affine(mask, matrix=matrix, inverse_map=False, interp_type=types.INTERP_NN))


def _elastic_gpu(image, mask, cfg: AugmentConfig, applied, height: int, width: int):
    """remap is GPU-only. Same field as trainer/augment.py: white noise blurred by a Gaussian
    of sigma pixels, scaled to alpha pixels of standard deviation; the maps are clamped to the
    image since remap fills outside with 0."""
    from nvidia.dali import fn
    from nvidia.dali import math as dmath
    from nvidia.dali import types

    radius = max(1, min(int(math.ceil(3 * cfg.elastic_sigma)), height - 1, width - 1))
    norm = float(np.sum(np.square(gaussian_kernel(cfg.elastic_sigma, radius).numpy())))
    noise = fn.reshape(fn.random.normal(shape=[height, width, 2]), layout="HWC")
    field = fn.gaussian_blur(noise, sigma=float(cfg.elastic_sigma), window_size=2 * radius + 1)
    field = (field * (float(cfg.elastic_alpha) / norm) * applied).gpu()
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                         indexing="ij")
    map_y = dmath.clamp(types.Constant(ys).gpu() + field[:, :, 0], 0.0, float(height - 1))
    map_x = dmath.clamp(types.Constant(xs).gpu() + field[:, :, 1], 0.0, float(width - 1))
    return (fn.experimental.remap(image, map_x, map_y, interp=types.INTERP_LINEAR,
                                  pixel_origin="center"),
            fn.experimental.remap(mask, map_x, map_y, interp=types.INTERP_NN,
                                  pixel_origin="center"))


def _intensity(image, mean, cfg: AugmentConfig, applied):
    """Contrast about the image's mean, brightness shift, then Gaussian noise (image only)."""
    from nvidia.dali import fn

    lo, hi = cfg.contrast_range
    image = fn.brightness_contrast(
        image, brightness=1.0, contrast_center=mean,
        brightness_shift=_uniform(-cfg.brightness, cfg.brightness) * applied,
        contrast=1.0 + (_uniform(lo, hi) - 1.0) * applied)
    if cfg.noise_std > 0:
        image = fn.noise.gaussian(image, stddev=float(cfg.noise_std) * applied)
    return image


def _augment(image, mask, cfg: AugmentConfig, height: int, width: int, op_device: str):
    """DALI augmentation of one sample (the graph is per sample, run over the batch). On the
    CPU with elastic deformation only the affine part: the rest follows in TF."""
    from nvidia.dali import fn

    applied = _coin(float(cfg.probability))
    # Contrast pivots on the mean of the image as read (the warp barely changes it); argument
    # inputs must be CPU tensors, so take it before the image moves to the GPU.
    mean = fn.reductions.mean(image)
    if op_device == "gpu":
        image, mask = image.gpu(), mask.gpu()
    if has_affine(cfg):
        image, mask = _affine(image, mask, cfg, applied, height, width)
    if needs_tf_elastic(cfg, op_device):
        return image, mask
    if cfg.elastic_alpha > 0:
        image, mask = _elastic_gpu(image, mask, cfg, applied, height, width)
    return _intensity(image, mean, cfg, applied), mask


def _organ(mask, channels: int):
    """Organ present, recomputed from the augmented mask: DALI's twin of
    models.losses.organ_present (see trainer/augment.py)."""
    from nvidia.dali import fn, types
    foreground = mask if channels == 1 else mask[:, :, 1:]
    present = fn.reductions.max(foreground) > 0.5
    return fn.reshape(fn.cast(present, dtype=types.FLOAT), shape=[1])


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """Everything that defines one replica's DALI pipeline."""
    shards: DaliShards
    shapes: Dict[str, List[int]]
    batch_size: int              # per replica
    shuffle: bool
    shuffle_buffer: int = 256
    seed: int = 0
    augment: Optional[AugmentConfig] = None
    op_device: str = "cpu"       # "cpu" | "gpu"
    num_threads: int = 2


def build_pipeline(spec: PipelineSpec, shard_id: int = 0, num_shards: int = 1,
                   device_id: Optional[int] = None):
    import nvidia.dali.tfrecord as tfrec
    from nvidia.dali import fn, pipeline_def

    files = list(zip(spec.shards.records, spec.shards.indexes))
    if spec.shuffle:   # the reader shuffles within its buffer; vary the file order as well
        np.random.default_rng(spec.seed).shuffle(files)
    height, width, _ = spec.shapes[F.IMAGE]
    channels = spec.shapes[F.MASK][-1]

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads,
                  device_id=device_id, seed=spec.seed + 7919 * shard_id)
    def graph():
        read = fn.readers.tfrecord(
            path=[r for r, _ in files], index_path=[i for _, i in files],
            features={name: tfrec.FixedLenFeature(shape, tfrec.float32, 0.0)
                      for name, shape in spec.shapes.items()},
            random_shuffle=spec.shuffle, initial_fill=max(1, spec.shuffle_buffer),
            shard_id=shard_id, num_shards=num_shards, seed=spec.seed + shard_id, name="reader")
        image = fn.reshape(read[F.IMAGE], layout="HWC")
        mask = fn.reshape(read[F.MASK], layout="HWC")
        organ = read[F.ORGAN]
        if spec.augment is not None and spec.augment.enabled:
            image, mask = _augment(image, mask, spec.augment, height, width, spec.op_device)
            if is_geometric(spec.augment) and not needs_tf_elastic(spec.augment, spec.op_device):
                organ = _organ(mask, channels)   # else the TF op after DALI recomputes it
        if spec.op_device == "gpu":
            image, mask, organ = (x if x.device == "gpu" else x.gpu() for x in (image, mask, organ))
        return image, mask, organ

    return graph()


def make_dali_dataset(spec: PipelineSpec, shard_id: int = 0, num_shards: int = 1,
                      device_id: Optional[int] = None) -> tf.data.Dataset:
    """One replica's DALIDataset of (image, mask, organ) batches, to be created on the host
    (tf.device("/cpu:0")); with GPU operators (`device_id` = the GPU) DALI copies the outputs
    back to host memory, which its device check would otherwise refuse."""
    from nvidia.dali.plugin.tf import DALIDataset

    b = spec.batch_size
    shapes = tuple((b, *spec.shapes[name]) for name in FEATURES)
    return DALIDataset(pipeline=build_pipeline(spec, shard_id, num_shards, device_id),
                       batch_size=b, output_shapes=shapes,
                       output_dtypes=(tf.float32,) * len(FEATURES), device_id=device_id,
                       num_threads=spec.num_threads,
                       fail_on_device_mismatch=spec.op_device == "cpu")
