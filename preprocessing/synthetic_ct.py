"""Deterministic synthetic abdominal CT data set in the LiTS layout.

The pipeline needs CT volumes with liver/tumour masks for tests, demos and smoke runs where the real
LiTS data (volume-N.nii / segmentation-N.nii) is not available. This module draws a simple but
anatomically plausible phantom per case and writes it as ``volume-N.nii.gz`` +
``segmentation-N.nii.gz`` (labels: 0 background, 1 liver, 2 tumour), plus a ``dataset.json`` manifest.

Design points, each there because real LiTS files have the matching property:

* Anatomy is built in a canonical RAS+ voxel grid: voxel axis 0 increases toward the patient's
  Right, axis 1 toward Anterior, axis 2 toward Superior (nibabel/NIfTI world convention, so
  ``nib.aff2axcodes(diag) == ('R', 'A', 'S')``). The liver sits on the patient's right (+x),
  in the upper abdomen.
* Each case is then *stored* in a case-specific orientation (RAS, LPS, LAS or the permuted PIR)
  by flipping/permuting the array and adjusting the affine in the same way, so a reader has to use
  the affine (``nib.as_closest_canonical``) to get consistent anatomy; doing so recovers the
  canonical arrays exactly.
* The volume is stored as int16; every third case has ``scl_slope``/``scl_inter`` set, so a reader
  has to apply header scaling (``get_fdata()`` does) to get Hounsfield units.
* Spacing varies per case (in-plane 0.6-0.9 mm, slices 1-5 mm) and is recorded in the affine.
  In-plane anatomy is defined in fractions of the field of view (a 128 px grid covers only ~90 mm,
  so a true-to-scale body would not fit); along z, sizes are in mm but compressed to fit the slab
  so that some slices above and below the liver never contain liver.

Everything derives from ``np.random.default_rng([seed, case_index])``: the same (seed, index,
parameters) give bit-identical arrays on any machine with the same numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

LOG = logging.getLogger("preprocessing.synthetic_ct")

GENERATOR_VERSION = 1
MANIFEST_NAME = "dataset.json"
# Storage orientations cycle with the case index; PIR permutes the axes (z is not the last axis).
ORIENTATIONS: Tuple[str, ...] = ("RAS", "LPS", "LAS", "PIR")
# (scl_slope, scl_inter) per scaling mode; stored = (HU - inter) / slope.
SCALINGS: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "none": (None, None),
    "offset": (1.0, -1024.0),
    "half": (0.5, -1024.0),
}
SCALING_CYCLE: Tuple[str, ...] = ("none", "offset", "half")
SLICE_SPACINGS_MM: Tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
DEFAULT_SLICES_RANGE: Tuple[int, int] = (24, 64)
HU_MIN, HU_MAX = -1024, 3071
AIR_HU = -1000.0

BACKGROUND, LIVER, TUMOUR = 0, 1, 2


@dataclass
class SyntheticCase:
    """One generated case, in its *stored* orientation (what goes into the NIfTI files).

    ``volume`` holds stored int16 values: HU = volume * scl_slope + scl_inter when the slope is set,
    else HU = volume. ``spacing`` is in canonical (x, y, z) = (R, A, S) order; the stored-axis order
    is ``stored_spacing``.
    """

    case_index: int
    volume: np.ndarray
    segmentation: np.ndarray
    affine: np.ndarray
    scl_slope: Optional[float]
    scl_inter: Optional[float]
    orientation: str
    spacing: Tuple[float, float, float]
    num_tumours: int = 0
    liver_slices: Tuple[int, ...] = field(default_factory=tuple)  # canonical z indices with liver

    @property
    def hu(self) -> np.ndarray:
        """HU as float32, in stored orientation (what ``get_fdata()`` returns after a round trip)."""
        if self.scl_slope is None:
            return self.volume.astype(np.float32)
        return self.volume.astype(np.float32) * np.float32(self.scl_slope) + np.float32(self.scl_inter)

    @property
    def stored_spacing(self) -> Tuple[float, float, float]:
        """Voxel size per stored axis (what ``header.get_zooms()`` reports)."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def num_slices(self) -> int:
        """Number of axial slices: the stored axis that runs along world z (S-I)."""
        return int(self.volume.shape[int(np.argmax(np.abs(self.affine[2, :3])))])

    def to_nifti(self) -> Tuple[nib.Nifti1Image, nib.Nifti1Image]:
        """(volume image, segmentation image) ready for ``nib.save``."""
        vol = nib.Nifti1Image(self.volume, self.affine)
        seg = nib.Nifti1Image(self.segmentation, self.affine)
        for img in (vol, seg):
            # Code 1 (scanner) on both forms, like a converted DICOM series.
            img.set_qform(self.affine, code=1)
            img.set_sform(self.affine, code=1)
            img.header.set_xyzt_units("mm", "sec")
        # Setting slope/inter makes nibabel write the int16 array verbatim with this scaling
        # (it only computes its own scaling when both are NaN).
        if self.scl_slope is not None:
            vol.header.set_slope_inter(self.scl_slope, self.scl_inter)
        return vol, seg


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """Voxel-centre coordinates of the canonical grid: x, y in FOV fractions (-1..1), z in mm."""

    xs: np.ndarray  # (n,), +x = patient's Right
    ys: np.ndarray  # (n,), +y = Anterior
    zs: np.ndarray  # (nz,), +z = Superior, 0 at the slab centre

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.xs.size, self.ys.size, self.zs.size)


