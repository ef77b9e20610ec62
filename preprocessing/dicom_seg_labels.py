"""A DICOM SEG as a label array in its CT series' voxel grid: 0 background, 1 liver, 2 tumour.

Why a module of its own: training data may come as DICOM (a CT series and a SEG drawn on it)
as well as NIfTI, and the SEG must give exactly the array a NIfTI label would, in the series'
grid [i = column, j = row, k = slice] that preprocessing/dicom_volume.py builds. The model's own
SEG output (inference/dicom_seg.py) is read back by the same code, so the two directions are
tested against each other.

- Which segment is which: its SegmentedPropertyTypeCodeSequence (SNOMED CT, or the older SNOMED
  RT "SRT" codes), never its number or label. Liver -> 1, tumour -> 2 (tumour wins where both
  are set). A segment of any other type is an error, not silently dropped.
- Which slice a frame belongs to: the SOPInstanceUID the frame is derived from (its
  DerivationImageSequence), matched against the series' slices in k order, via highdicom's
  get_pixels_by_source_instance. Slices no frame references are 0 (SEGs omit empty frames).
- FRACTIONAL SEGs are thresholded at 0.5; BINARY and LABELMAP ones are taken as they are (a
  LABELMAP's Background segment is skipped).
- A frame's pixels are [rows, columns], the source slice's layout: labels[i, j, k] = frame[j, i].
- Every fault (not a SEG, frames derived from instances outside the series, other rows/columns,
  no liver or tumour segment) is a CaseError naming the file.
- Single-frame source slices only: an Enhanced (multi-frame) CT has one SOPInstanceUID for all
  its slices, so frames would need ReferencedFrameNumber, which this reader does not map.
"""
from __future__ import annotations

import io
from typing import Dict, Iterable, Optional, Sequence, Set, Tuple

import numpy as np

from preprocessing.nifti import CaseError, _read_file

BACKGROUND, LIVER, TUMOUR = 0, 1, 2
FRACTION_THRESHOLD = 0.5
SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4",   # Segmentation Storage
                   "1.2.840.10008.5.1.4.1.1.66.7"}   # Label Map Segmentation Storage
# SegmentedPropertyType (scheme, value) -> label. The writer uses SCT 10200004 (Liver) and
# SCT 108369006 (Neoplasm, whose synonym is "Tumor"); the others are what other tools write.
PROPERTY_LABELS: Dict[Tuple[str, str], int] = {
    ("SCT", "10200004"): LIVER,      # Liver
    ("SRT", "T-62000"): LIVER,       # Liver (SNOMED RT)
    ("SCT", "108369006"): TUMOUR,    # Neoplasm / Tumor
    ("SRT", "M-80000"): TUMOUR,      # Neoplasm (SNOMED RT)
    ("SCT", "86049000"): TUMOUR,     # Malignant neoplasm, primary
    ("SRT", "M-80003"): TUMOUR,      # Malignant neoplasm, primary (SNOMED RT)
    ("SCT", "4147007"): TUMOUR,      # Mass
    ("SRT", "M-03000"): TUMOUR,      # Mass (SNOMED RT)
}
BACKGROUND_TYPE = ("DCM", "125040")  # a LABELMAP SEG's segment 0: skipped


def _load(seg_path: str, case_id: Optional[str]):
    """The file as a highdicom Segmentation, or a CaseError saying why it is not one."""
    import highdicom as hd
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        ds = pydicom.dcmread(io.BytesIO(_read_file(seg_path, case_id)))
    except (InvalidDicomError, EOFError, ValueError) as e:
        raise CaseError(seg_path, f"not a DICOM file ({e})", case_id) from e
    sop_class = str(ds.get("SOPClassUID", ""))
    if ds.get("Modality") != "SEG" or sop_class not in SEG_SOP_CLASSES:
        raise CaseError(seg_path, f"not a DICOM SEG (Modality {ds.get('Modality')!r}, "
                                  f"SOP class {sop_class or 'missing'})", case_id)
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise CaseError(seg_path, f"unreadable DICOM SEG: {e}", case_id) from e


