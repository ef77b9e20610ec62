"""Canonical CT case -> 2.5D slice stacks. The one NIfTI-to-slice code path: the ExampleGen uses
it to write training examples and `predict.py` uses it to feed the model, so both see the same
pixels. Pure numpy/scipy, no TensorFlow.

Display convention of every 2-D slice (radiological, as ITK-SNAP shows axial slices): rows run
anterior -> posterior, columns run patient right -> left.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from preprocessing.nifti import CanonicalCase


@dataclasses.dataclass(frozen=True)
class SliceConfig:
    """How a volume becomes examples. Defaults are the paper profile's; configs.py overrides."""
    size: Tuple[int, int] = (320, 320)       # output H, W in pixels
    context: int = 1                         # neighbours per side: K = 2 * context + 1 channels
    window: Tuple[float, float] = (-200.0, 250.0)   # HU clip window
    selection: str = "liver_margin"          # "all" | "liver_margin"
    margin: int = 2                          # slices kept beyond the liver's z-range
    keep_fraction: float = 0.1               # fraction of the remaining slices kept
    seed: int = 0

    @property
    def channels(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SliceConfig":
        # Values may come back from JSON/protobuf Struct, where every number is a float.
        d = dict(d)
        d["size"] = tuple(int(v) for v in d["size"])
        d["window"] = tuple(float(v) for v in d["window"])
        for key in ("context", "margin", "seed"):
            if key in d:
                d[key] = int(d[key])
        return cls(**d)


@dataclasses.dataclass
class SliceRecord:
    """One example: the centre slice with its neighbours, and its labels and flags."""
    image: np.ndarray            # int16 [H, W, K], HU clipped to the window
    label: Optional[np.ndarray]  # uint8 [H, W] or None
    slice_index: int
    num_slices: int


def canonical_to_display(volume: np.ndarray) -> np.ndarray:
    """[X, Y, Z] canonical RAS -> [rows=A..P, cols=R..L, Z]."""
    return np.transpose(volume[::-1, ::-1, :], (1, 0, 2))


def display_to_canonical(volume: np.ndarray) -> np.ndarray:
    """Inverse of canonical_to_display."""
    return np.transpose(volume, (1, 0, 2))[::-1, ::-1, :]


def resize_in_plane(volume: np.ndarray, size: Sequence[int], order: int) -> np.ndarray:
    """Resamples the first two axes of [H, W, Z] to `size`. order=1 (linear) for images,
    order=0 (nearest) for labels so no new label values appear."""
    h, w = volume.shape[:2]
    if (h, w) == tuple(size):
        return volume
    factors = (size[0] / h, size[1] / w, 1.0)
    # grid_mode=True treats pixels as areas (like image resizers), so the field of view is kept.
    return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True,
                        prefilter=False)


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
    inside = np.zeros(num_slices, dtype=bool)
    if has_liver.any():
        z = np.flatnonzero(has_liver)
        inside[max(0, z[0] - config.margin):min(num_slices, z[-1] + config.margin + 1)] = True
    rng = np.random.default_rng([config.seed, zlib.crc32(case_id.encode())])
    keep_other = rng.random(num_slices) < config.keep_fraction
    return np.flatnonzero(inside | keep_other)


def prepare_volume(case: CanonicalCase, config: SliceConfig
                   ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Canonical case -> display-oriented, resized, windowed int16 image [H, W, Z] and uint8
    labels [H, W, Z] (or None)."""
    image = resize_in_plane(canonical_to_display(case.hu), config.size, order=1)
    image = window_hu(image, config.window)
    labels = None
    if case.labels is not None:
        labels = resize_in_plane(canonical_to_display(case.labels), config.size, order=0)
    return image, labels


def stack_context(image: np.ndarray, z: int, context: int) -> np.ndarray:
    """Slices z-context..z+context as channels [H, W, K]; indices clamped at the volume's ends."""
    idx = np.clip(np.arange(z - context, z + context + 1), 0, image.shape[2] - 1)
    return np.ascontiguousarray(image[:, :, idx])


def iter_slices(case: CanonicalCase, config: SliceConfig,
                indices: Optional[np.ndarray] = None) -> Iterator[SliceRecord]:
    """Yields SliceRecords for the selected slices (all slices when `indices` is None and the
    config says "all"; the selection otherwise)."""
    image, labels = prepare_volume(case, config)
    num_slices = image.shape[2]
    if indices is None:
        indices = (np.arange(num_slices) if labels is None
                   else select_slices(labels, case.case_id, config))
    for z in indices:
        yield SliceRecord(
            image=stack_context(image, int(z), config.context),
            label=None if labels is None else np.ascontiguousarray(labels[:, :, z]),
            slice_index=int(z),
            num_slices=num_slices,
        )


def volume_to_model_input(case: CanonicalCase, config: SliceConfig) -> np.ndarray:
    """Every slice of a case as int16 [Z, H, W, K] stacks, for inference."""
    image, _ = prepare_volume(case, config)
    return np.stack([stack_context(image, z, config.context) for z in range(image.shape[2])])
