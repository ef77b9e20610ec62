"""DICOM CT series: finding them, reading their headers, and their geometry, checked.

A series is the set of files (or the frames of one Enhanced CT file) that share a
SeriesInstanceUID, wherever they lie under the folder given. Its geometry comes from the headers
alone, never from file names or instance numbers:

- slices sorted along the normal of ImageOrientationPatient (row x column direction cosines);
- slice spacing from the ImagePositionPatient differences along that normal (SliceThickness is
  the reconstructed thickness, often not the spacing, and is never used);
- PixelSpacing: [row spacing (between rows, down a column), column spacing];
- the affine in nibabel's convention (voxel [i = column, j = row, k = sorted slice] -> RAS mm),
  DICOM's LPS patient space with x and y negated, so the volume lands in the world space that
  nibabel gives for the same scan converted to NIfTI (tests/test_dicom_series.py).

A series that one affine cannot describe is refused with the folder and the reason, never
resampled: mixed or non-parallel orientations, gantry tilt (positions off the slice normal),
duplicate positions, a gap over GAP_FACTOR x the median spacing (missing slices), uneven
spacing, inconsistent rows / columns / pixel spacing, a modality other than CT, a single slice.
The voxels are read by preprocessing/dicom_volume.py.
"""
from __future__ import annotations

import dataclasses
import io
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from common import storage
from preprocessing.nifti import CaseError

LOG = logging.getLogger(__name__)

GAP_FACTOR = 1.5               # a step over 1.5x the median spacing: slices are missing
UNEVEN_TOLERANCE = 0.1         # steps within 10% of the median: one affine describes them
ORIENTATION_ATOL = 1e-3        # direction cosines equal to this (about 0.06 degrees)
MAX_TILT_DEGREES = 0.1         # positions this far off the slice normal: gantry tilt
SPACING_RTOL = 1e-3            # PixelSpacing equal across slices to this fraction
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
_NOT_IMAGES = {"1.2.840.10008.1.3.10"}   # DICOMDIR (Media Storage Directory)


@dataclasses.dataclass(frozen=True)
class SliceHeader:
    """What the geometry needs of one slice: a single-frame file, or one frame of a
    multi-frame file (`frame` its index)."""
    path: str
    series_uid: str
    sop_instance_uid: str
    modality: str
    orientation: Tuple[float, ...]       # ImageOrientationPatient: row then column cosines
    position: Tuple[float, float, float]  # ImagePositionPatient of the first pixel, LPS mm
    pixel_spacing: Tuple[float, float]   # (between rows, between columns) mm
    rows: int
    columns: int
    slope: float
    intercept: float
    transfer_syntax: str
    series_number: Optional[int] = None
    frame: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class SeriesGeometry:
    """A checked series: its slices in k order, the voxel grid and its affine."""
    slices: Tuple[SliceHeader, ...]
    shape: Tuple[int, int, int]          # (columns, rows, slices): [i, j, k]
    affine: np.ndarray                   # voxel -> RAS mm

    @property
    def sop_instance_uids(self) -> Tuple[str, ...]:
        return tuple(s.sop_instance_uid for s in self.slices)

    @property
    def files(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(s.path for s in self.slices))