def _segment_labels(seg, seg_path: str, case_id: Optional[str]) -> Dict[int, int]:
    """Segment number -> label (LIVER or TUMOUR), from each segment's property type."""
    found = {}
    for item in seg.get("SegmentSequence", []):
        codes = item.get("SegmentedPropertyTypeCodeSequence") or []
        key = (str(codes[0].CodingSchemeDesignator), str(codes[0].CodeValue)) if codes else None
        if key == BACKGROUND_TYPE:
            continue
        if key not in PROPERTY_LABELS:
            meaning = codes[0].get("CodeMeaning", "?") if codes else "no type code"
            raise CaseError(seg_path, f"segment {item.SegmentNumber} "
                                      f"({item.get('SegmentLabel', '')!r}) has type {key} "
                                      f"{meaning!r}: neither liver nor tumour", case_id)
        found[int(item.SegmentNumber)] = PROPERTY_LABELS[key]
    if not found:
        raise CaseError(seg_path, "no liver or tumour segment", case_id)
    return found


def _frame_sources(seg) -> Set[str]:
    """The SOPInstanceUIDs the frames are derived from (per-frame or shared groups)."""
    groups = list(seg.get("PerFrameFunctionalGroupsSequence", []))
    groups += list(seg.get("SharedFunctionalGroupsSequence", []))
    uids = set()
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uids.add(str(source.ReferencedSOPInstanceUID))
    return uids


def _check_references(seg, uids: Sequence[str], seg_path: str,
                      case_id: Optional[str]) -> None:
    """Every frame's source is one of the series' slices, and the SEG refers to the series."""
    series = set(uids)
    frames = _frame_sources(seg)
    outside = sorted(frames - series)
    if outside:
        raise CaseError(seg_path, f"frames derived from {len(outside)} instance(s) not in the "
                                  f"series, e.g. {outside[0]}", case_id)
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    if not (frames | referenced) & series:
        raise CaseError(seg_path, "references none of the series' instances", case_id)


def _check_grid(seg, uids: Sequence[str], shape: Tuple[int, int, int], seg_path: str,
                case_id: Optional[str]) -> None:
    if len(shape) != 3 or shape[2] != len(uids):
        raise ValueError(f"shape {tuple(shape)} does not fit {len(uids)} source instances")
    if len(set(uids)) != len(uids):
        raise CaseError(seg_path, "the series' slices share SOPInstanceUIDs (a multi-frame "
                                  "source): SEG frames cannot be matched to slices", case_id)
    if (int(seg.Columns), int(seg.Rows)) != (shape[0], shape[1]):
        raise CaseError(seg_path, f"frames are {seg.Columns} columns x {seg.Rows} rows, the "
                                  f"series' slices {shape[0]} x {shape[1]}", case_id)


def _masks(seg, uids: Sequence[str], numbers: Iterable[int], seg_path: str,
           case_id: Optional[str]) -> np.ndarray:
    """Boolean [k, row, column, segment] for `numbers`, in k order of `uids`."""
    try:
        pixels = seg.get_pixels_by_source_instance(
            list(uids), segment_numbers=list(numbers), ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True, skip_overlap_checks=True)
    except (ValueError, RuntimeError, KeyError, IndexError) as e:
        raise CaseError(seg_path, f"frames cannot be matched to the series' slices: {e}",
                        case_id) from e
    if pixels.dtype.kind == "f":
        return pixels >= FRACTION_THRESHOLD
    return pixels > 0


def read_seg_labels(seg_path: str, source_sop_instance_uids: Sequence[str],
                    shape: Tuple[int, int, int], case_id: Optional[str] = None) -> np.ndarray:
    """The SEG at `seg_path` as uint8 labels of `shape` = (columns, rows, slices), indexed
    [i, j, k] with k the index into `source_sop_instance_uids` (the series' slices in k order):
    0 background, 1 liver, 2 tumour. Raises CaseError (naming the file) for any fault."""
    uids = [str(u) for u in source_sop_instance_uids]
    seg = _load(seg_path, case_id)
    _check_grid(seg, uids, tuple(shape), seg_path, case_id)
    segments = _segment_labels(seg, seg_path, case_id)
    _check_references(seg, uids, seg_path, case_id)
    numbers = sorted(segments)
    masks = _masks(seg, uids, numbers, seg_path, case_id)       # [k, j, i, segment]
    labels = np.zeros(masks.shape[:3], dtype=np.uint8)
    for label in (LIVER, TUMOUR):                                # tumour last: it wins
        for index, number in enumerate(numbers):
            if segments[number] == label:
                labels[masks[..., index]] = label
    return np.ascontiguousarray(labels.transpose(2, 1, 0))     # [i, j, k]
