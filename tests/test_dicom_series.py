"""DICOM series in, with known answers: the phantom written as DICOM in several acquisitions
(tests/dicom_helpers.py) must read as the same (array, affine) written as NIfTI gives: the same
canonical affine (1e-3 mm), HU within 1, the same labels. Bad series each get one CaseError
naming the folder (or file) and the reason; discovery groups files by series."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from dicom_helpers import reorient, rotation_affine, write_series
from preprocessing.dicom_volume import discover_dicom_series
from preprocessing.nifti import CaseError, CaseFiles, load_case
from preprocessing.synthetic_ct import generate_case

PHANTOM = generate_case(1, in_plane=32, slices_range=(8, 9), orientation="RAS", scaling="none")
HU = np.asarray(PHANTOM.volume, dtype=np.int16)
LABELS = np.asarray(PHANTOM.segmentation, dtype=np.uint8)
AFFINE = PHANTOM.affine


def _nifti(folder, name, array, affine, labels=None):
    os.makedirs(folder, exist_ok=True)
    image = os.path.join(folder, f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(array, affine), image)
    label = None
    if labels is not None:
        label = os.path.join(folder, f"{name}-seg.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), label)
    return CaseFiles(name, image, label)


def _same_case(dicom_case, nifti_case, hu_atol=1.0):
    np.testing.assert_allclose(dicom_case.affine, nifti_case.affine, atol=1e-3)
    assert dicom_case.hu.shape == nifti_case.hu.shape
    assert np.abs(dicom_case.hu - nifti_case.hu).max() <= hu_atol
    if nifti_case.labels is not None:
        np.testing.assert_array_equal(dicom_case.labels, nifti_case.labels)


# (order, flips): how a scanner stores the phantom's RAS grid. Axial DICOM runs columns R->L and
# rows A->P; head-first and feet-first differ in the slice direction; sagittal and coronal
# slices run rows head -> feet.
ACQUISITIONS = {
    "axial_head_first": ((0, 1, 2), (True, True, False)),
    "axial_feet_first": ((0, 1, 2), (True, True, True)),
    "sagittal": ((1, 2, 0), (True, True, False)),
    "coronal": ((0, 2, 1), (True, True, False)),
}


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
def test_acquisitions_read_as_their_nifti(tmp_path, name):
    order, flips = ACQUISITIONS[name]
    array, affine = reorient(HU, AFFINE, order, flips)
    write_series(str(tmp_path / "series"), array, affine)
    # The label as a converter's NIfTI in RAS order: reoriented to the series' grid on reading.
    label = _nifti(tmp_path, "label", LABELS, AFFINE).image_path
    dicom = load_case(CaseFiles(name, str(tmp_path / "series"), label))
    _same_case(dicom, load_case(_nifti(tmp_path, "reference", HU, AFFINE, LABELS)))
    assert dicom.source_shape == array.shape and dicom.dicom.shape == array.shape
    # The series' own grid: as written, or with k reversed (slices are sorted along the
    # normal of the orientation, whatever order the scanner stored them in).
    _, k_reversed = reorient(array, affine, (0, 1, 2), (False, False, True))
    assert any(np.allclose(dicom.source_affine, a, atol=1e-3) for a in (affine, k_reversed))


@pytest.mark.parametrize("variant", ["reversed_instances", "slope_half", "slope_two",
                                     "split_folders", "jpeg_ls", "oblique"])
def test_variants_read_as_their_nifti(tmp_path, variant):
    array, affine = reorient(HU, AFFINE, (0, 1, 2), (True, True, False))
    kwargs = {"reversed_instances": dict(reverse_instances=True),
              "slope_half": dict(slope=0.5, intercept=-1000.0),
              "slope_two": dict(slope=2.0),
              "split_folders": dict(split=2),
              "jpeg_ls": dict(compressed=True)}.get(variant, {})
    if variant == "oblique":
        affine = rotation_affine(array.shape, (0.8, 0.8, 2.5), 20.0, axis=0)
    files = write_series(str(tmp_path / "series"), array, affine, **kwargs)
    if variant == "split_folders":
        assert len({os.path.dirname(f) for f in files}) == 2
    labels, _ = reorient(LABELS, AFFINE, (0, 1, 2), (True, True, False))
    label = _nifti(tmp_path, "label", labels, affine).image_path
    dicom = load_case(CaseFiles(variant, str(tmp_path / "series"), label))
    _same_case(dicom, load_case(_nifti(tmp_path, "reference", array, affine, labels)),
               hu_atol=1.0 if variant == "slope_two" else 0.5)
    # Spacing along the slices from the positions, not SliceThickness (written as twice it).
    assert dicom.spacing == pytest.approx(load_case(
        _nifti(tmp_path, "reference", array, affine)).spacing, abs=1e-4)


def test_mask_in_another_grid_is_refused(tmp_path):
    write_series(str(tmp_path / "series"), HU, AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    label = _nifti(tmp_path, "label", LABELS, shifted).image_path
    with pytest.raises(CaseError, match="affine differs from the series"):
        load_case(CaseFiles("c", str(tmp_path / "series"), label))
    short = _nifti(tmp_path, "short", LABELS[:, :, :-1], AFFINE).image_path
    with pytest.raises(CaseError, match="does not fit the series"):
        load_case(CaseFiles("c", str(tmp_path / "series"), short))


# fault -> (write_series arguments, what the reason must say)
FAULTS = {
    "gap": (dict(drop_slices=(4,)), "missing slices: a gap of"),
    "gantry_tilt": (dict(tilt_mm_per_slice=0.5), "gantry tilt"),
    "non_parallel": (dict(tilt_slice=3), "non-parallel slices"),
    "mr": (dict(modality="MR"), "modality MR, not CT"),
    "other_size": (dict(other_size_slice=2), "inconsistent rows or columns"),
    "duplicate": (dict(duplicate_slice=2), "mixed series: two slices at the same position"),
    "undecodable": (dict(transfer_syntax=JPEG2000Lossless), "cannot decode the pixel data"),
    "one_slice": (dict(drop_slices=range(1, 9)), "a volume needs at least 2"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_bad_series_are_refused_with_folder_and_reason(tmp_path, fault):
    kwargs, reason = FAULTS[fault]
    folder = str(tmp_path / f"bad-{fault}")
    write_series(folder, HU, AFFINE, **kwargs)
    with pytest.raises(CaseError) as info:
        load_case(CaseFiles(fault, folder, None))
    assert reason in info.value.reason
    assert folder in str(info.value)
    assert info.value.case_id == fault


def test_a_folder_with_two_series_needs_a_series_uid(tmp_path):
    folder = str(tmp_path / "two")
    write_series(folder, HU, AFFINE, series_uid="1.2.3.1", prefix="A")
    write_series(folder, HU[::-1], AFFINE, series_uid="1.2.3.2", series_number=2, prefix="B")
    with pytest.raises(CaseError, match="holds 2 series"):
        load_case(CaseFiles("c", folder, None))
    second = load_case(CaseFiles("c", folder, None, series_uid="1.2.3.2"))
    reference = load_case(_nifti(tmp_path, "ref", HU[::-1].copy(), AFFINE))
    _same_case(second, reference)


def test_discovery_groups_files_by_series(tmp_path):
    root = tmp_path / "pacs"
    write_series(str(root / "study" / "ct"), HU, AFFINE, split=2, series_uid="1.2.9.1")
    write_series(str(root / "mixed"), HU, AFFINE, series_uid="1.2.9.2", prefix="A")
    write_series(str(root / "mixed"), HU, AFFINE, series_uid="1.2.9.3", series_number=7,
                 prefix="B")
    (root / "mixed" / "README.txt").write_text("not DICOM")
    (root / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    cases, errors = discover_dicom_series(str(root))
    by_uid = {c.series_uid: c for c in cases}
    assert set(by_uid) == {"1.2.9.1", "1.2.9.2", "1.2.9.3"}
    assert len(by_uid["1.2.9.1"].dicom_files) == HU.shape[2]   # across part-0 and part-1
    assert by_uid["1.2.9.3"].case_id == "mixed_S7"
    assert len({c.case_id for c in cases}) == 3
    assert [os.path.basename(e.path) for e in errors] == ["broken.dcm"]
    _same_case(load_case(by_uid["1.2.9.1"]), load_case(_nifti(tmp_path, "ref", HU, AFFINE)))


@pytest.mark.parametrize("name", ["axial_feet_first", "sagittal", "oblique"])
def test_world_space_agrees_with_highdicom(tmp_path, name):
    """An independent reader: highdicom's volume of the same files, as nibabel gives it."""
    import highdicom as hd
    import pydicom
    order, flips = ACQUISITIONS.get(name, ((0, 1, 2), (True, True, False)))
    array, affine = reorient(HU, AFFINE, order, flips)
    if name == "oblique":
        affine = rotation_affine(array.shape, (0.8, 0.8, 2.5), -15.0, axis=1)
    files = write_series(str(tmp_path / "series"), array, affine, reverse_instances=True)
    volume = hd.get_volume_from_series([pydicom.dcmread(f) for f in files])
    theirs = volume.to_nibabel()
    path = str(tmp_path / "highdicom.nii.gz")
    nib.save(nib.Nifti1Image(np.rint(theirs.get_fdata()).astype(np.int16), theirs.affine), path)
    ours = load_case(CaseFiles(name, str(tmp_path / "series"), None))
    _same_case(ours, load_case(CaseFiles("hd", path, None)))


