"""Canonical CT case -> 2.5D slice stacks. The one NIfTI-to-slice code path: the ExampleGen uses
it to write training examples and `predict.py` uses it to feed the model, so both see the same
pixels. Pure numpy, no TensorFlow.

Display convention of every 2-D slice (radiological, as ITK-SNAP shows axial slices): rows run
anterior -> posterior, columns run patient right -> left.

The in-plane resampling itself (weights, banded products, the image and array paths) is in
preprocessing/resample.py; here: the settings, selection of slices, the case on the model's grid
and its context stacks.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Optional, Sequence, Tuple

import numpy as np

from preprocessing.nifti import CanonicalCase
from preprocessing.resample import image_to_model_grid, resample_hw

# Which slices of a labelled volume become examples: every one, or the liver's z-range with a
# margin plus a random keep_fraction of the rest.
SELECTIONS = ("liver_margin", "all")


@dataclasses.dataclass(frozen=True)
class SliceConfig:
    """How a volume becomes examples. Defaults are the paper profile's; configs.py overrides."""
    size: Tuple[int, int] = (320, 320)       # output H, W in pixels
    context: int = 1                         # neighbours per side: K = 2 * context + 1 channels
    window: Tuple[float, float] = (-200.0, 250.0)   # HU clip window
    selection: str = "liver_margin"          # one of SELECTIONS
    margin: int = 2                          # slices kept beyond the liver's z-range
    keep_fraction: float = 0.1               # fraction of the remaining slices kept
    seed: int = 0                            # which of the remaining slices are kept
    # In-plane pixel spacing in mm to resample to, then crop/pad (centred) to `size`. None: the
    # scan's whole field of view is resized to `size` (spacing then differs between scans).
    target_spacing: Optional[float] = None

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
        if "keep_fraction" in d:
            d["keep_fraction"] = float(d["keep_fraction"])
        if d.get("target_spacing") is not None:
            d["target_spacing"] = float(d["target_spacing"])
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
    """Resamples the first two axes of [H, W, Z] to `size`, keeping the field of view. order=1
    (linear, anti-aliased when downsampling) for images, order=0 (nearest) for labels so no new
    label values appear. This is also the inverse of the forward resize (predict.py maps
    probabilities back with it)."""
    h, w = volume.shape[:2]
    if (h, w) == tuple(size):
        return volume
    return resample_hw(volume, size, order, (None, None), pad=False)


def _display_scales(case: CanonicalCase, config: SliceConfig):
    """Input pixels per output pixel along display rows (canonical y) and columns (canonical x);
    None (resize the field of view) without a target spacing."""
    if config.target_spacing is None:
        return None
    return (config.target_spacing / case.spacing[1], config.target_spacing / case.spacing[0])


def resample_to_config(display: np.ndarray, case: CanonicalCase, config: SliceConfig,
                       order: int, pad_value: float = 0.0) -> np.ndarray:
    """A display-oriented [rows, cols, Z] array of `case` -> [H, W, Z] on the model's grid:
    the field of view resized to `size`, or with `target_spacing` resampled to that spacing and
    cropped/padded (centred) to `size`."""
    scales = _display_scales(case, config)
    if scales is None:
        return resize_in_plane(display, config.size, order)
    return resample_hw(display, config.size, order, scales, pad=True, pad_value=pad_value)


def model_grid_to_canonical(display: np.ndarray, case: CanonicalCase, config: SliceConfig,
                            order: int = 1) -> np.ndarray:
    """Inverse of the forward resampling: [H, W, Z] on the model's grid (e.g. probabilities)
    -> canonical [X, Y, Z] of `case`. Pixels the model never saw (cropped away) get 0."""
    x, y = (case.hu if case.hu is not None else case.stored).shape[:2]
    scales = _display_scales(case, config)
    if scales is None:
        back = resize_in_plane(display, (y, x), order)
    else:
        back = resample_hw(display, (y, x), order, (1.0 / scales[0], 1.0 / scales[1]),
                           pad=True, pad_value=0.0)
    return display_to_canonical(back)