def _dcmread(path: str, stop_before_pixels: bool = True):
    """pydicom's dataset of a local file or URI; CaseError when it is not readable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        source = path if not storage.is_uri(path) else io.BytesIO(storage.read_bytes(path))
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError as e:
        raise CaseError(path, "file not found") from e
    except InvalidDicomError as e:
        raise CaseError(path, f"not a DICOM file ({e})") from e
    except Exception as e:   # pydicom raises several types for broken files
        raise CaseError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e


def _floats(value, count: int, what: str, path: str) -> Tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise CaseError(path, f"invalid {what} {value!r}") from e
    if len(out) != count or not all(np.isfinite(out)):
        raise CaseError(path, f"invalid {what} {value!r}")
    return out


def _attribute(ds, name: str, path: str):
    value = getattr(ds, name, None)
    if value is None or value == "":
        raise CaseError(path, f"no {name} (not a CT image slice with geometry)")
    return value


def _slice_header(ds, path: str, frame: Optional[int] = None, groups=()) -> SliceHeader:
    """One slice's header; `groups`: the functional group items (per-frame, then shared) of an
    Enhanced CT frame, searched before the top level."""
    def find(sequence: str, name: str):
        for group in groups:
            items = getattr(group, sequence, None)
            if items and name in items[0]:
                return getattr(items[0], name)
        return getattr(ds, name, None)

    orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
    position = find("PlanePositionSequence", "ImagePositionPatient")
    spacing = find("PixelMeasuresSequence", "PixelSpacing")
    for name, value in (("ImageOrientationPatient", orientation),
                        ("ImagePositionPatient", position), ("PixelSpacing", spacing)):
        if value is None:
            raise CaseError(path, f"no {name} (not a CT image slice with geometry)")
    slope = find("PixelValueTransformationSequence", "RescaleSlope")
    intercept = find("PixelValueTransformationSequence", "RescaleIntercept")
    number = getattr(ds, "SeriesNumber", None)
    return SliceHeader(
        path=path, series_uid=str(_attribute(ds, "SeriesInstanceUID", path)),
        sop_instance_uid=str(_attribute(ds, "SOPInstanceUID", path)),
        modality=str(getattr(ds, "Modality", "") or ""),
        orientation=_floats(orientation, 6, "ImageOrientationPatient", path),
        position=_floats(position, 3, "ImagePositionPatient", path),
        pixel_spacing=_floats(spacing, 2, "PixelSpacing", path),
        rows=int(_attribute(ds, "Rows", path)), columns=int(_attribute(ds, "Columns", path)),
        slope=float(1.0 if slope in (None, "") else slope),
        intercept=float(0.0 if intercept in (None, "") else intercept),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        series_number=int(number) if number not in (None, "") else None, frame=frame)


def slice_headers(path: str) -> List[SliceHeader]:
    """The slices of one DICOM file: one, or one per frame of an Enhanced (multi-frame) CT.
    CaseError when it is not a readable DICOM image with geometry."""
    ds = _dcmread(path)
    if str(getattr(ds, "SOPClassUID", "")) in _NOT_IMAGES:
        return []
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        return [_slice_header(ds, path)]
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None) or [None]
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
    if len(per_frame) != frames:
        raise CaseError(path, f"{frames} frames but {len(per_frame)} per-frame groups")
    return [_slice_header(ds, path, f, [g for g in (per_frame[f], shared[0]) if g is not None])
            for f in range(frames)]


def dicom_files_under(root: str) -> List[str]:
    """Every file under `root` (recursive), sorted: which are DICOM is told by reading them."""
    if not storage.isdir(root):
        return [root]
    found = []
    for name in sorted(storage.listdir(root)):
        path = storage.join(root, name)
        found.extend(dicom_files_under(path) if storage.isdir(path) else [path])
    return found


def read_all_headers(paths: Sequence[str]) -> Tuple[List[SliceHeader], List[str]]:
    """(the slices of every readable DICOM image among `paths`, the paths that are not DICOM).
    A file that is DICOM but broken raises CaseError naming it."""
    headers, skipped = [], []
    for path in paths:
        try:
            headers.extend(slice_headers(path))
        except CaseError as e:
            if not e.reason.startswith("not a DICOM file"):
                raise
            skipped.append(path)
    return headers, skipped


def group_by_series(headers: Sequence[SliceHeader]) -> Dict[str, List[SliceHeader]]:
    """Slices by SeriesInstanceUID, in the order first seen."""
    series: Dict[str, List[SliceHeader]] = {}
    for h in headers:
        series.setdefault(h.series_uid, []).append(h)
    return series


def _check_consistent(slices: Sequence[SliceHeader], where: str) -> np.ndarray:
    """Same modality (CT), size, pixel spacing and orientation on every slice; returns the
    orientation's (row, column, normal) directions as rows of a 3x3 array."""
    first = slices[0]
    if first.modality != "CT":
        raise CaseError(where, f"modality {first.modality or 'missing'}, not CT")
    for s in slices:
        if s.modality != first.modality:
            raise CaseError(where, f"mixed series: modality {s.modality} in {s.path}")
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise CaseError(where, f"inconsistent rows or columns: {s.rows}x{s.columns} in "
                                   f"{s.path}, {first.rows}x{first.columns} in {first.path}")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=SPACING_RTOL):
            raise CaseError(where, f"inconsistent PixelSpacing {s.pixel_spacing} in {s.path}, "
                                   f"{first.pixel_spacing} in {first.path}")
        if not np.allclose(s.orientation, first.orientation, atol=ORIENTATION_ATOL):
            raise CaseError(where, f"non-parallel slices: orientation {s.orientation} in "
                                   f"{s.path}, {first.orientation} in {first.path}")
    row, column = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    if (abs(np.linalg.norm(row) - 1) > ORIENTATION_ATOL
            or abs(np.linalg.norm(column) - 1) > ORIENTATION_ATOL
            or abs(row @ column) > ORIENTATION_ATOL):
        raise CaseError(where, f"invalid ImageOrientationPatient {first.orientation} (not two "
                               "orthogonal unit vectors)")
    return np.stack([row, column, np.cross(row, column)])


