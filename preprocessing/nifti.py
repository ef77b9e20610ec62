"""NIfTI CT volumes -> canonical (RAS+) arrays in HU, with the checks that keep bad cases out.

Geometry always comes from the affine (nibabel's closest canonical orientation), never from
rotating arrays by hand, so volumes stored as LPS, RAS or with permuted axes all come out the same.
Every failure raises `CaseError` naming the file and the reason; callers quarantine the case.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zlib
from typing import List, Optional, Tuple

import nibabel as nib
import numpy as np

VALID_LABELS = (0, 1, 2)
# Tolerances for "same geometry": the affine of mask and volume may differ by rounding only.
AFFINE_ATOL_MM = 1e-3
AFFINE_RTOL = 1e-4


class CaseError(Exception):
    """A case that cannot be converted. `path` names the file, `reason` says why."""

    def __init__(self, path: str, reason: str, case_id: Optional[str] = None):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.case_id = case_id


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """One case on disk: an image and, for training data, its segmentation."""
    case_id: str
    image_path: str
    label_path: Optional[str]


@dataclasses.dataclass
class CanonicalCase:
    """A case in canonical RAS+ voxel order (nibabel's convention): axis 0 grows towards the
    patient's Right, axis 1 towards Anterior, axis 2 towards Superior (feet -> head)."""
    case_id: str
    hu: np.ndarray                 # float32 [X, Y, Z], HU with header scaling applied
    labels: Optional[np.ndarray]   # uint8 [X, Y, Z] or None for inference-only cases
    spacing: Tuple[float, float, float]   # mm along the canonical axes
    affine: np.ndarray             # canonical affine (voxel -> RAS mm)
    source_affine: np.ndarray      # the image file's own affine, to write masks back
    source_shape: Tuple[int, int, int]


_LITS_NAME = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")


def discover_lits_cases(data_root: str) -> Tuple[List[CaseFiles], List[CaseError]]:
    """Pairs `volume-N.nii[.gz]` with `segmentation-N.nii[.gz]` in `data_root`.

    Returns the pairs sorted by N, and one CaseError per volume without a segmentation (or
    segmentation without a volume, or the same N twice), so such cases are counted, not lost.
    """
    volumes, segmentations, errors = {}, {}, []
    for name in sorted(os.listdir(data_root)):
        match = _LITS_NAME.match(name)
        if not match:
            continue
        kind, number = match.group(1), int(match.group(2))
        table = volumes if kind == "volume" else segmentations
        path = os.path.join(data_root, name)
        if number in table:
            errors.append(CaseError(path, f"duplicate case id {kind}-{number} "
                                          f"(also {os.path.basename(table[number])})",
                                    f"volume-{number}"))
            continue
        table[number] = path
    cases = []
    for number in sorted(volumes):
        case_id = f"volume-{number}"
        if number not in segmentations:
            errors.append(CaseError(volumes[number], "missing segmentation "
                                    f"segmentation-{number}.nii[.gz]", case_id))
            continue
        cases.append(CaseFiles(case_id, volumes[number], segmentations[number]))
    for number in sorted(set(segmentations) - set(volumes)):
        errors.append(CaseError(segmentations[number], f"segmentation without volume-{number}",
                                f"volume-{number}"))
    return cases, errors


def _load_nifti(path: str) -> nib.Nifti1Image:
    if not os.path.exists(path):
        raise CaseError(path, "file not found")
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises several types for bad headers
        raise CaseError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CaseError(path, f"not a NIfTI image ({type(img).__name__})")
    if len(img.shape) != 3:
        raise CaseError(path, f"expected a 3-D volume, got shape {img.shape}")
    if min(img.shape) < 1:
        raise CaseError(path, f"empty volume, shape {img.shape}")
    return img


def _read_canonical(img: nib.Nifti1Image, path: str, case_id: str
                    ) -> Tuple[np.ndarray, nib.Nifti1Image]:
    """Voxel values with the header's scl_slope/scl_inter applied (float32), reoriented to RAS+
    by the affine. Reading is where truncated or corrupt data shows up."""
    try:
        # get_fdata applies the scaling; float32 halves memory against float64.
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise CaseError(path, f"truncated or corrupt data ({type(e).__name__}: {e})",
                        case_id) from e
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    return np.asarray(canonical.dataobj), canonical


def load_case(files: CaseFiles) -> CanonicalCase:
    """Reads, checks and canonicalizes one case. Raises CaseError on any problem."""
    image = _load_nifti(files.image_path)
    hu, canonical_image = _read_canonical(image, files.image_path, files.case_id)
    if not np.isfinite(hu).all():
        bad = int((~np.isfinite(hu)).sum())
        raise CaseError(files.image_path, f"{bad} NaN/Inf voxels", files.case_id)

    labels = None
    if files.label_path is not None:
        label_img = _load_nifti(files.label_path)
        if label_img.shape != image.shape:
            raise CaseError(files.label_path, f"shape {label_img.shape} differs from the "
                            f"volume's {image.shape}", files.case_id)
        if not np.allclose(label_img.affine, image.affine, atol=AFFINE_ATOL_MM,
                           rtol=AFFINE_RTOL):
            raise CaseError(files.label_path, "affine differs from the volume's "
                            f"(max difference {np.abs(label_img.affine - image.affine).max():.4g})",
                            files.case_id)
        raw, _ = _read_canonical(label_img, files.label_path, files.case_id)
        if not np.isfinite(raw).all():
            raise CaseError(files.label_path, "NaN/Inf in labels", files.case_id)
        if not np.array_equal(raw, np.round(raw)):
            raise CaseError(files.label_path, "non-integer label values", files.case_id)
        values = np.unique(raw)
        unexpected = sorted(set(values.astype(int).tolist()) - set(VALID_LABELS))
        if unexpected:
            raise CaseError(files.label_path, f"label values {unexpected[:5]} outside "
                            f"{{0, 1, 2}}", files.case_id)
        labels = raw.astype(np.uint8)

    zooms = canonical_image.header.get_zooms()[:3]
    return CanonicalCase(
        case_id=files.case_id,
        hu=hu,
        labels=labels,
        spacing=tuple(float(z) for z in zooms),
        affine=canonical_image.affine,
        source_affine=image.affine,
        source_shape=tuple(int(s) for s in image.shape),
    )
