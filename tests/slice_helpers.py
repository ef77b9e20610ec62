"""Reference helpers over preprocessing/slices.py that only the tests use: the whole-volume forms
of what the conversion does slice by slice (windowing, slice selection from labels [H, W, Z],
display-oriented volumes, context stacks of [H, W, Z], SliceRecords)."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np

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
