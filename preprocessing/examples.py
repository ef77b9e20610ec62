"""SliceRecord -> tf.Example in the format of preprocessing/features.py. Used by the Beam
conversion (training data) and by predict.py (serving requests), so both build the same bytes."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from preprocessing import features as F
from preprocessing.slices import SliceRecord


def _bytes(v: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _ints(v) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in np.ravel(v)]))


def _floats(v) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in np.ravel(v)]))


def slice_to_example(case_id: str, spacing, record: SliceRecord) -> tf.train.Example:
    """One SliceRecord as a tf.Example in the format described in preprocessing/features.py."""
    feats = {
        F.IMAGE: _bytes(record.image.astype(F.IMAGE_DTYPE, copy=False).tobytes()),
        F.IMAGE_SHAPE: _ints(record.image.shape),
        F.VOLUME_ID: _bytes(case_id.encode()),
        F.SLICE_INDEX: _ints(record.slice_index),
        F.NUM_SLICES: _ints(record.num_slices),
        F.SPACING: _floats(spacing),
    }
    if record.label is not None:
        liver = record.label > 0
        tumor = record.label == 2
        feats.update({
            F.LABEL: _bytes(record.label.astype(F.LABEL_DTYPE, copy=False).tobytes()),
            F.HAS_LIVER: _ints(int(liver.any())),
            F.HAS_TUMOR: _ints(int(tumor.any())),
            F.LIVER_FRACTION: _floats(liver.mean()),
            F.TUMOR_FRACTION: _floats(tumor.mean()),
        })
    return tf.train.Example(features=tf.train.Features(feature=feats))
