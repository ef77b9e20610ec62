"""In-plane resampling of display-oriented volumes to the model's grid, and back.

In-plane resampling is separable: one banded [n_out, n_in] weight matrix per axis, applied with
BLAS matrix products on the row blocks' non-zero bands only; flips are folded into the matrices,
so nothing is transposed or copied first. The examples' images are made slice by slice from the
stored values (each slice converted to float32 and resampled while it is in cache, HU scaling and
the window applied on the small result: `image_to_model_grid`); `resample_hw` applies the same
weights to a whole array along whichever memory axis holds each image axis (labels, with nearest
neighbour, and float arrays such as the probabilities predict.py maps back). Both are kept on
purpose: the image path is the fast one (no float copy of a volume, HU scaling and the window on
the small result, int16 out), the array path handles any order and dtype; their images agree
within 1 HU (float rounding order only; tests/test_nifti_slices.py checks it). Images use linear
interpolation that anti-aliases when downsampling (a triangle filter widened by the scale
factor, like PIL's and tf.image.resize(antialias=True)); labels use nearest neighbour, so no
new label values appear. Pixel centres follow the "pixels are areas" convention (the field of
view is kept), and with a target spacing the scan and the output grid share their centre.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np

# HU written where a target spacing makes the output field of view larger than the scan's
# (clipped to the window like every other value).
PAD_HU = -1024.0


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


def resample_hw(volume: np.ndarray, size: Sequence[int], order: int,
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


def _slice_products(display: np.ndarray, h: int, w: int,
                    scales: Tuple[Optional[float], Optional[float]], pad: bool, block: int):
    """The banded weights of `image_to_model_grid` for [rows, cols, Z] `display`, with flips
    folded in and column-major slices transposed: (display as read, transposed?, bands of the
    first product, bands of the second (transposed), slice shape after both, mask of the output
    pixels outside the scan or None)."""
    rows, cols = display.shape[:2]
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
    return display, transposed, first_bands, second_bands, out_shape, outside


def image_to_model_grid(display: np.ndarray, size: Sequence[int],
                        scales: Tuple[Optional[float], Optional[float]], pad: bool,
                        window: Tuple[float, float], scaling: Tuple[float, float] = (1.0, 0.0),
                        pad_hu: float = PAD_HU, block: int = 16,
                        only: Optional[np.ndarray] = None) -> np.ndarray:
    """Display-oriented [rows, cols, Z] values (any dtype and strides; HU = v * scaling[0] +
    scaling[1]) -> windowed int16 [Z, H, W], one slice at a time: each slice is converted to
    float32 and resampled by the two banded products while it is in cache, so no float copy of
    the volume is ever made. The weights are those of `resample_hw` (resample_to_config), but
    the HU scaling comes after the resampling and the products run in a fixed order, so values
    can differ from resampling whole-volume HU and then windowing by float rounding: at most 1 HU
    after rounding (tests/test_nifti_slices.py checks it).
    With `only` (slice indices), the other slices are left zero."""
    h, w = int(size[0]), int(size[1])
    num = display.shape[2]
    display, transposed, first_bands, second_bands, out_shape, outside = _slice_products(
        display, h, w, scales, pad, block)
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
