"""Canonical CT case -> 2.5D slice stacks. The one NIfTI-to-slice code path: the ExampleGen uses
it to write training examples and `predict.py` uses it to feed the model, so both see the same
pixels. Pure numpy, no TensorFlow.

Display convention of every 2-D slice (radiological, as ITK-SNAP shows axial slices): rows run
anterior -> posterior, columns run patient right -> left.

In-plane resampling is separable: one banded [n_out, n_in] weight matrix per axis, applied with
BLAS matrix products on the row blocks' non-zero bands only; flips are folded into the matrices,
so nothing is transposed or copied first. The examples' images are made slice by slice from the
stored values (each slice converted to float32 and resampled while it is in cache, HU scaling and
the window applied on the small result); `resize_in_plane` applies the same weights to a whole
array along whichever memory axis holds each image axis. Images use linear interpolation that
anti-aliases when downsampling (a triangle filter widened by the scale factor, like PIL's and
tf.image.resize(antialias=True)); labels use nearest neighbour, so no new label values appear.
Pixel centres follow the "pixels are areas" convention (the field of view is kept), and with a
target spacing the scan and the output grid share their centre.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from preprocessing.nifti import CanonicalCase

# HU written where a target spacing makes the output field of view larger than the scan's
# (clipped to the window like every other value).
PAD_HU = -1024.0


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


# --- resampling weights --------------------------------------------------------------------------

def _source_positions(n_out: int, n_in: int, scale: float) -> np.ndarray:
    """Input coordinate (pixel centres at 0..n_in-1) of each output pixel centre, the two grids
    centred on each other; `scale` = input pixels per output pixel."""
    return (np.arange(n_out) + 0.5 - n_out / 2.0) * scale + n_in / 2.0 - 0.5


def _inside(x: np.ndarray, n_in: int) -> np.ndarray:
    eps = 1e-6
    return (x >= -0.5 - eps) & (x <= n_in - 0.5 + eps)


@functools.lru_cache(maxsize=16)
def linear_weights(n_out: int, n_in: int, scale: Optional[float] = None,
                   pad: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """[n_out, n_in] float32 matrix of linear interpolation weights (anti-aliased when
    downsampling: the triangle kernel is widened to the scale factor), rows summing to 1, edges
    replicated; and a bool [n_out] of rows inside the input's field of view. With `pad`, rows
    outside it are all zero (the caller fills them); otherwise they are clamped to the edge.
    `scale` defaults to n_in / n_out (resize the field of view)."""
    scale = n_in / n_out if scale is None else float(scale)
    x = _source_positions(n_out, n_in, scale)
    inside = _inside(x, n_in) if pad else np.ones(n_out, bool)
    support = max(scale, 1.0)
    reach = int(np.ceil(support)) + 1
    taps = np.floor(x)[:, None].astype(np.int64) + np.arange(-reach + 1, reach + 1)[None, :]
    w = np.clip(1.0 - np.abs(taps - x[:, None]) / support, 0.0, None)
    matrix = np.zeros((n_out, n_in), np.float64)
    rows = np.repeat(np.arange(n_out), taps.shape[1])
    np.add.at(matrix, (rows, np.clip(taps, 0, n_in - 1).ravel()), w.ravel())
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1e-12)
    matrix[~inside] = 0.0
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    inside.flags.writeable = False
    return matrix, inside


@functools.lru_cache(maxsize=16)
def nearest_indices(n_out: int, n_in: int, scale: Optional[float] = None,
                    pad: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Input index of each output pixel (nearest centre, edges clamped) and the inside mask, on
    the same grid as linear_weights."""
    scale = n_in / n_out if scale is None else float(scale)
    x = _source_positions(n_out, n_in, scale)
    inside = _inside(x, n_in) if pad else np.ones(n_out, bool)
    idx = np.clip(np.floor(x + 0.5), 0, n_in - 1).astype(np.intp)
    idx.flags.writeable = False
    inside.flags.writeable = False
    return idx, inside


# --- applying them along memory axes -------------------------------------------------------------