def _make_grid(in_plane: int, n_slices: int, slice_mm: float) -> _Grid:
    xy = ((np.arange(in_plane, dtype=np.float32) + 0.5) / in_plane - 0.5) * 2.0
    zs = ((np.arange(n_slices, dtype=np.float32) + 0.5) - n_slices / 2.0) * np.float32(slice_mm)
    return _Grid(xs=xy, ys=xy.copy(), zs=zs)


def _bbox(grid: _Grid, center: Sequence[float], radii: Sequence[float]) -> Tuple[slice, slice, slice]:
    """Index box covering center +- radii (organs are computed only inside their box: 512^2 speed)."""
    out = []
    for coords, c, r in zip((grid.xs, grid.ys, grid.zs), center, radii):
        lo = int(np.searchsorted(coords, c - r, side="left"))
        hi = int(np.searchsorted(coords, c + r, side="right"))
        out.append(slice(lo, max(lo, hi)))
    return tuple(out)


def _rho2(grid: _Grid, box, center, radii) -> np.ndarray:
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


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int]) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------------------------


def _case_geometry(rng: np.random.Generator, slices_range: Tuple[int, int]):
    lo, hi = int(slices_range[0]), int(slices_range[1])
    if lo < 8 or hi < lo:
        raise ValueError(f"slices_range must satisfy 8 <= min <= max, got {slices_range}")
    n_slices = int(rng.integers(lo, hi + 1))
    in_plane_mm = round(float(rng.uniform(0.6, 0.9)), 4)
    slice_mm = float(rng.choice(SLICE_SPACINGS_MM))
    return n_slices, in_plane_mm, slice_mm