def select_by_liver(has_liver: np.ndarray, case_id: str, config: SliceConfig) -> np.ndarray:
    """Indices of the slices to convert from a per-slice "has liver" flag: the liver's z-range
    plus `margin`, and a deterministic `keep_fraction` of the remaining slices."""
    num_slices = has_liver.shape[0]
    inside = np.zeros(num_slices, dtype=bool)
    if has_liver.any():
        z = np.flatnonzero(has_liver)
        inside[max(0, z[0] - config.margin):min(num_slices, z[-1] + config.margin + 1)] = True
    rng = np.random.default_rng([config.seed, zlib.crc32(case_id.encode())])
    keep_other = rng.random(num_slices) < config.keep_fraction
    return np.flatnonzero(inside | keep_other)


@dataclasses.dataclass
class PreparedVolume:
    """A case on the model's grid, slice-major so that each slice is one contiguous block."""
    image: np.ndarray             # int16 [Z, H, W], windowed HU
    labels: Optional[np.ndarray]  # uint8 [Z, H, W] or None
    selected: np.ndarray          # indices of the slices to convert (select_by_liver)

    @property
    def num_slices(self) -> int:
        return self.image.shape[0]


def prepare_slices(case: CanonicalCase, config: SliceConfig,
                   selected_only: bool = False) -> PreparedVolume:
    """Canonical case -> windowed int16 image and uint8 labels, [Z, H, W] C-contiguous, and the
    slices to convert. With `selected_only`, only those slices and their context neighbours are
    resampled (the others stay zero): what the conversion needs."""
    if case.hu is not None:
        values, scaling = case.hu, (1.0, 0.0)
    else:
        values, scaling = case.stored, case.scaling
    num_slices = values.shape[2]
    labels_zhw = None
    if case.labels is not None:
        labels = resample_to_config(canonical_to_display(case.labels), case, config, order=0)
        labels_zhw = np.ascontiguousarray(np.transpose(labels, (2, 0, 1)))
    selected = _selection(labels_zhw, num_slices, case.case_id, config)
    only = None
    if selected_only and len(selected) < num_slices:
        only = np.unique(np.concatenate(
            [context_indices(int(z), config.context, num_slices) for z in selected]
            or [np.zeros(0, np.int64)]))
    scales = _display_scales(case, config)
    image_zhw = image_to_model_grid(
        canonical_to_display(values), config.size,
        (None, None) if scales is None else scales, pad=scales is not None,
        window=config.window, scaling=scaling, only=only)
    return PreparedVolume(image_zhw, labels_zhw, selected)


def context_indices(z: int, context: int, num_slices: int) -> np.ndarray:
    return np.clip(np.arange(z - context, z + context + 1), 0, num_slices - 1)


def stack_context_zhw(image_zhw: np.ndarray, z: int, context: int,
                      out: Optional[np.ndarray] = None) -> np.ndarray:
    """Slices z-context..z+context of a slice-major [Z, H, W] volume as channels [H, W, K]
    (optionally into `out`); indices clamped at the volume's ends."""
    idx = context_indices(z, context, image_zhw.shape[0])
    if out is None:
        out = np.empty(image_zhw.shape[1:] + (len(idx),), image_zhw.dtype)
    for k, i in enumerate(idx):
        out[:, :, k] = image_zhw[i]
    return out


def _selection(labels_zhw: Optional[np.ndarray], num_slices: int, case_id: str,
               config: SliceConfig) -> np.ndarray:
    if config.selection not in SELECTIONS:
        raise ValueError(f"unknown slice selection {config.selection!r}; one of {SELECTIONS}")
    if labels_zhw is None or config.selection == "all":
        return np.arange(num_slices)
    has_liver = labels_zhw.reshape(num_slices, -1).max(axis=1) > 0
    return select_by_liver(has_liver, case_id, config)


def volume_to_model_input(case: CanonicalCase, config: SliceConfig) -> np.ndarray:
    """Every slice of a case as int16 [Z, H, W, K] stacks, for inference."""
    prepared = prepare_slices(case, config)
    out = np.empty((prepared.num_slices,) + prepared.image.shape[1:] + (config.channels,),
                   np.int16)
    for z in range(prepared.num_slices):
        stack_context_zhw(prepared.image, z, config.context, out=out[z])
    return out
