"""DICOM SEG out (inference/dicom_seg.py) and in (preprocessing/dicom_seg_labels.py): a small
CT series with a liver and a tumour in it, written as a SEG and read back, both by pydicom's
plain attributes (what a viewer sees) and by read_seg_labels (what training reads)."""
from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest

from inference.dicom_seg import SEG_SUFFIX, AlgorithmInfo, write_seg
from preprocessing.dicom_seg_labels import read_seg_labels
from preprocessing.nifti import CaseError
from dicom_helpers import write_series

SHAPE = (24, 20, 6)        # columns, rows, slices: i, j, k
ALGORITHM = AlgorithmInfo(name="unet3plus", version="1.2.3", model_id="model-0007")
LIVER_CODE, TUMOUR_CODE = "10200004", "108369006"


def _labels() -> np.ndarray:
    """A liver over slices 1..4, asymmetric in i and j (a swapped axis shows), with a tumour
    inside it on slices 2..3; slice 0 and 5 empty (frames omitted)."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[3:15, 4:11, 1:5] = 1
    labels[2, 4, 1] = 1                      # a corner voxel: i/j swaps break it
    labels[5:8, 6:8, 2:4] = 2
    labels[6, 9, 3] = 2
    return labels


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(folder, source files in k order, SOPInstanceUIDs in k order, labels, series UID)."""
    folder = tmp_path_factory.mktemp("dicom_seg")
    rng = np.random.default_rng(0)
    hu = rng.integers(-200, 300, size=SHAPE).astype(float)
    files = write_series(str(folder / "ct"), hu, np.diag([0.8, 0.7, 2.5, 1.0]))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = [str(h.SOPInstanceUID) for h in headers]
    return folder, files, uids, _labels(), str(headers[0].SeriesInstanceUID)


@pytest.fixture(scope="module")
def binary_seg(case):
    folder, files, _, labels, _ = case
    path = str(folder / ("case" + SEG_SUFFIX))
    write_seg(labels, files, path, num_classes=3, algorithm=ALGORITHM)
    return path


def _type_code(item) -> str:
    return str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue)


def test_seg_attributes(case, binary_seg):
    _, _, uids, _, series_uid = case
    ds = pydicom.dcmread(binary_seg)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert [_type_code(s) for s in ds.SegmentSequence] == [LIVER_CODE, TUMOUR_CODE]
    assert [s.SegmentNumber for s in ds.SegmentSequence] == [1, 2]
    for segment in ds.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == ALGORITHM.name
        assert algorithm.AlgorithmVersion == ALGORITHM.version
        assert ALGORITHM.model_id in algorithm.AlgorithmParameters
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == series_uid
    assert sorted(r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence) == \
        sorted(uids)
    assert ds.ManufacturerModelName == ALGORITHM.name
    assert ds.SeriesInstanceUID != series_uid
    leftovers = [n for n in os.listdir(os.path.dirname(binary_seg)) if ".tmp-" in n]
    assert not leftovers                     # written under a temporary name, then renamed


def test_frames_reference_their_slices(case, binary_seg):
    """Each stored frame equals the mask of the slice its DerivationImageSequence names."""
    _, _, uids, labels, _ = case
    ds = pydicom.dcmread(binary_seg)
    frames = ds.pixel_array.reshape(-1, SHAPE[1], SHAPE[0])
    assert len(frames) == int(ds.NumberOfFrames) == 4 + 2     # empty slices' frames omitted
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        k = uids.index(source.ReferencedSOPInstanceUID)
        segment = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        expected = labels[:, :, k] >= 1 if segment == 1 else labels[:, :, k] == 2
        np.testing.assert_array_equal(frame, expected.T)


def test_binary_round_trip(case, binary_seg):
    _, _, uids, labels, _ = case
    read = read_seg_labels(binary_seg, uids, SHAPE, "c1")
    assert read.dtype == np.uint8 and read.shape == SHAPE
    np.testing.assert_array_equal(read, labels)


def test_instances_out_of_k_order(tmp_path, case):
    """Files whose InstanceNumbers run against k, handed over in InstanceNumber order: the
    SOPInstanceUIDs in k order put every frame on its slice."""
    _, _, _, labels, _ = case
    files = write_series(str(tmp_path / "ct"), np.zeros(SHAPE), np.eye(4),
                         reverse_instances=True)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    by_instance = sorted(files, key=lambda f: int(pydicom.dcmread(f).InstanceNumber))
    assert by_instance == files[::-1]
    path = str(tmp_path / "reversed_seg.dcm")
    write_seg(labels, by_instance, path, num_classes=3, algorithm=ALGORITHM,
              source_sop_instance_uids=uids)
    np.testing.assert_array_equal(read_seg_labels(path, uids, SHAPE), labels)
    with pytest.raises(ValueError, match="not among the source files"):
        write_seg(labels, by_instance[1:], path, num_classes=3, algorithm=ALGORITHM,
                  source_sop_instance_uids=uids)


