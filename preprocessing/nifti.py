"""NIfTI CT volumes -> canonical (RAS+) arrays in HU, with the checks that keep bad cases out.

Geometry always comes from the affine (nibabel's closest canonical orientation), never from
rotating arrays by hand, so volumes stored as LPS, RAS or with permuted axes all come out the same.
Every failure raises `CaseError` naming the file and the reason; callers quarantine the case.

Cases are found by preprocessing/case_discovery.py (LiTS naming or a CSV manifest).

Reading is the conversion's floor, so a NIfTI-1/2 file (.nii or .nii.gz) is read in one go, by
the same code whether it is local or a URI (gs://, s3://, ram://; common/storage.py): its
bytes read whole, the gzip stream (told by its magic bytes) inflated by zlib into a buffer of
the size its header declares, after that size is checked against the limits
(preprocessing/read_limits.py), the header parsed by nibabel (`Nifti1Image.from_bytes`, so the
header scaling is nibabel's own), and the voxel data viewed as an array without copies.
nibabel's own reader streams through Python's gzip module, about 2x slower; no temporary copy
is made on local disk.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Dict, Optional, Tuple

import nibabel as nib
import numpy as np

from common import storage
from preprocessing.case_error import CaseError   # noqa: F401 - its home for every reader
from preprocessing.read_limits import (DEFAULT_LIMITS, GZIP_MAGIC, HEADER_BYTES, GzipStream,
                                       ReadLimits, inflate_exactly)

VALID_LABELS = (0, 1, 2)
# Tolerances for "same geometry": the affine of mask and volume may differ by rounding only.
AFFINE_ATOL_MM = 1e-3
AFFINE_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """One case on disk: an image and, for training data, its segmentation (None: inference
    only)."""
    case_id: str
    image_path: str                # a NIfTI file, or a DICOM series' folder or .dcm file
    label_path: Optional[str]      # NIfTI, or DICOM SEG (.dcm)
    # DICOM only (preprocessing/dicom_volume.py): the series to take from image_path when it
    # holds several, and the series' files as discovery found them (may span folders).
    series_uid: Optional[str] = None
    dicom_files: Tuple[str, ...] = ()


@dataclasses.dataclass
class CanonicalCase:
    """A case in canonical RAS+ voxel order (nibabel's convention): axis 0 grows towards the
    patient's Right, axis 1 towards Anterior, axis 2 towards Superior (feet -> head).

    `hu` and `labels` are usually strided views (flips/transposes) of the arrays as stored, not
    copies; the resampling in slices.py reads them in their memory order."""
    case_id: str
    hu: np.ndarray                 # float32 [X, Y, Z], HU with header scaling applied
    labels: Optional[np.ndarray]   # uint8 [X, Y, Z] or None for inference-only cases
    spacing: Tuple[float, float, float]   # mm along the canonical axes
    affine: np.ndarray             # canonical affine (voxel -> RAS mm)
    source_affine: np.ndarray      # the image file's own affine, to write masks back
    source_shape: Tuple[int, int, int]
    # The conversion's fast path leaves `hu` None and keeps the stored values instead (canonical
    # view, HU = stored * scaling[0] + scaling[1]): slices.py scales after resampling.
    stored: Optional[np.ndarray] = None
    scaling: Tuple[float, float] = (1.0, 0.0)
    # The image file's header (nibabel), for writing a mask in the input's grid (predict.py).
    source_header: Optional[nib.Nifti1Header] = None
    # A DICOM input's checked series (dicom_series.SeriesGeometry: files, SOP instance UIDs in
    # k order), for a DICOM SEG of the mask; None for NIfTI.
    dicom: Optional[object] = None


def _read_file(path: str, case_id: Optional[str]) -> bytes:
    """The file's bytes (local, gs://, s3://, ram://: common/storage.py)."""
    try:
        return storage.read_bytes(path)
    except FileNotFoundError as e:
        raise CaseError(path, "file not found", case_id) from e
    except OSError as e:
        raise CaseError(path, f"cannot read the file ({type(e).__name__}: {e})", case_id) from e


def _file_size(path: str, case_id: Optional[str]) -> int:
    try:
        return storage.size(path)
    except FileNotFoundError as e:
        raise CaseError(path, "file not found", case_id) from e
    except OSError as e:
        raise CaseError(path, f"cannot read the file ({type(e).__name__}: {e})", case_id) from e


def _nifti_class(data: bytes):
    """Nifti1Image or Nifti2Image by the header's own markers (nibabel's sniffing), else None."""
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        header_class = klass.header_class
        if header_class.may_contain_header(data[:header_class.sizeof_hdr]):
            return klass
    return None


def _declared_bytes(klass, head: bytes, path: str, case_id: Optional[str]):
    """(shape, bytes per voxel, header + voxel bytes) as the header declares them."""
    try:
        header = klass.header_class(binaryblock=head[:klass.header_class.sizeof_hdr],
                                    check=False)
        shape = header.get_data_shape()
        itemsize = header.get_data_dtype().itemsize
        offset = max(int(header.get_data_offset()), klass.header_class.sizeof_hdr)
    except Exception as e:  # nibabel raises several types for bad headers
        raise CaseError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})",
                        case_id) from e
    voxels = int(np.prod(shape, dtype=np.float64)) if len(shape) else 0
    return shape, itemsize, offset + voxels * itemsize


