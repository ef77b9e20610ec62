"""tf.data input from Transform's output: gzip TFRecords of transformed examples -> batches of
(image [B,H,W,K], {output name: target}). Batches have a static shape (drop_remainder) so XLA
and multi-replica training see fixed shapes."""
from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from preprocessing import features as F


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


def make_dataset(file_patterns: Sequence[str], transformed_feature_spec: Dict,
                 output_names: Sequence[str], batch_size: int, shuffle: bool,
                 shuffle_buffer: int = 256, repeat: bool = True, seed: int = 0
                 ) -> tf.data.Dataset:
    spec = {k: transformed_feature_spec[k] for k in (F.IMAGE, F.MASK, F.ORGAN)}
    files = _list_files(file_patterns)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                       cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=not shuffle)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        ds = ds.repeat()

    def parse(serialized):
        feats = tf.io.parse_example(serialized, spec)
        return feats[F.IMAGE], targets_for_outputs(output_names, feats)

    return (ds.batch(batch_size, drop_remainder=True)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
