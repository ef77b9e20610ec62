"""Liver lesions of the synthetic phantom: how many, how large, how they look.

Drawn to resemble what a model meets in LiTS (portal-venous CT, mostly metastases and HCC):
- count per case: none in about one case in seven, usually one to four, up to seven
  (LESION_COUNT_WEIGHTS); LiTS cases hold 0 to dozens, most a few;
- size: the radius log-uniform between LESION_RADIUS_FRACTION of the liver's in-plane radius, so
  small lesions are as common per octave of size as large ones; near-spherical in millimetres (the
  three radii within 0.8-1.25 of each other), not stretched along the liver's long axis;
- shape: a lobulated sphere (a low-order modulation of its radius, up to LOBULATION);
- appearance: hypodense, LESION_CONTRAST_HU below the case's liver, with its own texture; about one
  in four with an enhancing rim (RIM_FRACTION of the radius, RIM_CONTRAST_HU above the liver), the
  look of many metastases; the edge blends into the parenchyma over about 30% of the radius, as
  partial volume does;
- placement: anywhere in the liver, clipped to the liver eroded by one voxel, so a lesion is always
  surrounded by liver (its label never touches the background).

The lesions draw from their own random stream, seeded by one draw of the phantom's: changing
anything here leaves the rest of the anatomy of every case as it was.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from scipy import ndimage

from preprocessing.synthetic_ct.grid import Grid, bbox, smooth_field

BACKGROUND, LIVER, TUMOUR = 0, 1, 2
LESION_COUNT_WEIGHTS = (0.14, 0.22, 0.2, 0.16, 0.12, 0.08, 0.05, 0.03)   # P(0), P(1), ... P(7)
LESION_RADIUS_FRACTION = (0.10, 0.5)   # of the liver's mean in-plane radius, log-uniform
LESION_CONTRAST_HU = (20.0, 70.0)       # below the liver
RIM_PROBABILITY = 0.25
RIM_FRACTION = (0.15, 0.3)              # of the lesion's radius
RIM_CONTRAST_HU = (5.0, 25.0)           # above the liver
LOBULATION = 0.15                       # largest relative radius modulation


def _lesion_radii(rng: np.random.Generator, grid: Grid, liver_r) -> Tuple[float, float, float]:
    """(x, y, z) radii: x and y in field-of-view fractions, z in mm, about the same in mm."""
    lo, hi = LESION_RADIUS_FRACTION
    r_xy = math.exp(rng.uniform(math.log(lo), math.log(hi))) * 0.5 * (liver_r[0] + liver_r[1])
    axes = rng.uniform(0.8, 1.25, size=3)
    return (r_xy * axes[0], r_xy * axes[1], r_xy * grid.mm_per_fov_unit * axes[2])


def _lobulated_radius(rng: np.random.Generator, grid: Grid, box, centre, radii) -> np.ndarray:
    """Normalised radius in ``box`` whose unit surface is a sphere with low-order bumps."""
    dx = ((grid.xs[box[0]] - centre[0]) / radii[0])[:, None, None]
    dy = ((grid.ys[box[1]] - centre[1]) / radii[1])[None, :, None]
    dz = ((grid.zs[box[2]] - centre[2]) / radii[2])[None, None, :]
    rho = np.sqrt(dx * dx + dy * dy + dz * dz)
    azim = np.arctan2(dy, dx)
    elev = np.arctan2(dz, np.sqrt(dx * dx + dy * dy))
    amp = float(rng.uniform(0.0, LOBULATION))
    m, k = (int(v) for v in rng.integers(2, 5, size=2))
    bumps = 1.0 + amp * np.sin(m * azim + float(rng.uniform(0, 2 * math.pi))) * np.cos(k * elev)
    return (rho / bumps).astype(np.float32)


def draw_lesions(rng: np.random.Generator, grid: Grid, liver: np.ndarray, lbox, liver_c,
                 liver_r, tex: np.ndarray, liver_hu: float):
    """Paint lesions into the liver's box: (labels in the box, texture with the lesions, number of
    lesions). Lesions drawn over each other are one lesion, as the metrics count them (3-D
    components, face connectivity). ``liver`` is the liver mask in ``lbox``, ``tex`` its HU."""
    rng = np.random.default_rng(int(rng.integers(0, 2 ** 63)))
    labels_box = np.where(liver, LIVER, BACKGROUND).astype(np.uint8)
    core = ndimage.binary_erosion(liver) if liver.any() else liver
    count = int(rng.choice(len(LESION_COUNT_WEIGHTS), p=LESION_COUNT_WEIGHTS))
    for _ in range(count):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction) + 1e-9
        offset = float(rng.uniform(0.0, 0.7))
        centre = tuple(c + offset * d * r for c, d, r in zip(liver_c, direction, liver_r))
        radii = _lesion_radii(rng, grid, liver_r)
        reach = tuple(r * (1.3 + LOBULATION) for r in radii)
        box = bbox(grid, centre, reach)
        # The lesion's box inside the liver's box (the liver box is where labels live).
        sub = tuple(slice(max(b.start, lb.start), min(b.stop, lb.stop)) for b, lb in zip(box, lbox))
        lesion_hu = liver_hu - float(rng.uniform(*LESION_CONTRAST_HU))
        rim = (float(rng.uniform(*RIM_FRACTION)), liver_hu + float(rng.uniform(*RIM_CONTRAST_HU))) \
            if rng.random() < RIM_PROBABILITY else None
        if any(s.stop <= s.start for s in sub):
            continue
        rho = _lobulated_radius(rng, grid, sub, centre, radii)
        local = tuple(slice(s.start - lb.start, s.stop - lb.start) for s, lb in zip(sub, lbox))
        label = (rho <= 1.0) & core[local]
        if not label.any():
            continue
        labels_box[local][label] = TUMOUR
        inner = lesion_hu + 6.0 * smooth_field(rng, rho.shape, (3, 3, 3))
        if rim is not None:
            inner = np.where(rho > 1.0 - rim[0], np.float32(rim[1]), inner)
        w = np.clip((1.15 - rho) / 0.3, 0.0, 1.0)   # soft edge: partial volume
        patch = tex[local]
        patch[...] = patch * (1.0 - w) + inner * w
    return labels_box, tex, int(ndimage.label(labels_box == TUMOUR)[1])