def _check_steps(distances: np.ndarray, sorted_slices: Sequence[SliceHeader], where: str
                 ) -> float:
    """The median spacing along the normal, after the checks for duplicates, gaps and uneven
    steps."""
    steps = np.diff(distances)
    median = float(np.median(steps))
    if median <= 0 or steps.min() < 1e-3 * median:
        k = int(np.argmin(steps))
        raise CaseError(where, "mixed series: two slices at the same position "
                               f"({sorted_slices[k].path}, {sorted_slices[k + 1].path})")
    k = int(np.argmax(steps))
    if steps[k] > GAP_FACTOR * median:
        raise CaseError(where, f"missing slices: a gap of {steps[k]:.3g} mm after "
                               f"{sorted_slices[k].path} (median spacing {median:.3g} mm)")
    if np.abs(steps - median).max() > UNEVEN_TOLERANCE * median:
        raise CaseError(where, f"uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} "
                               "mm): one affine cannot describe it, and it is not resampled")
    return median


def series_geometry(slices: Sequence[SliceHeader], where: str) -> SeriesGeometry:
    """The checked geometry of one series' slices (module docstring). `where` names the series
    (its folder) in every error."""
    if len(slices) < 2:
        raise CaseError(where, f"{len(slices)} slice(s): a volume needs at least 2")
    directions = _check_consistent(slices, where)
    normal = directions[2]
    distances = np.array([np.dot(s.position, normal) for s in slices])
    order = np.argsort(distances, kind="stable")
    ordered = [slices[i] for i in order]
    distances = distances[order]
    _check_steps(distances, ordered, where)
    first, last = np.asarray(ordered[0].position), np.asarray(ordered[-1].position)
    along = distances[-1] - distances[0]
    in_plane = np.array([np.asarray(s.position) - first - (d - distances[0]) * normal
                         for s, d in zip(ordered, distances)])
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(in_plane, axis=1).max(), along)))
    if tilt > MAX_TILT_DEGREES:
        raise CaseError(where, f"gantry tilt or sheared slices: positions {tilt:.2f} degrees "
                               "off the slice normal (not resampled)")
    row_spacing, column_spacing = ordered[0].pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = directions[0] * column_spacing     # i: along a row (column index)
    lps[:3, 1] = directions[1] * row_spacing        # j: down a column (row index)
    lps[:3, 2] = (last - first) / (len(ordered) - 1)
    lps[:3, 3] = first
    affine = np.eye(4)
    affine[:3, :] = LPS_TO_RAS @ lps[:3, :]
    return SeriesGeometry(tuple(ordered), (ordered[0].columns, ordered[0].rows, len(ordered)),
                          affine)