def _load_nifti(path: str, case_id: Optional[str] = None, limits: ReadLimits = DEFAULT_LIMITS
                ) -> Tuple[nib.Nifti1Image, bytes]:
    """(the image parsed by nibabel from the file's header, the decompressed bytes). The same
    code for local files and URIs: no temporary copy on local disk. The limits are checked
    before any voxel is read (preprocessing/read_limits.py). Gzip is told by its magic bytes,
    not by the name: a .nii may hold gzip data and a .nii.gz plain data."""
    limits.check_file_size(path, _file_size(path, case_id), case_id)
    raw = _read_file(path, case_id)
    stream = GzipStream(raw) if raw[:2] == GZIP_MAGIC else None
    try:
        head = stream.read(HEADER_BYTES) if stream else raw[:HEADER_BYTES]
    except zlib.error as e:
        raise CaseError(path, f"truncated or corrupt data (error: {e})", case_id) from e
    klass = _nifti_class(head)
    if klass is None:
        raise CaseError(path, "not a readable NIfTI file (no NIfTI-1 or NIfTI-2 header)",
                        case_id)
    shape, itemsize, total = _declared_bytes(klass, head, path, case_id)
    limits.check_declared(path, shape, itemsize, total, case_id)
    data = inflate_exactly(stream, head, total, path, case_id) if stream else raw
    del raw
    try:   # the header (and extensions) only: the voxels are viewed by _read_stored
        img = klass.from_bytes(bytes(data[:total - int(np.prod(shape)) * itemsize])
                               if stream else data)
    except Exception as e:  # nibabel raises several types for bad headers
        raise CaseError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})",
                        case_id) from e
    if len(img.shape) != 3:
        raise CaseError(path, f"expected a 3-D volume, got shape {img.shape}", case_id)
    if min(img.shape) < 1:
        raise CaseError(path, f"empty volume, shape {img.shape}", case_id)
    return img, data


def _read_stored(img: nib.Nifti1Image, data: bytes, path: str, case_id: str
                 ) -> Tuple[np.ndarray, float, float]:
    """The voxel data as stored (on-disk dtype, F-order [i, j, k]), viewed in `data` without a
    copy, plus the header's scaling as nibabel reads it (HU = stored * slope + inter).
    Truncated data raises CaseError."""
    proxy = img.dataobj   # nibabel's ArrayProxy: offset, dtype, shape, order, scaling
    dtype = np.dtype(proxy.dtype)
    count = int(np.prod(proxy.shape))
    needed = proxy.offset + count * dtype.itemsize
    if len(data) < needed:
        raise CaseError(path, f"truncated or corrupt data (EOFError: {len(data)} bytes, the "
                              f"header needs {needed})", case_id)
    try:
        stored = np.frombuffer(data, dtype, count, proxy.offset).reshape(proxy.shape,
                                                                        order=proxy.order)
    except ValueError as e:
        raise CaseError(path, f"truncated or corrupt data ({type(e).__name__}: {e})",
                        case_id) from e
    slope, inter = float(proxy.slope), float(proxy.inter)
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise CaseError(path, f"invalid scaling slope={slope} inter={inter}", case_id)
    return stored, slope, inter


