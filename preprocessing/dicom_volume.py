"""A DICOM CT series as the same StoredCase a NIfTI file gives (preprocessing/nifti.py), so that
the ExampleGen and inference read DICOM through one path: canonicalize_case, slices.py and the
Transform see a series exactly as they see the same scan as NIfTI.

- The series: a folder holding one series (files may be spread over sub-folders), a folder and a
  SeriesInstanceUID, the file list discovery found, or one Enhanced (multi-frame) CT file.
- Geometry and checks: preprocessing/dicom_series.py. Voxels: pydicom's decoders (pyjpegls for
  JPEG-LS; pillow for JPEG and JPEG 2000 where it has them); an undecodable transfer syntax is a
  CaseError naming the file and the syntax.
- Values: the stored integers and one (RescaleSlope, RescaleIntercept) when every slice shares
  them (HU scaled slice by slice later, as for NIfTI); float32 HU when they differ per slice.
- Labels: a NIfTI mask in the series' world grid (any axis order: it is reoriented, then its
  affine must match), or a DICOM SEG (preprocessing/dicom_seg_labels.py).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import nibabel as nib
import numpy as np

from common import storage
from preprocessing import dicom_series
from preprocessing.dicom_series import SeriesGeometry
from preprocessing.nifti import AFFINE_ATOL_MM, AFFINE_RTOL, CaseError, CaseFiles
from preprocessing.read_limits import DEFAULT_LIMITS, ReadLimits

LOG = logging.getLogger(__name__)
DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom_case(files: CaseFiles) -> bool:
    """A case whose image is a DICOM series: discovered files, a folder, or a .dcm file."""
    path = files.image_path
    return bool(files.dicom_files) or path.lower().endswith(DICOM_SUFFIXES) or (
        not path.lower().endswith((".nii", ".nii.gz")) and storage.isdir(path))


def is_dicom_label(path: str) -> bool:
    return path.lower().endswith(DICOM_SUFFIXES)


def series_of(files: CaseFiles) -> SeriesGeometry:
    """The case's series, checked: from its discovered file list, else from all files under
    its image path (one series there, or the one named by files.series_uid)."""
    where = files.image_path
    paths = list(files.dicom_files) or dicom_series.dicom_files_under(where)
    headers, skipped = dicom_series.read_all_headers(paths)
    if skipped:
        LOG.info("%s: %d file(s) that are not DICOM skipped (e.g. %s)", where, len(skipped),
                 storage.basename(skipped[0]))
    series = dicom_series.group_by_series(headers)
    if files.series_uid:
        if files.series_uid not in series:
            raise CaseError(where, f"no series {files.series_uid} (found {len(series)})",
                            files.case_id)
        series = {files.series_uid: series[files.series_uid]}
    if not series:
        raise CaseError(where, "no DICOM image files found", files.case_id)
    if len(series) > 1:
        raise CaseError(where, f"holds {len(series)} series ({', '.join(sorted(series))}): "
                               "give one folder per series, or its series_uid", files.case_id)
    try:
        return dicom_series.series_geometry(next(iter(series.values())), where)
    except CaseError as e:
        raise CaseError(e.path, e.reason, files.case_id) from e


def _decoded(path: str, cache: Dict[str, np.ndarray], case_id: Optional[str]) -> np.ndarray:
    """The file's pixels [rows, columns] or [frames, rows, columns]; one file cached (the frames
    of a multi-frame file are read once)."""
    if path not in cache:
        cache.clear()
        try:
            ds = dicom_series._dcmread(path, stop_before_pixels=False)
        except CaseError as e:
            raise CaseError(e.path, e.reason, case_id) from e
        try:
            cache[path] = ds.pixel_array
        except Exception as e:   # pydicom raises several types for undecodable data
            syntax = ds.file_meta.TransferSyntaxUID
            detail = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise CaseError(path, f"cannot decode the pixel data (transfer syntax "
                                  f"{getattr(syntax, 'name', syntax)}): "
                                  f"{type(e).__name__}: {detail}", case_id) from e
    return cache[path]


def read_voxels(geometry: SeriesGeometry, case_id: Optional[str] = None
                ) -> Tuple[np.ndarray, float, float]:
    """(stored values [i, j, k] as a view of one [k, j, i] buffer, slope, intercept). Slices
    with other rescale values than the first make the whole volume float32 HU (1, 0)."""
    slices = geometry.slices
    scalings = {(s.slope, s.intercept) for s in slices}
    shared = len(scalings) == 1
    cache: Dict[str, np.ndarray] = {}
    buffer = None
    for k, s in enumerate(slices):
        pixels = _decoded(s.path, cache, case_id)
        pixels = pixels[s.frame] if s.frame is not None else pixels
        if pixels.shape != (s.rows, s.columns):
            raise CaseError(s.path, f"pixel data of shape {pixels.shape}, the header says "
                                    f"{s.rows}x{s.columns}", case_id)
        if buffer is None:
            dtype = pixels.dtype if shared else np.float32
            buffer = np.empty((len(slices), s.rows, s.columns), dtype=dtype)
        if shared:
            buffer[k] = pixels
        else:
            buffer[k] = pixels.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
    slope, intercept = next(iter(scalings)) if shared else (1.0, 0.0)
    return buffer.transpose(2, 1, 0), slope, intercept


def _as_image_grid(label: nib.Nifti1Image, stored: np.ndarray, geometry: SeriesGeometry,
                   path: str, case_id: str) -> np.ndarray:
    """A NIfTI label's stored array in the series' voxel grid: reoriented (views) when it is the
    same grid in another axis order (a converter's NIfTI), then shape and affine checked."""
    transform = nib.orientations.ornt_transform(nib.io_orientation(label.affine),
                                                nib.io_orientation(geometry.affine))
    moved = nib.orientations.apply_orientation(stored, transform)
    affine = label.affine.dot(nib.orientations.inv_ornt_aff(transform, label.shape))
    if moved.shape != geometry.shape:
        raise CaseError(path, f"shape {label.shape} does not fit the series' "
                              f"{geometry.shape}", case_id)
    if not np.allclose(affine, geometry.affine, atol=AFFINE_ATOL_MM, rtol=AFFINE_RTOL):
        raise CaseError(path, "affine differs from the series' (max difference "
                              f"{np.abs(affine - geometry.affine).max():.4g})", case_id)
    return moved


def read_label(files: CaseFiles, geometry: SeriesGeometry,
               limits: ReadLimits = DEFAULT_LIMITS) -> Tuple[np.ndarray, float, float]:
    """The case's label as (stored [i, j, k] in the series' grid, slope, intercept), from a
    DICOM SEG or a NIfTI file."""
    from preprocessing import nifti
    path = files.label_path
    if is_dicom_label(path):
        from preprocessing.dicom_seg_labels import read_seg_labels
        labels = read_seg_labels(path, geometry.sop_instance_uids, geometry.shape, files.case_id)
        return labels, 1.0, 0.0
    label_img, data = nifti._load_nifti(path, files.case_id, limits)
    stored, slope, inter = nifti._read_stored(label_img, data, path, files.case_id)
    return _as_image_grid(label_img, stored, geometry, path, files.case_id), slope, inter


def check_limits(geometry: SeriesGeometry, limits: ReadLimits, where: str,
                 case_id: Optional[str]) -> None:
    """The series' voxels (2 bytes each; 4 as float32 HU when rescaling differs per slice)
    within the limits, before any pixel is decoded."""
    itemsize = 2 if len({(s.slope, s.intercept) for s in geometry.slices}) == 1 else 4
    limits.check_declared(where, geometry.shape, itemsize,
                          int(np.prod(geometry.shape, dtype=np.float64)) * itemsize, case_id)


def read_dicom_case(files: CaseFiles, timings: Optional[dict] = None,
                    limits: ReadLimits = DEFAULT_LIMITS):
    """The StoredCase of a DICOM case (nifti.read_case's DICOM half): the series checked and
    read, its NIfTI-equivalent image (the affine above; no file is written), the label."""
    from preprocessing.nifti import StoredCase, _add
    import time
    t = time.perf_counter()
    geometry = series_of(files)
    check_limits(geometry, limits, files.image_path, files.case_id)
    stored, slope, inter = read_voxels(geometry, files.case_id)
    image = nib.Nifti1Image(stored, geometry.affine)
    image.header.set_xyzt_units("mm")
    label = read_label(files, geometry, limits) if files.label_path is not None else None
    _add(timings, "read", t)
    return StoredCase(files, image, stored, slope, inter, label, dicom=geometry)


def _common_folder(paths: List[str]) -> str:
    """The deepest folder holding all `paths` (local paths or URIs)."""
    parts = [storage.dirname(p).rstrip("/").split("/") for p in paths]
    common = []
    for names in zip(*parts):
        if len(set(names)) > 1:
            break
        common.append(names[0])
    return "/".join(common)


def _series_case_ids(root: str, series: Dict[str, List]) -> Dict[str, str]:
    """A readable id per series: the folder holding its files, relative to `root` ("/" as "_";
    the root's own name for files directly in it), plus "_S<SeriesNumber>" (or the UID's end)
    where a folder holds several series."""
    root = root.rstrip("/")
    folder_of = {}
    for uid, slices in series.items():
        folder = _common_folder([s.path for s in slices])
        relative = folder[len(root):].strip("/") if folder.startswith(root) else folder
        folder_of[uid] = relative.replace("/", "_") or storage.basename(root)
    ids = {}
    for uid, slices in series.items():
        sharing = [u for u, f in folder_of.items() if f == folder_of[uid]]
        number = slices[0].series_number
        numbers = [series[u][0].series_number for u in sharing]
        suffix = "" if len(sharing) == 1 else (
            f"_S{number}" if number is not None and numbers.count(number) == 1 else f"_{uid[-8:]}")
        ids[uid] = folder_of[uid] + suffix
    return ids


def discover_dicom_series(root: str) -> Tuple[List[CaseFiles], List[CaseError]]:
    """Every series under `root` as an inference case (no label), grouped by SeriesInstanceUID
    (a series may span folders), and one CaseError per DICOM file that cannot be read."""
    headers, errors = [], []
    for path in dicom_series.dicom_files_under(root):
        try:
            headers.extend(dicom_series.slice_headers(path))
        except CaseError as e:
            if not e.reason.startswith("not a DICOM file"):
                errors.append(e)
    series = dicom_series.group_by_series(headers)
    ids = _series_case_ids(root, series)
    cases = [CaseFiles(ids[uid], _common_folder([s.path for s in slices]) or root, None,
                       series_uid=uid,
                       dicom_files=tuple(dict.fromkeys(s.path for s in slices)))
             for uid, slices in series.items()]
    return sorted(cases, key=lambda c: c.case_id), errors