def _memory_layout(volume: np.ndarray):
    """A C-contiguous base array for a strided view (flips/transposes of a contiguous array):
    returns (base, position of each view axis in base, flipped per view axis). Copies only when
    the view is not a flip/transpose of a contiguous block."""
    flips = [s < 0 for s in volume.strides]
    positive = volume[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    order = sorted(range(volume.ndim), key=lambda a: (-abs(positive.strides[a]), a))
    base = positive.transpose(order)
    if not base.flags.c_contiguous:
        base = np.ascontiguousarray(base)
    position = [order.index(a) for a in range(volume.ndim)]
    return base, position, flips


def _bands(matrix: np.ndarray, block: int = 32) -> List[Tuple[int, int, int, int, np.ndarray]]:
    """Splits a banded matrix into row blocks with the column range each block touches, so the
    products skip the zeros (about 10x fewer FLOPs than a dense product for 512 -> 320)."""
    out = []
    for o0 in range(0, matrix.shape[0], block):
        sub = matrix[o0:o0 + block]
        cols = np.flatnonzero(sub.any(axis=0))
        if cols.size == 0:
            out.append((o0, o0 + sub.shape[0], 0, 0, None))
            continue
        i0, i1 = int(cols[0]), int(cols[-1]) + 1
        out.append((o0, o0 + sub.shape[0], i0, i1, np.ascontiguousarray(sub[:, i0:i1])))
    return out


def _matmul_axis(x: np.ndarray, axis: int, matrix: np.ndarray) -> np.ndarray:
    """y = matrix applied along `axis` of the C-contiguous float32 array x (BLAS, no
    transposes): y[..., o, ...] = sum_i matrix[o, i] * x[..., i, ...]."""
    n_in, n_out = x.shape[axis], matrix.shape[0]
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    shape = list(x.shape)
    shape[axis] = n_out
    y = np.empty(shape, np.float32)
    if inner == 1:    # the axis is the innermost one: [outer, n_in] @ matrix.T
        x2, y2 = x.reshape(outer, n_in), y.reshape(outer, n_out)
        for o0, o1, i0, i1, m in _bands(matrix):
            if m is None:
                y2[:, o0:o1] = 0
            else:
                np.matmul(x2[:, i0:i1], np.ascontiguousarray(m.T), out=y2[:, o0:o1])
    elif outer == 1:  # the outermost one: matrix @ [n_in, inner]
        x2, y2 = x.reshape(n_in, inner), y.reshape(n_out, inner)
        for o0, o1, i0, i1, m in _bands(matrix):
            if m is None:
                y2[o0:o1] = 0
            else:
                np.matmul(m, x2[i0:i1], out=y2[o0:o1])
    else:             # a middle one: matrix @ [n_in, inner] for each of `outer`
        x3, y3 = x.reshape(outer, n_in, inner), y.reshape(outer, n_out, inner)
        for o0, o1, i0, i1, m in _bands(matrix):
            if m is None:
                y3[:, o0:o1] = 0
            else:
                np.matmul(m, x3[:, i0:i1], out=y3[:, o0:o1])
    return y


def _resample_hw(volume: np.ndarray, size: Sequence[int], order: int,
                 scales: Tuple[Optional[float], Optional[float]], pad: bool,
                 pad_value: float = 0.0) -> np.ndarray:
    """Resamples axes 0 and 1 of [H0, W0, ...] (any strides) to `size`; returns [H, W, ...]
    (a view of a contiguous array in the input's memory order)."""
    base, position, flips = _memory_layout(volume)
    masks = []
    if order == 0:
        out = base
        for axis in (0, 1):
            idx, inside = nearest_indices(int(size[axis]), volume.shape[axis], scales[axis], pad)
            if flips[axis]:
                idx = volume.shape[axis] - 1 - idx
            out = np.take(out, idx, axis=position[axis])
            masks.append(inside)
    else:
        if base.dtype != np.float32:
            base = base.astype(np.float32)
        out = base
        # Shrink the axis that shrinks most first: the second product then has less to do.
        ratios = [size[a] / volume.shape[a] for a in (0, 1)]
        for axis in sorted((0, 1), key=lambda a: ratios[a]):
            matrix, inside = linear_weights(int(size[axis]), volume.shape[axis], scales[axis],
                                            pad)
            if flips[axis]:
                matrix = matrix[:, ::-1]
            out = _matmul_axis(out, position[axis], matrix)
        masks = [linear_weights(int(size[a]), volume.shape[a], scales[a], pad)[1]
                 for a in (0, 1)]
    # Back to the caller's axis order; flips of the other axes are kept as views.
    view = out.transpose(position)
    rest = tuple(slice(None, None, -1) if f else slice(None) for f in flips[2:])
    view = view[(slice(None), slice(None)) + rest]
    if pad and not (masks[0].all() and masks[1].all()):
        outside = ~(masks[0][:, None] & masks[1][None, :])
        view[outside] = pad_value
    return view


def resize_in_plane(volume: np.ndarray, size: Sequence[int], order: int) -> np.ndarray:
    """Resamples the first two axes of [H, W, Z] to `size`, keeping the field of view. order=1
    (linear, anti-aliased when downsampling) for images, order=0 (nearest) for labels so no new
    label values appear. This is also the inverse of the forward resize (predict.py maps
    probabilities back with it)."""
    h, w = volume.shape[:2]
    if (h, w) == tuple(size):
        return volume
    return _resample_hw(volume, size, order, (None, None), pad=False)


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
    return _resample_hw(display, config.size, order, scales, pad=True, pad_value=pad_value)


def model_grid_to_canonical(display: np.ndarray, case: CanonicalCase, config: SliceConfig,
                            order: int = 1) -> np.ndarray:
    """Inverse of the forward resampling: [H, W, Z] on the model's grid (e.g. probabilities)
    -> canonical [X, Y, Z] of `case`. Pixels the model never saw (cropped away) get 0."""
    x, y = (case.hu if case.hu is not None else case.stored).shape[:2]
    scales = _display_scales(case, config)
    if scales is None:
        back = resize_in_plane(display, (y, x), order)
    else:
        back = _resample_hw(display, (y, x), order, (1.0 / scales[0], 1.0 / scales[1]),
                            pad=True, pad_value=0.0)
    return display_to_canonical(back)


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
    return _select(has_liver, case_id, config)


def _select(has_liver: np.ndarray, case_id: str, config: SliceConfig) -> np.ndarray:
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
    selected: np.ndarray          # indices of the slices to convert (see slice_indices)

    @property
    def num_slices(self) -> int:
        return self.image.shape[0]


def _image_to_model_grid(display: np.ndarray, size: Sequence[int],
                         scales: Tuple[Optional[float], Optional[float]], pad: bool,
                         window: Tuple[float, float], scaling: Tuple[float, float] = (1.0, 0.0),
                         pad_hu: float = PAD_HU, block: int = 16,
                         only: Optional[np.ndarray] = None) -> np.ndarray:
    """Display-oriented [rows, cols, Z] values (any dtype and strides; HU = v * scaling[0] +
    scaling[1]) -> windowed int16 [Z, H, W], one slice at a time: each slice is converted to
    float32 and resampled by the two banded products while it is in cache, so no float copy of
    the volume is ever made. Same weights, same result as resample_to_config + window_hu.
    With `only` (slice indices), the other slices are left zero."""
    h, w = int(size[0]), int(size[1])
    rows, cols, num = display.shape
    rows_m, inside_r = linear_weights(h, rows, scales[0], pad)
    cols_m, inside_c = linear_weights(w, cols, scales[1], pad)
    first = display[:, :, 0]
    if first.strides[0] < 0:
        display, rows_m = display[::-1], rows_m[:, ::-1]
    if first.strides[1] < 0:
        display, cols_m = display[:, ::-1], cols_m[:, ::-1]
    # Slices stored column-major (e.g. sagittal files): work on the transposed slice.
    transposed = (abs(display.strides[0]) == display.itemsize
                  and abs(display.strides[1]) != display.itemsize)
    if transposed:
        display = display.transpose(1, 0, 2)
        first_m, second_m, out_shape = cols_m, rows_m, (w, h)
    else:
        first_m, second_m, out_shape = rows_m, cols_m, (h, w)
    first_bands = _bands(first_m, block)
    second_bands = [(o0, o1, i0, i1, None if m is None else np.ascontiguousarray(m.T))
                    for o0, o1, i0, i1, m in _bands(second_m, block)]
    outside = None
    if pad and not (inside_r.all() and inside_c.all()):
        outside = ~(inside_r[:, None] & inside_c[None, :])
    slope, inter = (np.float32(v) for v in scaling)
    buf = np.empty(display.shape[:2], np.float32)
    tmp = np.empty((out_shape[0], display.shape[1]), np.float32)
    res = np.empty(out_shape, np.float32)
    res_hw = res.T if transposed else res
    if only is None:
        out = np.empty((num, h, w), np.int16)
    else:
        out = np.zeros((num, h, w), np.int16)
    for z in (range(num) if only is None else only):
        np.copyto(buf, display[:, :, z], casting="unsafe")
        for o0, o1, i0, i1, m in first_bands:
            if m is None:
                tmp[o0:o1] = 0
            else:
                np.matmul(m, buf[i0:i1], out=tmp[o0:o1])
        for o0, o1, i0, i1, m in second_bands:
            if m is None:
                res[:, o0:o1] = 0
            else:
                np.matmul(tmp[:, i0:i1], m, out=res[:, o0:o1])
        if slope != 1:
            res *= slope
        if inter != 0:
            res += inter
        if outside is not None:
            res_hw[outside] = pad_hu
        np.clip(res, window[0], window[1], out=res)
        np.rint(res, out=res)
        np.copyto(out[z], res_hw, casting="unsafe")
    return out


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
    image_zhw = _image_to_model_grid(
        canonical_to_display(values), config.size,
        (None, None) if scales is None else scales, pad=scales is not None,
        window=config.window, scaling=scaling, only=only)
    return PreparedVolume(image_zhw, labels_zhw, selected)


def prepare_volume(case: CanonicalCase, config: SliceConfig
                   ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Canonical case -> display-oriented, resampled, windowed int16 image [H, W, Z] and uint8
    labels [H, W, Z] (or None). (Views of slice-major arrays; see prepare_slices.)"""
    prepared = prepare_slices(case, config)
    labels = None if prepared.labels is None else np.transpose(prepared.labels, (1, 2, 0))
    return np.transpose(prepared.image, (1, 2, 0)), labels


def context_indices(z: int, context: int, num_slices: int) -> np.ndarray:
    return np.clip(np.arange(z - context, z + context + 1), 0, num_slices - 1)


def stack_context(image: np.ndarray, z: int, context: int) -> np.ndarray:
    """Slices z-context..z+context of [H, W, Z] as channels [H, W, K]; indices clamped at the
    volume's ends."""
    return np.ascontiguousarray(image[:, :, context_indices(z, context, image.shape[2])])


def stack_context_zhw(image_zhw: np.ndarray, z: int, context: int,
                      out: Optional[np.ndarray] = None) -> np.ndarray:
    """The same from a slice-major [Z, H, W] volume, optionally into `out` [H, W, K]."""
    idx = context_indices(z, context, image_zhw.shape[0])
    if out is None:
        out = np.empty(image_zhw.shape[1:] + (len(idx),), image_zhw.dtype)
    for k, i in enumerate(idx):
        out[:, :, k] = image_zhw[i]
    return out


def _selection(labels_zhw: Optional[np.ndarray], num_slices: int, case_id: str,
               config: SliceConfig) -> np.ndarray:
    if config.selection not in ("all", "liver_margin"):
        raise ValueError(f"unknown slice selection {config.selection!r}")
    if labels_zhw is None or config.selection == "all":
        return np.arange(num_slices)
    has_liver = labels_zhw.reshape(num_slices, -1).max(axis=1) > 0
    return _select(has_liver, case_id, config)


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


def volume_to_model_input(case: CanonicalCase, config: SliceConfig) -> np.ndarray:
    """Every slice of a case as int16 [Z, H, W, K] stacks, for inference."""
    prepared = prepare_slices(case, config)
    out = np.empty((prepared.num_slices,) + prepared.image.shape[1:] + (config.channels,),
                   np.int16)
    for z in range(prepared.num_slices):
        stack_context_zhw(prepared.image, z, config.context, out=out[z])
    return out