def _to_hu(stored: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """float32 HU in the stored memory order (one pass; scaling in place)."""
    hu = stored.astype(np.float32, order="K")
    if slope != 1.0:
        hu *= np.float32(slope)
    if inter != 0.0:
        hu += np.float32(inter)
    return hu


def _check_labels(stored: np.ndarray, slope: float, inter: float, path: str, case_id: str
                  ) -> np.ndarray:
    """uint8 labels in {0, 1, 2}; integer data without scaling needs only min and max."""
    if stored.dtype.kind in "iub" and slope == 1.0 and inter == 0.0:
        values = stored
    else:
        values = stored.astype(np.float64) * slope + inter
        if not np.isfinite(values).all():
            raise CaseError(path, "NaN/Inf in labels", case_id)
        if not np.array_equal(values, np.round(values)):
            raise CaseError(path, "non-integer label values", case_id)
    lo, hi = values.min(), values.max()
    if lo < min(VALID_LABELS) or hi > max(VALID_LABELS):
        unexpected = sorted(set(np.unique(values).astype(int).tolist()) - set(VALID_LABELS))
        raise CaseError(path, f"label values {unexpected[:5]} outside {{0, 1, 2}}", case_id)
    if values.dtype == np.uint8:
        return values
    return values.astype(np.uint8, order="K")


def _add(timings: Optional[Dict[str, float]], key: str, start: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + now - start
    return now


@dataclasses.dataclass
class StoredCase:
    """A case's voxel data as stored on disk (read and checked, not yet scaled or reoriented)."""
    files: CaseFiles
    image: nib.Nifti1Image
    stored: np.ndarray                 # on-disk dtype, F-order [i, j, k]
    slope: float
    inter: float
    label_stored: Optional[Tuple[np.ndarray, float, float]]
    dicom: Optional[object] = None     # a DICOM input's SeriesGeometry


def read_case(files: CaseFiles, timings: Optional[Dict[str, float]] = None,
              limits: ReadLimits = DEFAULT_LIMITS) -> StoredCase:
    """The I/O half of load_case (file read + gunzip + the header checks, the size limits
    first); zlib releases the GIL, so the conversion runs it in a thread for the next case while
    it resamples this one. A DICOM series (a folder or .dcm) is read by
    preprocessing/dicom_volume.py into the same StoredCase."""
    from preprocessing import dicom_volume   # imports this module
    if dicom_volume.is_dicom_case(files):
        return dicom_volume.read_dicom_case(files, timings, limits)
    t = time.perf_counter()
    image, data = _load_nifti(files.image_path, files.case_id, limits)
    stored, slope, inter = _read_stored(image, data, files.image_path, files.case_id)
    del data   # `stored` views it
    label_stored = None
    if files.label_path is not None:
        label_img, label_data = _load_nifti(files.label_path, files.case_id, limits)
        if label_img.shape != image.shape:
            raise CaseError(files.label_path, f"shape {label_img.shape} differs from the "
                            f"volume's {image.shape}", files.case_id)
        if not np.allclose(label_img.affine, image.affine, atol=AFFINE_ATOL_MM,
                           rtol=AFFINE_RTOL):
            raise CaseError(files.label_path, "affine differs from the volume's "
                            f"(max difference {np.abs(label_img.affine - image.affine).max():.4g})",
                            files.case_id)
        label_stored = _read_stored(label_img, label_data, files.label_path, files.case_id)
    _add(timings, "read", t)
    return StoredCase(files, image, stored, slope, inter, label_stored)


def canonicalize_case(raw: StoredCase, timings: Optional[Dict[str, float]] = None,
                      hu: bool = True) -> CanonicalCase:
    """The compute half of load_case: HU scaling, value checks, orientation to RAS+. With
    hu=False the float32 HU volume is not made: the case carries the stored values (`stored`,
    `scaling`) and slices.py converts slice by slice."""
    t = time.perf_counter()
    files, image = raw.files, raw.image
    stored, raw.stored = raw.stored, None
    if stored.dtype.kind == "f" and not np.isfinite(stored).all():
        bad = int((~np.isfinite(stored)).sum())
        raise CaseError(files.image_path, f"{bad} NaN/Inf voxels", files.case_id)
    if hu:
        values, scaling = _to_hu(stored, raw.slope, raw.inter), (1.0, 0.0)
    else:
        values, scaling = stored, (raw.slope, raw.inter)
    del stored
    labels = None
    if raw.label_stored is not None:
        labels = _check_labels(*raw.label_stored, files.label_path, files.case_id)
        raw.label_stored = None

    # Geometry from the affine: flips and a transpose (views, no copies) to RAS+.
    ornt = nib.io_orientation(image.affine)
    values = nib.orientations.apply_orientation(values, ornt)
    if labels is not None:
        labels = nib.orientations.apply_orientation(labels, ornt)
    affine = image.affine.dot(nib.orientations.inv_ornt_aff(ornt, image.shape))
    spacing = tuple(float(z) for z in nib.affines.voxel_sizes(affine))
    _add(timings, "canonicalize", t)
    return CanonicalCase(
        case_id=files.case_id,
        hu=values if hu else None,
        labels=labels,
        spacing=spacing,
        affine=affine,
        source_affine=image.affine,
        source_shape=tuple(int(s) for s in image.shape),
        stored=None if hu else values,
        scaling=scaling,
        source_header=image.header,
        dicom=raw.dicom,
    )


def load_case(files: CaseFiles, timings: Optional[Dict[str, float]] = None,
              limits: ReadLimits = DEFAULT_LIMITS) -> CanonicalCase:
    """Reads, checks and canonicalizes one case. Raises CaseError on any problem.

    `timings`, when given, accumulates seconds under "read" (file read + gunzip) and
    "canonicalize" (HU scaling, checks, orientation)."""
    return canonicalize_case(read_case(files, timings, limits), timings)