def _build_phantom(rng: np.random.Generator, grid: _Grid):
    """Return (hu float32, labels uint8, n_tumours) in the canonical RAS grid."""
    n, _, nz = grid.shape
    extent = nz * float(grid.zs[1] - grid.zs[0]) if nz > 1 else 1.0
    x = grid.xs[:, None, None]
    y = grid.ys[None, :, None]
    z = grid.zs[None, None, :]

    # ---- liver z placement first: the rest of the anatomy is laid out relative to it ------------
    # Deformation amplitudes bound how far the liver can reach beyond its nominal radii.
    amps = rng.uniform(0.02, 0.045, size=3).astype(np.float32)
    max_deform = float(amps.sum())
    # Keep >= max(2 slices, 10% of the slab) liver-free at each end.
    margin = max(2.0 * extent / nz, 0.10 * extent)
    liver_zc = float(rng.uniform(-0.06, 0.06)) * extent
    room = extent / 2.0 - abs(liver_zc) - margin
    liver_rz = min(float(rng.uniform(65.0, 85.0)), room / (1.0 + max_deform))
    s_z = liver_rz / 75.0  # z-compression of the whole abdomen relative to an adult (liver ~150 mm)

    # ---- body outline, fat, muscle wall, cavity ------------------------------------------------
    ax0, ay0 = float(rng.uniform(0.86, 0.95)), float(rng.uniform(0.66, 0.78))
    body_cy = float(rng.uniform(-0.05, 0.0))
    wobble = float(rng.uniform(0.0, 2 * math.pi))
    ax = ax0 * (1.0 + 0.03 * np.sin(z / (90.0 * s_z + 1e-3) + wobble))
    ay = ay0 * (1.0 + 0.03 * np.cos(z / (70.0 * s_z + 1e-3) + wobble))
    r_body = np.sqrt((x / ax) ** 2 + ((y - body_cy) / ay) ** 2)
    fat_t = float(rng.uniform(0.07, 0.14))
    wall_t = float(rng.uniform(0.05, 0.08))
    body = r_body <= 1.0
    inner = r_body <= 1.0 - fat_t
    cavity = r_body <= 1.0 - fat_t - wall_t
    del r_body

    hu = np.full(grid.shape, AIR_HU, dtype=np.float32)
    hu[body] = -100.0  # subcutaneous fat
    hu[inner] = 50.0  # abdominal wall muscle
    # Cavity: mesenteric fat / soft tissue mixture so the liver is not "the only tissue near 60 HU".
    mix = 1.0 / (1.0 + np.exp(-1.5 * _smooth_field(rng, grid.shape, (7, 7, max(2, nz // 8)))))
    hu[cavity] = (-90.0 + 130.0 * mix)[cavity]
    del mix

    # "Hard" structures that the liver must not overlap (spine, vessels, muscles, kidneys, ribs).
    hard = np.zeros(grid.shape, dtype=bool)
    big_z = 1e6  # z radius of structures that run through the whole slab

    def paint(center, radii, value, mark_hard=True, where=None, rim=None):
        box = _bbox(grid, center, radii)
        inside = _rho2(grid, box, center, radii) <= 1.0
        if where is not None:
            inside &= where[box]
        hu_box = hu[box]
        hu_box[inside] = value
        if rim is not None:  # (inner fraction, value): brighter cortical shell for bones
            core = _rho2(grid, box, center, [r * rim[0] for r in radii[:2]] + [radii[2]]) <= 1.0
            shell = inside & ~core
            hu_box[shell] = rim[1]
        if mark_hard:
            hard[box] |= inside
        return box, inside

    # ---- spine: vertebral body with cortical rim, discs, canal, posterior arch ------------------
    vb_cy = body_cy - 0.52 * ay0
    vb_r = (float(rng.uniform(0.10, 0.13)), float(rng.uniform(0.08, 0.10)))
    cancellous = float(rng.uniform(380.0, 480.0))
    cortical = float(rng.uniform(800.0, 1000.0))
    # Paraspinal muscles first so the bone paints over them.
    for side in (-1.0, 1.0):
        paint((side * 0.15, vb_cy - 0.13, 0.0), (0.10, 0.09, big_z), 50.0, where=inner)
    box, vb = paint((0.0, vb_cy, 0.0), (vb_r[0], vb_r[1], big_z), cancellous, rim=(0.78, cortical))
    disc_period = 32.0 * s_z + 1e-3
    disc_phase = float(rng.uniform(0.0, disc_period))
    disc_z = (np.mod(grid.zs[box[2]] - disc_phase, disc_period) < 0.22 * disc_period)[None, None, :]
    hu_box = hu[box]
    hu_box[vb & disc_z] = 90.0
    canal_cy = vb_cy - vb_r[1] - 0.055
    paint((0.0, canal_cy, 0.0), (0.08, 0.075, big_z), cortical * 0.75, rim=None)  # arch
    paint((0.0, canal_cy, 0.0), (0.045, 0.04, big_z), 15.0)  # CSF in the canal
    paint((0.0, canal_cy - 0.11, 0.0), (0.025, 0.06, big_z), cortical * 0.8, where=body)  # spinous

    # ---- great vessels (portal-venous phase contrast) ------------------------------------------
    paint((-0.07, vb_cy + vb_r[1] + 0.06, 0.0), (0.055, 0.055, big_z), float(rng.uniform(140, 190)))
    paint((0.11, vb_cy + vb_r[1] + 0.07, 0.0), (0.06, 0.05, big_z), float(rng.uniform(100, 140)))

    # ---- kidneys (lower than the liver dome, posterior, beside the spine) ----------------------
    kid_zc = liver_zc - 45.0 * s_z
    for side in (-1.0, 1.0):
        c = (side * float(rng.uniform(0.30, 0.36)), vb_cy + 0.02, kid_zc + float(rng.uniform(-8, 8)) * s_z)
        r = (float(rng.uniform(0.09, 0.12)), float(rng.uniform(0.12, 0.15)), 55.0 * s_z)
        paint(c, r, float(rng.uniform(25.0, 35.0)), where=cavity)

    # ---- ribs: small bright ellipses in the wall ring, present in z bands (rib cross-sections) --
    rib_r = float(ay0 * wall_t * 0.45)
    ring = 1.0 - fat_t - wall_t / 2.0
    rib_zmin = liver_zc - 45.0 * s_z
    for side in (-1.0, 1.0):
        for _ in range(int(rng.integers(3, 5))):
            # Angle from the lateral direction: < 0 anterolateral, > 0 posterolateral.
            theta = float(rng.uniform(-0.3 * math.pi, 0.35 * math.pi))
            cx = side * ax0 * ring * math.cos(theta)
            cy = body_cy - ay0 * ring * math.sin(theta)
            period = float(rng.uniform(25.0, 35.0)) * s_z + 1e-3
            phase = float(rng.uniform(0.0, 2 * math.pi))
            bands = (np.cos(2 * math.pi * grid.zs / period + phase) > 0.3) & (grid.zs > rib_zmin)
            if not bands.any():
                continue
            box = _bbox(grid, (cx, cy, 0.0), (rib_r * 1.6, rib_r, big_z))
            inside = _rho2(grid, box, (cx, cy, 0.0), (rib_r * 1.6, rib_r, big_z)) <= 1.0
            inside &= bands[box[2]][None, None, :] & inner[box]
            core = _rho2(grid, box, (cx, cy, 0.0), (rib_r * 1.0, rib_r * 0.6, big_z)) <= 1.0
            hu_box = hu[box]
            hu_box[inside] = float(rng.uniform(750, 1000))
            hu_box[inside & core] = float(rng.uniform(250, 400))
            hard[box] |= inside

    # ---- liver: deformed ellipsoid in the right upper abdomen ---------------------------------
    liver_c = (ax0 * float(rng.uniform(0.30, 0.40)), body_cy + ay0 * float(rng.uniform(0.0, 0.15)), liver_zc)
    liver_r = (ax0 * float(rng.uniform(0.40, 0.50)), ay0 * float(rng.uniform(0.50, 0.65)), liver_rz)
    freqs = rng.integers(1, 4, size=(3, 2))
    phases = rng.uniform(0.0, 2 * math.pi, size=3)
    reach = [r * (1.0 + max_deform) for r in liver_r]
    lbox = _bbox(grid, liver_c, reach)
    dx = ((grid.xs[lbox[0]] - liver_c[0]) / liver_r[0])[:, None, None]
    dy = ((grid.ys[lbox[1]] - liver_c[1]) / liver_r[1])[None, :, None]
    dz = ((grid.zs[lbox[2]] - liver_c[2]) / liver_r[2])[None, None, :]
    rho = np.sqrt(dx * dx + dy * dy + dz * dz)
    azim = np.arctan2(dy, dx)
    elev = np.arctan2(dz, np.sqrt(dx * dx + dy * dy))
    deform = np.zeros_like(rho)
    for a, (m, k), p in zip(amps, freqs, phases):
        deform += a * np.sin(m * azim + k * elev + p)  # smooth low-order radius modulation
    liver = (rho <= 1.0 + deform) & cavity[lbox] & ~hard[lbox]
    del rho, azim, elev, deform
    liver = _largest_component(liver)  # one connected organ => a contiguous z range

    liver_hu = float(rng.uniform(58.0, 67.0))
    cells = (5, 5, max(2, (lbox[2].stop - lbox[2].start) // 6))
    tex = liver_hu + 4.0 * _smooth_field(rng, liver.shape, cells)

    # ---- tumours: 0-3 hypodense ellipsoids strictly inside the liver ---------------------------
    labels_box = np.where(liver, LIVER, BACKGROUND).astype(np.uint8)
    # One-voxel erosion: a tumour never touches the liver boundary (always surrounded by liver).
    core = ndimage.binary_erosion(liver) if liver.any() else liver
    n_tumours = 0
    for _ in range(int(rng.integers(0, 4))):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction) + 1e-9
        rel = float(rng.uniform(0.0, 0.45))
        size = float(rng.uniform(0.12, 0.28))  # tumour radius relative to liver radii
        t_c = tuple(c + rel * d * r for c, d, r in zip(liver_c, direction, liver_r))
        t_r = tuple(size * r * float(rng.uniform(0.8, 1.2)) for r in liver_r)
        t_hu = float(rng.uniform(20.0, 40.0))
        t_rho = np.sqrt(_rho2(grid, lbox, t_c, t_r))
        label = (t_rho <= 1.0) & core
        if not label.any():
            continue
        n_tumours += 1
        labels_box[label] = TUMOUR
        w = np.clip((1.15 - t_rho) / 0.3, 0.0, 1.0).astype(np.float32)  # soft edge
        tex = tex * (1.0 - w) + np.float32(t_hu) * w

    hu_box = hu[lbox]
    hu_box[liver] = tex[liver]
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[lbox] = labels_box
    liver_any = labels > 0

    # ---- stomach, spleen and bowel (left / lower abdomen; never over the liver) ----------------
    free = cavity & ~hard & ~liver_any
    st_c = (-ax0 * float(rng.uniform(0.28, 0.40)), body_cy + ay0 * 0.25, liver_zc + 15.0 * s_z)
    st_r = (0.22, 0.2, 45.0 * s_z)
    paint(st_c, st_r, float(rng.uniform(5.0, 20.0)), mark_hard=False, where=free)
    gas_c = (st_c[0], st_c[1] + 0.12, st_c[2])
    paint(gas_c, (0.15, 0.08, 30.0 * s_z), -850.0, mark_hard=False, where=free)
    sp_c = (-ax0 * 0.55, body_cy - ay0 * 0.2, liver_zc + 20.0 * s_z)
    paint(sp_c, (0.16, 0.2, 50.0 * s_z), float(rng.uniform(45.0, 55.0)), mark_hard=False, where=free)
    for _ in range(int(rng.integers(6, 11))):
        c = (float(rng.uniform(-0.6, 0.6)) * ax0, body_cy + float(rng.uniform(-0.1, 0.6)) * ay0,
             float(rng.uniform(-0.5, 0.5)) * extent)
        rr = float(rng.uniform(0.06, 0.12))
        r = (rr, rr * float(rng.uniform(0.7, 1.3)), float(rng.uniform(15.0, 40.0)) * s_z)
        paint(c, r, float(rng.uniform(30.0, 45.0)), mark_hard=False, where=free)  # bowel wall
        lumen = -800.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 20.0))  # gas or fluid
        paint(c, tuple(v * 0.6 for v in r), lumen, mark_hard=False, where=free)

    # ---- acquisition noise ----------------------------------------------------------------------
    sigma = np.float32(rng.uniform(8.0, 15.0))
    hu += sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    np.clip(np.rint(hu, out=hu), HU_MIN, HU_MAX, out=hu)
    return hu, labels, n_tumours


def _largest_component(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    lab, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


# --------------------------------------------------------------------------------------------
# Storage: orientation + scaling
# --------------------------------------------------------------------------------------------


def _canonical_affine(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """RAS+ affine with the volume centre at world (0, 0, 0): the body midline is world x = 0."""
    aff = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0)
    return aff


def _reorient(canonical: np.ndarray, affine: np.ndarray, code: str):
    """Store ``canonical`` (RAS) in orientation ``code``; returns (array, affine).

    Same maths as ``Nifti1Image.as_reoriented``: flipping/permuting voxels and composing the affine
    with the inverse index mapping keeps every voxel at the same world position.
    """
    transform = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(code)))
    stored = np.ascontiguousarray(nio.apply_orientation(canonical, transform))
    new_aff = affine @ nio.inv_ornt_aff(transform, canonical.shape)
    return stored, new_aff


def _to_stored(hu: np.ndarray, scaling: str):
    slope, inter = SCALINGS[scaling]
    if slope is None:
        return hu.astype(np.int16), None, None
    # HU are integers, so (HU - inter) / slope is exact for slope 1 and 0.5.
    return np.rint((hu - inter) / slope).astype(np.int16), slope, inter


def generate_case(
    case_index: int,
    seed: int = 0,
    in_plane: int = 128,
    slices_range: Tuple[int, int] = DEFAULT_SLICES_RANGE,
    orientation: Optional[str] = None,
    scaling: Optional[str] = None,
) -> SyntheticCase:
    """Generate one case deterministically from ``(seed, case_index)`` and the parameters.

    ``orientation`` (an axcode string such as 'RAS', 'LPS', 'PIR') and ``scaling`` (a key of
    ``SCALINGS``) override the per-index defaults (``ORIENTATIONS[i % 4]``,
    ``SCALING_CYCLE[i % 3]``) without changing the anatomy: the canonical HU/labels are the same.
    """
    if in_plane < 16:
        raise ValueError(f"in_plane must be >= 16, got {in_plane}")
    code = (orientation or ORIENTATIONS[case_index % len(ORIENTATIONS)]).upper()
    if len(code) != 3 or sorted(nio.axcodes2ornt(tuple(code))[:, 0].tolist()) != [0, 1, 2]:
        raise ValueError(f"invalid orientation {orientation!r}")
    scaling = scaling or SCALING_CYCLE[case_index % len(SCALING_CYCLE)]
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {sorted(SCALINGS)}, got {scaling!r}")

    rng = np.random.default_rng([int(seed), int(case_index)])
    n_slices, in_plane_mm, slice_mm = _case_geometry(rng, slices_range)
    grid = _make_grid(in_plane, n_slices, slice_mm)
    hu, labels, n_tumours = _build_phantom(rng, grid)

    spacing = (in_plane_mm, in_plane_mm, slice_mm)
    canon_aff = _canonical_affine(spacing, hu.shape)
    stored_hu, affine = _reorient(hu, canon_aff, code)
    seg, _ = _reorient(labels, canon_aff, code)
    volume, slope, inter = _to_stored(stored_hu, scaling)
    liver_slices = tuple(int(k) for k in np.flatnonzero(labels.any(axis=(0, 1))))
    return SyntheticCase(
        case_index=int(case_index),
        volume=volume,
        segmentation=seg.astype(np.uint8),
        affine=affine,
        scl_slope=slope,
        scl_inter=inter,
        orientation=code,
        spacing=spacing,
        num_tumours=n_tumours,
        liver_slices=liver_slices,
    )


# --------------------------------------------------------------------------------------------
# Data set writing
# --------------------------------------------------------------------------------------------


def case_filenames(index: int) -> Tuple[str, str]:
    return f"volume-{index}.nii.gz", f"segmentation-{index}.nii.gz"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_atomic(img: nib.Nifti1Image, path: str) -> None:
    # A hidden temp name (still ending in .nii.gz so nibabel gzips it) + rename: an interrupted run
    # never leaves a truncated file that looks complete, and globs for volume-*.nii.gz skip it.
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _dataset_params(num_cases, seed, in_plane, slices_range, start_index) -> dict:
    return {
        "generator": "synthetic_ct",  # not __name__: that is "__main__" under python -m
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "in_plane": int(in_plane),
        "slices_range": [int(slices_range[0]), int(slices_range[1])],
        "start_index": int(start_index),
        "num_cases": int(num_cases),
    }


def _same_generator(a: dict, b: dict) -> bool:
    """Whether two manifests describe cases drawn with the same parameters (case by case)."""
    keys = ("generator", "version", "seed", "in_plane", "slices_range")
    return all(a.get(k) == b.get(k) for k in keys)


def read_manifest(out_dir: str) -> Optional[dict]:
    path = os.path.join(out_dir, MANIFEST_NAME)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _case_entry(case: SyntheticCase, vol_name: str, seg_name: str, vol_path: str, seg_path: str) -> dict:
    return {
        "index": case.case_index,
        "volume": vol_name,
        "segmentation": seg_name,
        "orientation": case.orientation,
        "spacing": [float(v) for v in case.spacing],
        "shape": [int(v) for v in case.volume.shape],
        "num_slices": case.num_slices,
        "slices_with_liver": len(case.liver_slices),
        # First/last axial slice with liver, counted from the inferior end (canonical RAS z index).
        "canonical_liver_slice_range": [case.liver_slices[0], case.liver_slices[-1]] if case.liver_slices else None,
        "num_tumours": case.num_tumours,
        "scl_slope": case.scl_slope,
        "scl_inter": case.scl_inter,
        "sha256": {"volume": _sha256(vol_path), "segmentation": _sha256(seg_path)},
    }


def write_dataset(
    out_dir: str,
    num_cases: int,
    seed: int = 0,
    in_plane: int = 128,
    slices_range: Tuple[int, int] = DEFAULT_SLICES_RANGE,
    start_index: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> List[Tuple[str, str]]:
    """Write cases ``start_index .. start_index+num_cases-1`` and ``dataset.json`` into ``out_dir``.

    Returns ``[(volume_path, segmentation_path), ...]``. Unless ``overwrite``, a case whose files
    exist and match the previous manifest (same generator parameters and sha256) is not regenerated.
    """
    if num_cases < 0:
        raise ValueError("num_cases must be >= 0")
    os.makedirs(out_dir, exist_ok=True)
    params = _dataset_params(num_cases, seed, in_plane, slices_range, start_index)
    old = read_manifest(out_dir)
    old_entries = {}
    if old is not None and _same_generator(old, params):
        old_entries = {int(e["index"]): e for e in old.get("cases", [])}

    indices = range(start_index, start_index + num_cases)
    iterator = indices
    if progress:
        from tqdm import tqdm

        iterator = tqdm(indices, desc="synthetic CT", unit="case")
    pairs, entries = [], []
    for index in iterator:
        vol_name, seg_name = case_filenames(index)
        vol_path, seg_path = os.path.join(out_dir, vol_name), os.path.join(out_dir, seg_name)
        prev = old_entries.get(index)
        if not overwrite and prev is not None and _files_match(prev, vol_path, seg_path):
            LOG.debug("case %d unchanged, skipped", index)
            entries.append(prev)
        else:
            case = generate_case(index, seed=seed, in_plane=in_plane, slices_range=slices_range)
            vol_img, seg_img = case.to_nifti()
            _save_atomic(vol_img, vol_path)
            _save_atomic(seg_img, seg_path)
            entry = _case_entry(case, vol_name, seg_name, vol_path, seg_path)
            entries.append(entry)
            LOG.info("wrote %s (%s, %s, spacing %s, %d/%d slices with liver, %d tumours)", vol_name,
                     case.orientation, "x".join(map(str, case.volume.shape)),
                     "x".join(f"{s:g}" for s in case.spacing), len(case.liver_slices),
                     case.num_slices, case.num_tumours)
        pairs.append((vol_path, seg_path))

    manifest = dict(params, cases=entries)
    tmp = os.path.join(out_dir, f".tmp-{os.getpid()}-{MANIFEST_NAME}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST_NAME))
    _warn_extra_files(out_dir, {os.path.basename(p) for pair in pairs for p in pair})
    return pairs


def _files_match(entry: dict, vol_path: str, seg_path: str) -> bool:
    if not (os.path.isfile(vol_path) and os.path.isfile(seg_path)):
        return False
    sha = entry.get("sha256") or {}
    return sha.get("volume") == _sha256(vol_path) and sha.get("segmentation") == _sha256(seg_path)


def _warn_extra_files(out_dir: str, expected: set) -> None:
    extra = sorted(
        name for name in os.listdir(out_dir)
        if name.endswith(".nii.gz") and name.startswith(("volume-", "segmentation-")) and name not in expected
    )
    if extra:
        LOG.warning("%s holds %d NIfTI files not in %s (e.g. %s)", out_dir, len(extra), MANIFEST_NAME, extra[0])


def ensure_dataset(
    out_dir: str,
    num_cases: int,
    seed: int = 0,
    in_plane: int = 128,
    slices_range: Tuple[int, int] = DEFAULT_SLICES_RANGE,
    start_index: int = 0,
    progress: bool = True,
) -> List[Tuple[str, str]]:
    """Return the data set's file pairs, generating only what is missing or stale.

    Fast path: ``dataset.json`` has the same parameters and every listed file exists -> nothing is
    read or written. Otherwise ``write_dataset`` regenerates the cases that don't match.
    """
    params = _dataset_params(num_cases, seed, in_plane, slices_range, start_index)
    manifest = read_manifest(out_dir)
    pairs = [tuple(os.path.join(out_dir, n) for n in case_filenames(i))
             for i in range(start_index, start_index + num_cases)]
    if manifest is not None and all(manifest.get(k) == v for k, v in params.items()):
        listed = {int(e["index"]) for e in manifest.get("cases", [])}
        complete = listed == set(range(start_index, start_index + num_cases))
        if complete and all(os.path.isfile(p) for pair in pairs for p in pair):
            return pairs
    return write_dataset(out_dir, num_cases, seed=seed, in_plane=in_plane, slices_range=slices_range,
                         start_index=start_index, overwrite=False, progress=progress)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="directory for volume-N / segmentation-N")
    parser.add_argument("--num_cases", type=int, default=12)
    parser.add_argument("--size", type=int, default=128, help="in-plane size in voxels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min_slices", type=int, default=DEFAULT_SLICES_RANGE[0])
    parser.add_argument("--max_slices", type=int, default=DEFAULT_SLICES_RANGE[1])
    parser.add_argument("--start_index", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even unchanged cases")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    t0 = time.perf_counter()
    pairs = write_dataset(args.output, args.num_cases, seed=args.seed, in_plane=args.size,
                          slices_range=(args.min_slices, args.max_slices), start_index=args.start_index,
                          overwrite=args.overwrite, progress=not args.no_progress)
    cases = (read_manifest(args.output) or {}).get("cases", [])
    total = sum(int(e.get("num_slices") or 0) for e in cases)
    liver = sum(int(e.get("slices_with_liver") or 0) for e in cases)
    LOG.info("done: %d cases, %d slices, %d slices with liver, %.1f s -> %s", len(pairs), total, liver,
             time.perf_counter() - t0, os.path.abspath(args.output))
    return pairs


if __name__ == "__main__":
    main()
