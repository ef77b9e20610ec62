"""Writing DICOM CT series with known answers, for the DICOM tests.

`write_series(folder, hu, affine)` writes the voxel grid `hu` [i, j, k] with the NIfTI affine
`affine` (voxel -> RAS mm) as one CT series: slice k is one file, its pixel rows along j and
columns along i, ImageOrientationPatient / ImagePositionPatient / PixelSpacing from the affine
(DICOM's patient space is LPS: x and y negated). The same (array, affine) written as NIfTI is the
answer a DICOM reader must give. Acquisitions are made by `reorient`, which changes how a grid is
stored without moving it in the world (axial head-first / feet-first, sagittal, coronal), or by a
rotated affine (oblique). Keyword arguments make the faults a reader must catch.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless,
                         MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid)

LPS = np.diag([-1.0, -1.0, 1.0])   # RAS <-> LPS (its own inverse)


def reorient(array: np.ndarray, affine: np.ndarray, order: Sequence[int],
             flips: Sequence[bool]) -> Tuple[np.ndarray, np.ndarray]:
    """The same world data stored another way: axes permuted by `order` (new axis a is old axis
    order[a]), then the new axes flagged in `flips` reversed. Returns (array, affine)."""
    out = np.transpose(array, order)
    new = np.eye(4)
    new[:, :3] = affine[:, list(order)]
    new[:, 3] = affine[:, 3]
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
            new[:, 3] = new[:, 3] + new[:, axis] * (out.shape[axis] - 1)
            new[:, axis] = -new[:, axis]
    return np.ascontiguousarray(out), new


def rotation_affine(shape, spacing, degrees: float, axis: int = 0) -> np.ndarray:
    """An oblique affine: the grid rotated by `degrees` about world `axis`, centred at 0."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    a, b = [x for x in range(3) if x != axis]
    rot = np.eye(3)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def _base_dataset(modality: str, uids: dict, rows: int, columns: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.Modality = modality
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "PHANTOM-1"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.StudyID = "1"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "unet3plus-tfx tests"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PositionReferenceIndicator = ""
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleType = "HU"
    ds.KVP = "120"
    return ds


def write_series(folder: str, hu: np.ndarray, affine: np.ndarray, *, slope: float = 1.0,
                 intercept: float = -1024.0, reverse_instances: bool = False,
                 modality: str = "CT", split: int = 1, compressed: bool = False,
                 series_uid: Optional[str] = None, series_number: int = 1,
                 drop_slices: Sequence[int] = (), tilt_mm_per_slice: float = 0.0,
                 tilt_slice: Optional[int] = None, other_size_slice: Optional[int] = None,
                 transfer_syntax: Optional[str] = None, duplicate_slice: Optional[int] = None,
                 study_uid: Optional[str] = None, prefix: str = "IM") -> list:
    """Writes `hu` [i, j, k] (HU) with `affine` as a DICOM CT series in `folder` (made if
    missing); returns the files written, in slice order k.

    Stored values are round((hu - intercept) / slope) as int16. Instance numbers follow k, or
    run backwards with `reverse_instances`. `split` > 1 spreads the files over that many
    sub-folders of `folder` (part-0, part-1, ...), round robin. `compressed`: JPEG-LS lossless.
    Faults: `drop_slices` (a gap), `tilt_mm_per_slice` (positions sheared off the slice normal:
    gantry tilt), `tilt_slice` (that slice's orientation turned by 10 degrees: non-parallel),
    `other_size_slice` (that slice one column narrower), `transfer_syntax` (declared, data left
    as is: undecodable when compressed), `duplicate_slice` (written twice with its own UID)."""
    affine = np.asarray(affine, dtype=float)
    lps = LPS @ affine[:3, :3]
    origin = LPS @ affine[:3, 3]
    row_dir = lps[:, 0] / np.linalg.norm(lps[:, 0])     # along a row: column index i grows
    col_dir = lps[:, 1] / np.linalg.norm(lps[:, 1])     # down a column: row index j grows
    spacing = [float(np.linalg.norm(lps[:, 1])), float(np.linalg.norm(lps[:, 0]))]
    normal = np.cross(row_dir, col_dir)
    uids = {"study": study_uid or generate_uid(), "series": series_uid or generate_uid(),
            "frame": generate_uid()}
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    stored = np.clip(stored, -32768, 32767).astype(np.int16)
    depth = stored.shape[2]
    written = []
    slices = [k for k in range(depth) if k not in set(drop_slices)]
    if duplicate_slice is not None:
        slices.append(duplicate_slice)
    for n, k in enumerate(slices):
        pixels = np.ascontiguousarray(stored[:, :, k].T)      # [rows = j, columns = i]
        orientation = (row_dir, col_dir)
        if tilt_slice == k:
            turn = rotation_affine((1, 1, 1), (1, 1, 1), 10.0, axis=2)[:3, :3]
            orientation = (turn @ row_dir, turn @ col_dir)
        if other_size_slice == k:
            pixels = np.ascontiguousarray(pixels[:, :-1])
        ds = _base_dataset(modality, uids, *pixels.shape)
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesNumber = series_number
        ds.InstanceNumber = (depth - k) if reverse_instances else (k + 1)
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in np.concatenate(orientation)]
        position = origin + lps[:, 2] * k + col_dir * tilt_mm_per_slice * k   # sheared
        ds.ImagePositionPatient = [f"{v:.10g}" for v in position]
        ds.PixelSpacing = [f"{v:.10g}" for v in spacing]
        ds.SliceThickness = f"{float(np.linalg.norm(lps[:, 2])) * 2:.6g}"  # wrong on purpose
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{intercept:.10g}"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if compressed:
            ds.compress(JPEGLSLossless, pixels)
        else:
            ds.PixelData = pixels.tobytes()
        if transfer_syntax is not None:   # raw pixels encapsulated as if compressed
            ds.file_meta.TransferSyntaxUID = transfer_syntax
            ds.PixelData = encapsulate([pixels.tobytes()])
            ds["PixelData"].VR = "OB"
        sub = folder if split <= 1 else os.path.join(folder, f"part-{n % split}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"{prefix}{n:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