@pytest.mark.parametrize("compressed", [False, True])
def test_fractional_round_trip(tmp_path, case, compressed):
    _, files, uids, labels, _ = case
    probabilities = np.eye(3, dtype=np.float32)[labels] * 0.8 + 0.2 / 3   # one-hot-ish
    path = str(tmp_path / "fractional_seg.dcm")
    write_seg(labels, files, path, num_classes=3, algorithm=ALGORITHM,
              probabilities=probabilities, segmentation_type="fractional",
              compressed=compressed)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SegmentationType == "FRACTIONAL"
    assert (ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless) == compressed
    np.testing.assert_array_equal(read_seg_labels(path, uids, SHAPE), labels)
    with pytest.raises(ValueError, match="probabilities"):
        write_seg(labels, files, path, num_classes=3, algorithm=ALGORITHM,
                  segmentation_type="fractional")


@pytest.mark.parametrize("segmentation_type", ["binary", "fractional"])
def test_liver_only(tmp_path, case, segmentation_type):
    _, files, uids, labels, _ = case
    liver = (labels >= 1).astype(np.uint8)
    probabilities = np.eye(2, dtype=np.float32)[liver] * 0.9 + 0.05
    path = str(tmp_path / "liver_seg.dcm")
    write_seg(liver, files, path, num_classes=2, algorithm=ALGORITHM,
              probabilities=probabilities, segmentation_type=segmentation_type)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert [_type_code(s) for s in ds.SegmentSequence] == [LIVER_CODE]
    np.testing.assert_array_equal(read_seg_labels(path, uids, SHAPE), liver)
    with pytest.raises(ValueError, match="labels outside"):
        write_seg(labels, files, path, num_classes=2, algorithm=ALGORITHM)


def test_read_errors(tmp_path, case, binary_seg):
    _, files, uids, _, _ = case
    other = write_series(str(tmp_path / "other"), np.zeros(SHAPE), np.eye(4))
    other_uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                  for f in other]
    with pytest.raises(CaseError, match="not in the series") as e:
        read_seg_labels(binary_seg, other_uids, SHAPE, "c2")
    assert e.value.path == binary_seg and e.value.case_id == "c2"
    with pytest.raises(CaseError, match="not a DICOM SEG") as e:
        read_seg_labels(files[0], uids, SHAPE)
    assert e.value.path == files[0]
    with pytest.raises(CaseError, match="columns"):
        read_seg_labels(binary_seg, uids, (SHAPE[1], SHAPE[0], SHAPE[2]))


def _other_tools_seg(path: str, files, pixels: np.ndarray, seg_type: str, segments) -> str:
    """A SEG as another tool writes it: highdicom directly, manual segments."""
    import highdicom as hd
    sources = [pydicom.dcmread(f) for f in files]
    descriptions = [hd.seg.SegmentDescription(n, label, category, kind, "MANUAL")
                    for n, (label, category, kind) in enumerate(segments, start=1)]
    seg = hd.seg.Segmentation(sources, pixels, seg_type, descriptions, hd.UID(), 5, hd.UID(), 1,
                              "tests", "tests", "0", "0")
    seg.save_as(path)
    return path


def test_unknown_segment(tmp_path, case):
    """A SEG with a segment that is neither liver nor tumour is refused, not half read."""
    from pydicom.sr.codedict import codes
    _, files, uids, labels, _ = case
    path = _other_tools_seg(str(tmp_path / "spleen_seg.dcm"), files,
                            (labels >= 1).transpose(2, 1, 0), "BINARY",
                            [("spleen", codes.SCT.Organ, codes.SCT.Spleen)])
    with pytest.raises(CaseError, match="neither liver nor tumour"):
        read_seg_labels(path, uids, SHAPE)


def test_labelmap_seg(tmp_path, case):
    """A LABELMAP SEG (one frame a slice, pixel value = segment; its Background segment 0
    skipped) reads as the same labels."""
    from pydicom.sr.codedict import codes
    _, files, uids, labels, _ = case
    path = _other_tools_seg(
        str(tmp_path / "labelmap_seg.dcm"), files, labels.transpose(2, 1, 0), "LABELMAP",
        [("liver", codes.SCT.Organ, codes.SCT.Liver),
         ("tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm)])
    np.testing.assert_array_equal(read_seg_labels(path, uids, SHAPE), labels)
