"""The canonical voxel grid of a synthetic case and the geometry the phantom is drawn with:
ellipsoid boxes and radii, smooth random fields."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np


@dataclass
class Grid:
    """Voxel-centre coordinates of the canonical grid: x, y in FOV fractions (-1..1), z in mm."""

    xs: np.ndarray  # (n,), +x = patient's Right
    ys: np.ndarray  # (n,), +y = Anterior
    zs: np.ndarray  # (nz,), +z = Superior, 0 at the slab centre
    mm_per_fov_unit: float = 1.0  # mm per unit of x or y: half the in-plane field of view

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.xs.size, self.ys.size, self.zs.size)


def make_grid(in_plane: int, n_slices: int, slice_mm: float, in_plane_mm: float = 0.75) -> Grid:
    xy = ((np.arange(in_plane, dtype=np.float32) + 0.5) / in_plane - 0.5) * 2.0
    zs = ((np.arange(n_slices, dtype=np.float32) + 0.5) - n_slices / 2.0) * np.float32(slice_mm)
    return Grid(xs=xy, ys=xy.copy(), zs=zs, mm_per_fov_unit=0.5 * in_plane * float(in_plane_mm))


def bbox(grid: Grid, center: Sequence[float], radii: Sequence[float]) -> Tuple[slice, slice, slice]:
    """Index box covering center +- radii (organs are computed only inside their box: 512^2 speed)."""
    out = []
    for coords, c, r in zip((grid.xs, grid.ys, grid.zs), center, radii):
        lo = int(np.searchsorted(coords, c - r, side="left"))
        hi = int(np.searchsorted(coords, c + r, side="right"))
        out.append(slice(lo, max(lo, hi)))
    return tuple(out)


def rho2(grid: Grid, box, center, radii) -> np.ndarray:
    """Squared normalised ellipsoid radius inside ``box`` (<= 1 means inside)."""
    dx = ((grid.xs[box[0]] - center[0]) / radii[0])[:, None, None]
    dy = ((grid.ys[box[1]] - center[1]) / radii[1])[None, :, None]
    dz = ((grid.zs[box[2]] - center[2]) / radii[2])[None, None, :]
    return dx * dx + dy * dy + dz * dz


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation weights (n_out, n_in) spreading n_in control points over n_out samples."""
    if n_in == 1:
        return np.ones((n_out, 1), dtype=np.float32)
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) / n_out * (n_in - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_in), dtype=np.float32)
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int]) -> np.ndarray:
    """Low-frequency random field (~unit std) of ``shape``: coarse noise, separably upsampled.

    Separable matrix products give exactly ``shape`` and cost little even at 512x512.
    """
    cells = [max(1, min(int(c), int(s))) for c, s in zip(cells, shape)]
    coarse = rng.standard_normal(cells).astype(np.float32)
    if 0 in shape:
        return np.zeros(shape, dtype=np.float32)
    out = np.tensordot(_interp_matrix(shape[0], cells[0]), coarse, axes=(1, 0))
    out = np.tensordot(_interp_matrix(shape[1], cells[1]), out, axes=(1, 1)).transpose(1, 0, 2)
    out = np.tensordot(out, _interp_matrix(shape[2], cells[2]), axes=(2, 1))
    return np.ascontiguousarray(out, dtype=np.float32) * np.float32(1.4)  # undo interpolation shrink