def _examples(folder):
    import glob
    import tensorflow as tf
    files = sorted(glob.glob(os.path.join(folder, "data-*.tfrecord.gz")))
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, "GZIP")]


def test_the_example_gen_takes_dicom_cases_from_a_manifest(tmp_path):
    """A manifest of the phantom as NIfTI, the same scan as a sagittal DICOM series with a NIfTI
    mask and with a DICOM SEG, and a series with missing slices: equal examples, the bad series
    quarantined."""
    import csv
    import json
    from preprocessing import features as F
    from preprocessing.convert import main
    from inference.dicom_seg import AlgorithmInfo, write_seg
    reference = _nifti(tmp_path, "reference", HU, AFFINE, LABELS)
    array, affine = reorient(HU, AFFINE, *ACQUISITIONS["sagittal"])
    files = write_series(str(tmp_path / "sagittal"), array, affine, slope=0.5,
                         intercept=-1000.0)
    write_seg(reorient(LABELS, AFFINE, *ACQUISITIONS["sagittal"])[0], files,
              str(tmp_path / "sagittal_seg.dcm"), num_classes=3,
              algorithm=AlgorithmInfo("test", "1", "m"))
    write_series(str(tmp_path / "gappy"), HU, AFFINE, drop_slices=(3,))
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        rows = [("image", "label", "case_id"),
                (reference.image_path, reference.label_path, "nifti"),
                ("sagittal", reference.label_path, "dicom"),
                ("sagittal", "sagittal_seg.dcm", "dicom_seg"),
                ("gappy", reference.label_path, "gappy")]
        csv.writer(f).writerows(rows)
    out = tmp_path / "out"
    assert main(["--manifest", str(tmp_path / "cases.csv"), "--output", str(out),
                 "--size", "24", "--keep_fraction", "1", "--eval_cases", "nifti",
                 "--max_bad_fraction", "0.5", "--compress_threads", "1"]) == 0
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert (summary["input_cases"], summary["cases_converted"],
            summary["cases_quarantined"]) == (4, 3, 1)
    quarantined = json.loads((out / "quarantine.jsonl").read_text().splitlines()[0])
    assert quarantined["case_id"] == "gappy" and "missing slices" in quarantined["reason"]
    nifti, train = _examples(out / "eval"), _examples(out / "train")

    def values(example, key, dtype=F.LABEL_DTYPE):
        feature = example.features.feature[key]
        return np.array(feature.float_list.value or feature.int64_list.value
                        or [np.frombuffer(v, dtype) for v in feature.bytes_list.value])

    def by_slice(examples):
        return sorted(examples, key=lambda e: int(values(e, F.SLICE_INDEX)[0]))

    for case_id in ("dicom", "dicom_seg"):
        dicom = [e for e in train if e.features.feature[F.VOLUME_ID].bytes_list.value[0]
                 == case_id.encode()]
        assert len(dicom) == len(nifti) > 0
        for a, b in zip(by_slice(nifti), by_slice(dicom)):
            assert values(a, F.SLICE_INDEX) == values(b, F.SLICE_INDEX)
            np.testing.assert_allclose(values(b, F.SPACING), values(a, F.SPACING), atol=1e-4)
            np.testing.assert_array_equal(values(b, F.LABEL), values(a, F.LABEL))
            np.testing.assert_allclose(values(b, F.IMAGE, F.IMAGE_DTYPE).astype(float),
                                       values(a, F.IMAGE, F.IMAGE_DTYPE), atol=1.0)


def test_an_enhanced_ct_file_reads_as_its_series(tmp_path):
    """A multi-frame CT (highdicom's legacy-converted Enhanced CT of the series): frame by frame
    from its functional groups, the same case."""
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid
    array, affine = reorient(HU, AFFINE, *ACQUISITIONS["coronal"])
    files = write_series(str(tmp_path / "series"), array, affine, slope=0.5, intercept=-1000.0)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=generate_uid(),
        series_number=5, sop_instance_uid=generate_uid(), instance_number=1)
    path = str(tmp_path / "enhanced.dcm")
    enhanced.save_as(path)
    _same_case(load_case(CaseFiles("enhanced", path, None)),
               load_case(CaseFiles("series", str(tmp_path / "series"), None)), hu_atol=0)
