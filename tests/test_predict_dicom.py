"""predict.py on a folder of DICOM series, with a real SavedModel (tests/test_volume_eval.py's
threshold model, 3 classes): one case per series (one split over two folders, one stored
sagittally), a bad series and a broken file named and counted; the NIfTI mask of each series
equals, in world space, the mask of the same scan given as NIfTI; the DICOM SEG references the
source series and instances, and read back (highdicom) its frames sit on the right source slices
and its pixels equal the NIfTI mask."""
from __future__ import annotations

import contextlib
import io
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest

import predict
from dicom_helpers import reorient, write_series
from inference import outputs
from preprocessing.dicom_seg_labels import read_seg_labels
from preprocessing.dicom_volume import discover_dicom_series
from preprocessing.dicom_series import read_all_headers, series_geometry
from preprocessing.synthetic_ct import generate_case
from test_volume_eval import export_model

PHANTOM = generate_case(2, in_plane=32, slices_range=(8, 9), orientation="RAS", scaling="none")
HU = np.asarray(PHANTOM.volume, dtype=np.int16)
AFFINE = PHANTOM.affine
SERIES = {"axial": ((0, 1, 2), (True, True, False)), "sagittal": ((1, 2, 0), (True, True, False))}


def _run(*argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = predict.main(list(argv))
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(work folder, model, the DICOM folder run's (exit code, stdout, stderr, output))."""
    work = tmp_path_factory.mktemp("predict_dicom")
    pacs = work / "pacs"
    for name, (order, flips) in SERIES.items():
        write_series(str(pacs / name), *reorient(HU, AFFINE, order, flips),
                     split=2 if name == "axial" else 1, reverse_instances=name == "sagittal")
    write_series(str(pacs / "gappy"), HU, AFFINE, drop_slices=(3,))
    (pacs / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    nib.save(nib.Nifti1Image(HU, AFFINE), str(work / "reference.nii.gz"))
    model = export_model(str(work / "model"))
    out = str(work / "out")
    return work, model, (*_run("--model", model, "--input", str(pacs), "--output", out,
                               "--output_format", "both"), out)


def test_every_series_is_a_case_and_bad_ones_are_counted(setup):
    _, _, (code, stdout, stderr, out) = setup
    assert code == 1   # a case failed
    assert "2 of 4 volumes written" in stdout
    assert "_seg.dcm" in stdout
    assert "gappy" in stderr and "missing slices" in stderr
    assert "broken.dcm" in stderr
    names = sorted(os.listdir(out))
    assert names == ["axial_mask.nii.gz", "axial_seg.dcm", "predictions.csv",
                     "sagittal_mask.nii.gz", "sagittal_seg.dcm"]


def _canonical(path):
    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.dataobj), image.affine


def test_masks_equal_the_nifti_run_in_world_space(setup):
    work, model, (_, _, _, out) = setup
    reference = str(work / "reference_mask.nii.gz")
    assert _run("--model", model, "--input", str(work / "reference.nii.gz"),
                "--output", reference)[0] == 0
    expected, affine = _canonical(reference)
    assert np.count_nonzero(expected == 1) and np.count_nonzero(expected == 2)
    for name in SERIES:
        mask, mask_affine = _canonical(os.path.join(out, f"{name}_mask.nii.gz"))
        np.testing.assert_allclose(mask_affine, affine, atol=1e-3)
        np.testing.assert_array_equal(mask, expected)


def _geometry(folder):
    headers, _ = read_all_headers(sorted(
        os.path.join(d, f) for d, _, files in os.walk(folder) for f in files))
    return series_geometry(headers, folder)


@pytest.mark.parametrize("name", sorted(SERIES))
def test_seg_overlays_the_source_series(setup, name):
    work, model, (_, _, _, out) = setup
    geometry = _geometry(str(work / "pacs" / name))
    seg = pydicom.dcmread(os.path.join(out, f"{name}_seg.dcm"))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    source_uid = pydicom.dcmread(geometry.files[0]).SeriesInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source_uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(
        geometry.sop_instance_uids)
    codes = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert codes == ["10200004", "108369006"]   # SNOMED CT liver, neoplasm
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == outputs.ALGORITHM_NAME
    assert algorithm.AlgorithmVersion == outputs.project_version()
    assert algorithm.AlgorithmParameters == f"model_id={outputs.model_id_of(model)}"
    mask = np.asarray(nib.load(os.path.join(out, f"{name}_mask.nii.gz")).dataobj)
    assert mask.shape == geometry.shape
    # Each frame on its source slice: the frame's pixels are that slice's mask.
    k_of = {uid: k for k, uid in enumerate(geometry.sop_instance_uids)}
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        expected = mask[:, :, k_of[source]].T >= 1 if segment == 1 else (
            mask[:, :, k_of[source]].T == 2)
        np.testing.assert_array_equal(frame.astype(bool), expected)
    labels = read_seg_labels(os.path.join(out, f"{name}_seg.dcm"), geometry.sop_instance_uids,
                             geometry.shape)
    np.testing.assert_array_equal(labels, mask)


def test_discovery_names_series_by_folder(setup):
    work = setup[0]
    cases, errors = discover_dicom_series(str(work / "pacs"))
    assert [c.case_id for c in cases] == ["axial", "gappy", "sagittal"]
    assert len(errors) == 1


def test_fractional_seg_and_seg_of_nifti_input(setup, tmp_path):
    work, model, _ = setup
    out = str(tmp_path / "fractional")
    code, _, stderr = _run("--model", model, "--input", str(work / "pacs" / "sagittal"),
                           "--output", out, "--output_format", "seg", "--seg_type", "fractional")
    assert code == 0, stderr
    assert os.listdir(out) == ["predictions.csv", "sagittal_seg.dcm"] or sorted(
        os.listdir(out)) == ["predictions.csv", "sagittal_seg.dcm"]
    seg = pydicom.dcmread(os.path.join(out, "sagittal_seg.dcm"))
    assert seg.SegmentationType == "FRACTIONAL"
    code, _, stderr = _run("--model", model, "--input", str(work / "reference.nii.gz"),
                           "--output", str(tmp_path / "m.nii.gz"), "--output_format", "seg")
    assert code == 1 and "needs a DICOM series input" in stderr


def test_a_model_that_returns_the_label_writes_the_label_in_world_space(setup, tmp_path):
    """The phantom's labels coded as HU the threshold model maps back to them (liver 60, tumour
    30, else -100): the NIfTI mask and the SEG of a sagittal, rescaled series are the phantom's
    label in world space."""
    work, model, _ = setup
    labels = np.asarray(PHANTOM.segmentation, dtype=np.uint8)
    assert np.count_nonzero(labels == 2)
    coded = np.select([labels == 2, labels == 1], [30, 60], -100).astype(np.int16)
    folder = str(tmp_path / "coded")
    write_series(folder, *reorient(coded, AFFINE, *SERIES["sagittal"]), slope=0.5,
                 intercept=-1000.0, reverse_instances=True)
    out = str(tmp_path / "out")
    code, _, stderr = _run("--model", model, "--input", folder, "--output", out,
                           "--output_format", "both", "--no-postprocess")
    assert code == 0, stderr
    mask, mask_affine = _canonical(os.path.join(out, "coded_mask.nii.gz"))
    np.testing.assert_allclose(mask_affine, AFFINE, atol=1e-3)
    np.testing.assert_array_equal(mask, labels)
    geometry = _geometry(folder)
    seg_labels = read_seg_labels(os.path.join(out, "coded_seg.dcm"),
                                 geometry.sop_instance_uids, geometry.shape)
    seg_world = nib.as_closest_canonical(nib.Nifti1Image(seg_labels, geometry.affine))
    np.testing.assert_array_equal(np.asarray(seg_world.dataobj), labels)
