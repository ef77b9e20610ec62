"""The synthetic phantom: anatomy drawn in the canonical RAS voxel grid (HU and labels), from one
random generator. The random draws happen in a fixed order (liver placement, body, spine,
vessels, kidneys, ribs, liver, one draw seeding the lesions' own stream (lesions.py),
abdominal organs, noise), so the same generator state always gives the same arrays: keep that
order when changing anything here."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage

from preprocessing.synthetic_ct.grid import Grid, bbox, rho2, smooth_field
from preprocessing.synthetic_ct.lesions import draw_lesions

SLICE_SPACINGS_MM: Tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
HU_MIN, HU_MAX = -1024, 3071
AIR_HU = -1000.0
BIG_Z = 1e6  # z radius of structures that run through the whole slab


def case_geometry(rng: np.random.Generator, slices_range: Tuple[int, int]):
    lo, hi = int(slices_range[0]), int(slices_range[1])
    if lo < 8 or hi < lo:
        raise ValueError(f"slices_range must satisfy 8 <= min <= max, got {slices_range}")
    n_slices = int(rng.integers(lo, hi + 1))
    in_plane_mm = round(float(rng.uniform(0.6, 0.9)), 4)
    slice_mm = float(rng.choice(SLICE_SPACINGS_MM))
    return n_slices, in_plane_mm, slice_mm


@dataclass
class _Anatomy:
    """The phantom being drawn: the HU volume, the mask of "hard" structures the liver must not
    overlap (spine, vessels, muscles, kidneys, ribs), and the layout every organ is placed by."""

    grid: Grid
    extent: float          # slab thickness in mm
    amps: np.ndarray       # liver deformation amplitudes
    max_deform: float
    liver_zc: float
    liver_rz: float
    s_z: float             # z-compression of the whole abdomen relative to an adult
    ax0: float = 0.0
    ay0: float = 0.0
    body_cy: float = 0.0
    fat_t: float = 0.0
    wall_t: float = 0.0
    body: np.ndarray = None
    inner: np.ndarray = None
    cavity: np.ndarray = None
    hu: np.ndarray = None
    hard: np.ndarray = None

    def paint(self, center, radii, value, mark_hard=True, where=None, rim=None):
        box = bbox(self.grid, center, radii)
        inside = rho2(self.grid, box, center, radii) <= 1.0
        if where is not None:
            inside &= where[box]
        hu_box = self.hu[box]
        hu_box[inside] = value
        if rim is not None:  # (inner fraction, value): brighter cortical shell for bones
            core = rho2(self.grid, box, center, [r * rim[0] for r in radii[:2]] + [radii[2]]) <= 1.0
            shell = inside & ~core
            hu_box[shell] = rim[1]
        if mark_hard:
            self.hard[box] |= inside
        return box, inside


def _place_liver(rng: np.random.Generator, grid: Grid) -> _Anatomy:
    """Liver z placement first: the rest of the anatomy is laid out relative to it."""
    nz = grid.shape[2]
    extent = nz * float(grid.zs[1] - grid.zs[0]) if nz > 1 else 1.0
    # Deformation amplitudes bound how far the liver can reach beyond its nominal radii.
    amps = rng.uniform(0.02, 0.045, size=3).astype(np.float32)
    max_deform = float(amps.sum())
    # Keep >= max(2 slices, 10% of the slab) liver-free at each end.
    margin = max(2.0 * extent / nz, 0.10 * extent)
    liver_zc = float(rng.uniform(-0.06, 0.06)) * extent
    room = extent / 2.0 - abs(liver_zc) - margin
    liver_rz = min(float(rng.uniform(65.0, 85.0)), room / (1.0 + max_deform))
    s_z = liver_rz / 75.0  # z-compression of the whole abdomen relative to an adult (liver ~150 mm)
    return _Anatomy(grid, extent, amps, max_deform, liver_zc, liver_rz, s_z)


def _draw_body(rng: np.random.Generator, a: _Anatomy) -> None:
    """Body outline, fat, muscle wall, cavity."""
    grid, s_z = a.grid, a.s_z
    nz = grid.shape[2]
    x = grid.xs[:, None, None]
    y = grid.ys[None, :, None]
    z = grid.zs[None, None, :]
    a.ax0, a.ay0 = float(rng.uniform(0.86, 0.95)), float(rng.uniform(0.66, 0.78))
    a.body_cy = float(rng.uniform(-0.05, 0.0))
    wobble = float(rng.uniform(0.0, 2 * math.pi))
    ax = a.ax0 * (1.0 + 0.03 * np.sin(z / (90.0 * s_z + 1e-3) + wobble))
    ay = a.ay0 * (1.0 + 0.03 * np.cos(z / (70.0 * s_z + 1e-3) + wobble))
    r_body = np.sqrt((x / ax) ** 2 + ((y - a.body_cy) / ay) ** 2)
    a.fat_t = float(rng.uniform(0.07, 0.14))
    a.wall_t = float(rng.uniform(0.05, 0.08))
    a.body = r_body <= 1.0
    a.inner = r_body <= 1.0 - a.fat_t
    a.cavity = r_body <= 1.0 - a.fat_t - a.wall_t
    del r_body

    hu = np.full(grid.shape, AIR_HU, dtype=np.float32)
    hu[a.body] = -100.0  # subcutaneous fat
    hu[a.inner] = 50.0  # abdominal wall muscle
    # Cavity: mesenteric fat / soft tissue mixture so the liver is not "the only tissue near 60 HU".
    mix = 1.0 / (1.0 + np.exp(-1.5 * smooth_field(rng, grid.shape, (7, 7, max(2, nz // 8)))))
    hu[a.cavity] = (-90.0 + 130.0 * mix)[a.cavity]
    a.hu = hu
    a.hard = np.zeros(grid.shape, dtype=bool)


def _draw_spine(rng: np.random.Generator, a: _Anatomy) -> Tuple[float, Tuple[float, float]]:
    """Vertebral body with cortical rim, discs, canal, posterior arch; returns its centre y."""
    vb_cy = a.body_cy - 0.52 * a.ay0
    vb_r = (float(rng.uniform(0.10, 0.13)), float(rng.uniform(0.08, 0.10)))
    cancellous = float(rng.uniform(380.0, 480.0))
    cortical = float(rng.uniform(800.0, 1000.0))
    # Paraspinal muscles first so the bone paints over them.
    for side in (-1.0, 1.0):
        a.paint((side * 0.15, vb_cy - 0.13, 0.0), (0.10, 0.09, BIG_Z), 50.0, where=a.inner)
    box, vb = a.paint((0.0, vb_cy, 0.0), (vb_r[0], vb_r[1], BIG_Z), cancellous,
                      rim=(0.78, cortical))
    disc_period = 32.0 * a.s_z + 1e-3
    disc_phase = float(rng.uniform(0.0, disc_period))
    disc_z = (np.mod(a.grid.zs[box[2]] - disc_phase, disc_period)
              < 0.22 * disc_period)[None, None, :]
    hu_box = a.hu[box]
    hu_box[vb & disc_z] = 90.0
    canal_cy = vb_cy - vb_r[1] - 0.055
    a.paint((0.0, canal_cy, 0.0), (0.08, 0.075, BIG_Z), cortical * 0.75, rim=None)  # arch
    a.paint((0.0, canal_cy, 0.0), (0.045, 0.04, BIG_Z), 15.0)  # CSF in the canal
    a.paint((0.0, canal_cy - 0.11, 0.0), (0.025, 0.06, BIG_Z), cortical * 0.8,
            where=a.body)  # spinous
    return vb_cy, vb_r


def _draw_vessels_and_kidneys(rng: np.random.Generator, a: _Anatomy, vb_cy: float,
                              vb_r: Tuple[float, float]) -> None:
    # Great vessels (portal-venous phase contrast).
    a.paint((-0.07, vb_cy + vb_r[1] + 0.06, 0.0), (0.055, 0.055, BIG_Z),
            float(rng.uniform(140, 190)))
    a.paint((0.11, vb_cy + vb_r[1] + 0.07, 0.0), (0.06, 0.05, BIG_Z),
            float(rng.uniform(100, 140)))
    # Kidneys (lower than the liver dome, posterior, beside the spine).
    kid_zc = a.liver_zc - 45.0 * a.s_z
    for side in (-1.0, 1.0):
        c = (side * float(rng.uniform(0.30, 0.36)), vb_cy + 0.02,
             kid_zc + float(rng.uniform(-8, 8)) * a.s_z)
        r = (float(rng.uniform(0.09, 0.12)), float(rng.uniform(0.12, 0.15)), 55.0 * a.s_z)
        a.paint(c, r, float(rng.uniform(25.0, 35.0)), where=a.cavity)


def _draw_ribs(rng: np.random.Generator, a: _Anatomy) -> None:
    """Small bright ellipses in the wall ring, present in z bands (rib cross-sections)."""
    grid = a.grid
    rib_r = float(a.ay0 * a.wall_t * 0.45)
    ring = 1.0 - a.fat_t - a.wall_t / 2.0
    rib_zmin = a.liver_zc - 45.0 * a.s_z
    for side in (-1.0, 1.0):
        for _ in range(int(rng.integers(3, 5))):
            # Angle from the lateral direction: < 0 anterolateral, > 0 posterolateral.
            theta = float(rng.uniform(-0.3 * math.pi, 0.35 * math.pi))
            cx = side * a.ax0 * ring * math.cos(theta)
            cy = a.body_cy - a.ay0 * ring * math.sin(theta)
            period = float(rng.uniform(25.0, 35.0)) * a.s_z + 1e-3
            phase = float(rng.uniform(0.0, 2 * math.pi))
            bands = (np.cos(2 * math.pi * grid.zs / period + phase) > 0.3) & (grid.zs > rib_zmin)
            if not bands.any():
                continue
            box = bbox(grid, (cx, cy, 0.0), (rib_r * 1.6, rib_r, BIG_Z))
            inside = rho2(grid, box, (cx, cy, 0.0), (rib_r * 1.6, rib_r, BIG_Z)) <= 1.0
            inside &= bands[box[2]][None, None, :] & a.inner[box]
            core = rho2(grid, box, (cx, cy, 0.0), (rib_r * 1.0, rib_r * 0.6, BIG_Z)) <= 1.0
            hu_box = a.hu[box]
            hu_box[inside] = float(rng.uniform(750, 1000))
            hu_box[inside & core] = float(rng.uniform(250, 400))
            a.hard[box] |= inside


def _draw_liver(rng: np.random.Generator, a: _Anatomy):
    """Deformed ellipsoid in the right upper abdomen: (mask in its box, box, centre, radii)."""
    grid = a.grid
    liver_c = (a.ax0 * float(rng.uniform(0.30, 0.40)),
               a.body_cy + a.ay0 * float(rng.uniform(0.0, 0.15)), a.liver_zc)
    liver_r = (a.ax0 * float(rng.uniform(0.40, 0.50)), a.ay0 * float(rng.uniform(0.50, 0.65)),
               a.liver_rz)
    freqs = rng.integers(1, 4, size=(3, 2))
    phases = rng.uniform(0.0, 2 * math.pi, size=3)
    reach = [r * (1.0 + a.max_deform) for r in liver_r]
    lbox = bbox(grid, liver_c, reach)
    dx = ((grid.xs[lbox[0]] - liver_c[0]) / liver_r[0])[:, None, None]
    dy = ((grid.ys[lbox[1]] - liver_c[1]) / liver_r[1])[None, :, None]
    dz = ((grid.zs[lbox[2]] - liver_c[2]) / liver_r[2])[None, None, :]
    rho = np.sqrt(dx * dx + dy * dy + dz * dz)
    azim = np.arctan2(dy, dx)
    elev = np.arctan2(dz, np.sqrt(dx * dx + dy * dy))
    deform = np.zeros_like(rho)
    for amp, (m, k), p in zip(a.amps, freqs, phases):
        deform += amp * np.sin(m * azim + k * elev + p)  # smooth low-order radius modulation
    liver = (rho <= 1.0 + deform) & a.cavity[lbox] & ~a.hard[lbox]
    del rho, azim, elev, deform
    liver = _largest_component(liver)  # one connected organ => a contiguous z range
    return liver, lbox, liver_c, liver_r


def _draw_abdomen(rng: np.random.Generator, a: _Anatomy, liver_any: np.ndarray) -> None:
    """Stomach, spleen and bowel (left / lower abdomen; never over the liver)."""
    ax0, ay0, body_cy, s_z, liver_zc = a.ax0, a.ay0, a.body_cy, a.s_z, a.liver_zc
    free = a.cavity & ~a.hard & ~liver_any
    st_c = (-ax0 * float(rng.uniform(0.28, 0.40)), body_cy + ay0 * 0.25, liver_zc + 15.0 * s_z)
    st_r = (0.22, 0.2, 45.0 * s_z)
    a.paint(st_c, st_r, float(rng.uniform(5.0, 20.0)), mark_hard=False, where=free)
    gas_c = (st_c[0], st_c[1] + 0.12, st_c[2])
    a.paint(gas_c, (0.15, 0.08, 30.0 * s_z), -850.0, mark_hard=False, where=free)
    sp_c = (-ax0 * 0.55, body_cy - ay0 * 0.2, liver_zc + 20.0 * s_z)
    a.paint(sp_c, (0.16, 0.2, 50.0 * s_z), float(rng.uniform(45.0, 55.0)), mark_hard=False,
            where=free)
    for _ in range(int(rng.integers(6, 11))):
        c = (float(rng.uniform(-0.6, 0.6)) * ax0, body_cy + float(rng.uniform(-0.1, 0.6)) * ay0,
             float(rng.uniform(-0.5, 0.5)) * a.extent)
        rr = float(rng.uniform(0.06, 0.12))
        r = (rr, rr * float(rng.uniform(0.7, 1.3)), float(rng.uniform(15.0, 40.0)) * s_z)
        a.paint(c, r, float(rng.uniform(30.0, 45.0)), mark_hard=False, where=free)  # bowel wall
        lumen = -800.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 20.0))  # gas or fluid
        a.paint(c, tuple(v * 0.6 for v in r), lumen, mark_hard=False, where=free)


def build_phantom(rng: np.random.Generator, grid: Grid):
    """Return (hu float32, labels uint8, n_tumours) in the canonical RAS grid."""
    a = _place_liver(rng, grid)
    _draw_body(rng, a)
    vb_cy, vb_r = _draw_spine(rng, a)
    _draw_vessels_and_kidneys(rng, a, vb_cy, vb_r)
    _draw_ribs(rng, a)
    liver, lbox, liver_c, liver_r = _draw_liver(rng, a)
    liver_hu = float(rng.uniform(58.0, 67.0))
    cells = (5, 5, max(2, (lbox[2].stop - lbox[2].start) // 6))
    tex = liver_hu + 4.0 * smooth_field(rng, liver.shape, cells)
    labels_box, tex, n_tumours = draw_lesions(rng, grid, liver, lbox, liver_c, liver_r, tex,
                                              liver_hu)
    hu_box = a.hu[lbox]
    hu_box[liver] = tex[liver]
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[lbox] = labels_box
    _draw_abdomen(rng, a, labels > 0)
    # Acquisition noise.
    hu = a.hu
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
