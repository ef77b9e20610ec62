"""Reference helpers over preprocessing/slices.py that only the tests use: the whole-volume forms
of what the conversion does slice by slice (windowing, slice selection from labels [H, W, Z],
display-oriented volumes, context stacks of [H, W, Z], SliceRecords), and `slice_to_example`: the
tf.train.Example built from protobuf objects, the reference that preprocessing/examples.py's
direct wire-format writer is checked against."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np

from preprocessing import features as F
from preprocessing.examples import label_stats
from preprocessing.nifti import CanonicalCase
from preprocessing.slices import (SliceConfig, SliceRecord, context_indices, prepare_slices,
                                  select_by_liver, stack_context_zhw)


def window_hu(hu: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    """Clips HU to the window and stores as int16 (the window always fits int16)."""
    return np.rint(np.clip(hu, window[0], window[1])).astype(np.int16)


def select_slices(labels: np.ndarray, case_id: str, config: SliceConfig) -> np.ndarray:
    """Indices of the slices to convert from labels [H, W, Z]. "liver_margin": the liver's z-range
    plus `margin`, and a deterministic `keep_fraction` of the remaining slices; "all": every one."""
    num_slices = labels.shape[2]
    if config.selection == "all":
        return np.arange(num_slices)
    if config.selection != "liver_margin":
        raise ValueError(f"unknown slice selection {config.selection!r}")
    has_liver = (labels > 0).any(axis=(0, 1))
    return select_by_liver(has_liver, case_id, config)


def prepare_volume(case: CanonicalCase, config: SliceConfig
                   ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Canonical case -> display-oriented, resampled, windowed int16 image [H, W, Z] and uint8
    labels [H, W, Z] (or None). (Views of slice-major arrays; see prepare_slices.)"""
    prepared = prepare_slices(case, config)
    labels = None if prepared.labels is None else np.transpose(prepared.labels, (1, 2, 0))
    return np.transpose(prepared.image, (1, 2, 0)), labels


def stack_context(image: np.ndarray, z: int, context: int) -> np.ndarray:
    """Slices z-context..z+context of [H, W, Z] as channels [H, W, K]; indices clamped at the
    volume's ends."""
    return np.ascontiguousarray(image[:, :, context_indices(z, context, image.shape[2])])


def iter_slices(case: CanonicalCase, config: SliceConfig,
                indices: Optional[np.ndarray] = None) -> Iterator[SliceRecord]:
    """Yields SliceRecords for the selected slices (all slices when `indices` is None and the
    config says "all"; the selection otherwise)."""
    prepared = prepare_slices(case, config, selected_only=indices is None)
    if indices is None:
        indices = prepared.selected
    for z in indices:
        yield SliceRecord(
            image=stack_context_zhw(prepared.image, int(z), config.context),
            label=None if prepared.labels is None else prepared.labels[int(z)],
            slice_index=int(z),
            num_slices=prepared.num_slices,
        )


def slice_to_example(case_id: str, spacing, record: SliceRecord):
    """One SliceRecord as a tf.train.Example proto, built field by field (the reference)."""
    import tensorflow as tf

    def _bytes(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in np.ravel(v)]))

    def _floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(
            value=[float(x) for x in np.ravel(v)]))

    feats = {
        F.IMAGE: _bytes(record.image.astype(F.IMAGE_DTYPE, copy=False).tobytes()),
        F.IMAGE_SHAPE: _ints(record.image.shape),
        F.VOLUME_ID: _bytes(case_id.encode()),
        F.SLICE_INDEX: _ints(record.slice_index),
        F.NUM_SLICES: _ints(record.num_slices),
        F.SPACING: _floats(spacing),
    }
    if record.label is not None:
        has_liver, has_tumor, liver_fraction, tumor_fraction = label_stats(record.label)
        feats.update({
            F.LABEL: _bytes(record.label.astype(F.LABEL_DTYPE, copy=False).tobytes()),
            F.HAS_LIVER: _ints(has_liver),
            F.HAS_TUMOR: _ints(has_tumor),
            F.LIVER_FRACTION: _floats(liver_fraction),
            F.TUMOR_FRACTION: _floats(tumor_fraction),
        })
    return tf.train.Example(features=tf.train.Features(feature=feats))
