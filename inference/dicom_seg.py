"""The predicted mask as a DICOM Segmentation (SEG) of the CT series it was predicted from, so a
PACS or viewer shows it over the scan it belongs to, with the model that made it recorded.

- Grid: `labels` [i = column, j = row, k = slice] in the series' own voxel grid (as
  preprocessing/dicom_volume.py reads it); slice k's frame is labels[:, :, k].T, [rows, columns]
  like the source slice's pixels. Each frame is derived from (references) its slice's
  SOPInstanceUID; slices are matched to datasets by SOPInstanceUID, never by file order.
- Segments: 1 liver (labels >= 1: the liver including its tumours), SNOMED CT category
  Anatomical Structure (91723000), type Liver (10200004); 2 tumour (labels == 2), category
  Morphologically Abnormal Structure (49755003), type Neoplasm (108369006), only for
  num_classes >= 3. preprocessing/dicom_seg_labels.py reads these codes back to 1 and 2.
- BINARY (1 bit a pixel, uncompressed: highdicom refuses RLE and JPEG-LS for BINARY) or
  FRACTIONAL (the softmax probabilities: liver = p[1] + p[2], tumour = p[2], 8 bits,
  optionally RLE lossless). Empty frames are omitted (highdicom's default).
- The algorithm (name, version, model id) goes into every segment's
  SegmentationAlgorithmIdentificationSequence and the equipment attributes.
- Written whole through common/storage.py: a temporary name then a rename locally (a reader
  never sees half a file), the object directly on gs:// or s3://.
- Single-frame source slices only (an Enhanced CT's frames share one SOPInstanceUID).
"""
from __future__ import annotations

import dataclasses
import io
from typing import List, Optional, Sequence

import numpy as np

from common import storage

SEG_SUFFIX = "_seg.dcm"
MANUFACTURER = "unet3plus-tfx"
SERIES_DESCRIPTION = "UNet 3+ liver/tumour"
DEFAULT_SERIES_NUMBER = 900
SERIES_NUMBER_OFFSET = 1000      # the SEG's series number: the source's + this, when it has one
DEVICE_SERIAL_NUMBER = "0"
SEGMENTATION_TYPES = ("binary", "fractional")


@dataclasses.dataclass(frozen=True)
class AlgorithmInfo:
    """The model that made the mask: its name, version, and id (e.g. the model folder's
    name)."""
    name: str
    version: str
    model_id: str


def _read_header(path: str):
    """A source slice's dataset without its pixels (highdicom needs only the header)."""
    import pydicom
    if storage.is_uri(path):
        return pydicom.dcmread(io.BytesIO(storage.read_bytes(path)), stop_before_pixels=True)
    return pydicom.dcmread(path, stop_before_pixels=True)


def _source_datasets(source_files: Sequence[str], uids: Optional[Sequence[str]],
                     shape: Sequence[int]) -> List:
    """The source slices' datasets in k order: by SOPInstanceUID when `uids` is given (files
    in any order), else the files' own order. Checks each slice's rows and columns."""
    datasets = [_read_header(p) for p in source_files]
    if uids is not None:
        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        missing = [u for u in uids if str(u) not in by_uid]
        if missing:
            raise ValueError(f"{len(missing)} source instance(s) not among the source files, "
                             f"e.g. {missing[0]}")
        datasets = [by_uid[str(u)] for u in uids]
    if len(datasets) != shape[2]:
        raise ValueError(f"labels have {shape[2]} slices, the source {len(datasets)}")
    if len({str(ds.SOPInstanceUID) for ds in datasets}) != len(datasets):
        raise ValueError("source slices share SOPInstanceUIDs (multi-frame or duplicated "
                         "instances): not supported")
    for ds in datasets:
        if (int(ds.Columns), int(ds.Rows)) != (shape[0], shape[1]):
            raise ValueError(f"labels are {shape[0]} x {shape[1]} (columns x rows), instance "
                             f"{ds.SOPInstanceUID} is {ds.Columns} x {ds.Rows}")
    return datasets


def _segment_descriptions(num_classes: int, algorithm: AlgorithmInfo) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version,
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"model_id": algorithm.model_id})
    kinds = [("liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver),
             ("tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm)]
    return [hd.seg.SegmentDescription(
        segment_number=n, segment_label=label, segmented_property_category=category,
        segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification)
        for n, (label, category, kind) in enumerate(kinds[:num_classes - 1], start=1)]


def _segment_pixels(labels: np.ndarray, probabilities: Optional[np.ndarray], num_classes: int,
                    segmentation_type: str) -> np.ndarray:
    """[k, row, column, segment]: bool masks (binary) or float32 fractions (fractional)."""
    if segmentation_type == "binary":
        planes = [labels >= 1] + [labels == 2] * (num_classes > 2)
    else:
        if probabilities is None:
            raise ValueError("a fractional SEG needs the probabilities")
        p = np.asarray(probabilities, dtype=np.float32)
        if p.shape != labels.shape + (num_classes,):
            raise ValueError(f"probabilities have shape {p.shape}, expected "
                             f"{labels.shape + (num_classes,)}")
        planes = [np.clip(p[..., 1:].sum(axis=-1), 0.0, 1.0)]
        if num_classes > 2:
            planes.append(p[..., 2])
    return np.ascontiguousarray(np.stack(planes, axis=-1).transpose(2, 1, 0, 3))


def _check_arguments(labels: np.ndarray, num_classes: int, segmentation_type: str) -> None:
    if segmentation_type not in SEGMENTATION_TYPES:
        raise ValueError(f"segmentation_type {segmentation_type!r}: one of {SEGMENTATION_TYPES}")
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes {num_classes}: 2 (liver) or 3 (liver, tumour)")
    if labels.ndim != 3:
        raise ValueError(f"labels must be [columns, rows, slices], got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")


def _series_number(source) -> int:
    number = source.get("SeriesNumber")
    return int(number) + SERIES_NUMBER_OFFSET if number not in (None, "") else \
        DEFAULT_SERIES_NUMBER


def write_seg(labels: np.ndarray, source_files: Sequence[str], output_path: str, *,
              num_classes: int, algorithm: AlgorithmInfo,
              probabilities: Optional[np.ndarray] = None, segmentation_type: str = "binary",
              source_sop_instance_uids: Optional[Sequence[str]] = None,
              compressed: bool = False) -> None:
    """Writes `labels` (uint8 [columns, rows, slices] in the source series' grid) as a DICOM
    SEG at `output_path` (a local path or URI).

    k is the order of `source_sop_instance_uids` when given (`source_files` then only has to
    hold those instances, in any order), else the order of `source_files` (one slice a file).
    `segmentation_type` "binary" or "fractional" (from `probabilities`, float
    [columns, rows, slices, num_classes]). `compressed`: RLE lossless for a fractional SEG
    (a binary one is 1 bit a pixel and stays uncompressed)."""
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless
    labels = np.asarray(labels)
    _check_arguments(labels, num_classes, segmentation_type)
    sources = _source_datasets(source_files, source_sop_instance_uids, labels.shape)
    pixels = _segment_pixels(labels, probabilities, num_classes, segmentation_type)
    fractional = segmentation_type == "fractional"
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
        else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(num_classes, algorithm),
        series_instance_uid=hd.UID(), series_number=_series_number(sources[0]),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description=f"{algorithm.name} {algorithm.version} {algorithm.model_id}"[:64],
        transfer_syntax_uid=RLELossless if compressed and fractional
        else ExplicitVRLittleEndian,
        series_description=SERIES_DESCRIPTION)
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    storage.write_bytes(output_path, buffer.getvalue())
