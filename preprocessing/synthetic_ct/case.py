"""One synthetic case as stored: the phantom (drawn in canonical RAS) put in a case-specific
storage orientation and header scaling (`generate_case`), and its NIfTI images (`SyntheticCase`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from preprocessing.synthetic_ct.grid import make_grid
from preprocessing.synthetic_ct.phantom import build_phantom, case_geometry

# Storage orientations cycle with the case index; PIR permutes the axes (z is not the last axis).
ORIENTATIONS: Tuple[str, ...] = ("RAS", "LPS", "LAS", "PIR")
# (scl_slope, scl_inter) per scaling mode; stored = (HU - inter) / slope.
SCALINGS: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "none": (None, None),
    "offset": (1.0, -1024.0),
    "half": (0.5, -1024.0),
}
SCALING_CYCLE: Tuple[str, ...] = ("none", "offset", "half")
DEFAULT_SLICES_RANGE: Tuple[int, int] = (24, 64)


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
    n_slices, in_plane_mm, slice_mm = case_geometry(rng, slices_range)
    grid = make_grid(in_plane, n_slices, slice_mm, in_plane_mm)
    hu, labels, n_tumours = build_phantom(rng, grid)

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
