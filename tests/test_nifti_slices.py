"""The shared NIfTI -> canonical HU -> 2.5D slice code: geometry by affine, HU scaling, context
edges, label resampling, slice selection, splits, and a clear error for each kind of bad input."""
from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from preprocessing.nifti import CaseError, CaseFiles, discover_lits_cases, load_case
from preprocessing.slices import (SliceConfig, canonical_to_display, display_to_canonical,
                                  iter_slices, resize_in_plane, select_slices, stack_context,
                                  volume_to_model_input)
from preprocessing.splits import EVAL, TRAIN, assign_splits
from preprocessing.synthetic_ct import generate_case

CONFIG = SliceConfig(size=(48, 48), context=1, keep_fraction=0.0)


def _save(case, folder, index):
    vol, seg = case.to_nifti()
    vp, sp = os.path.join(folder, f"volume-{index}.nii.gz"), os.path.join(
        folder, f"segmentation-{index}.nii.gz")
    nib.save(vol, vp)
    nib.save(seg, sp)
    return CaseFiles(f"volume-{index}", vp, sp)


def _records(files, config=CONFIG):
    return list(iter_slices(load_case(files), config))


def test_orientation_does_not_change_examples(tmp_path):
    ras = _save(generate_case(3, in_plane=48, slices_range=(10, 14), orientation="RAS"),
                tmp_path, 0)
    results = {}
    for i, code in enumerate(("LPS", "PIR"), start=1):
        files = _save(generate_case(3, in_plane=48, slices_range=(10, 14), orientation=code),
                      tmp_path, i)
        assert nib.aff2axcodes(nib.load(files.image_path).affine) == tuple(code)
        results[code] = _records(files)
    reference = _records(ras)
    assert reference
    for code, records in results.items():
        assert len(records) == len(reference), code
        for a, b in zip(reference, records):
            np.testing.assert_array_equal(a.image, b.image)
            np.testing.assert_array_equal(a.label, b.label)
            assert a.slice_index == b.slice_index


def test_header_scaling_gives_the_same_hu(tmp_path):
    plain = load_case(_save(generate_case(1, in_plane=32, slices_range=(8, 10), scaling="none"),
                            tmp_path, 0))
    scaled_case = generate_case(1, in_plane=32, slices_range=(8, 10), scaling="half")
    scaled = load_case(_save(scaled_case, tmp_path, 1))
    assert nib.load(os.path.join(tmp_path, "volume-1.nii.gz")).dataobj.slope != 1.0
    np.testing.assert_allclose(plain.hu, scaled.hu, atol=0.51)
    assert plain.hu.min() <= -999   # air


def test_display_orientation_round_trips():
    v = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(display_to_canonical(canonical_to_display(v)), v)


def test_context_is_clamped_at_the_volume_ends():
    image = np.stack([np.full((4, 4), z, np.int16) for z in range(5)], axis=2)
    assert stack_context(image, 0, 1)[0, 0].tolist() == [0, 0, 1]
    assert stack_context(image, 4, 1)[0, 0].tolist() == [3, 4, 4]
    assert stack_context(image, 2, 2)[0, 0].tolist() == [0, 1, 2, 3, 4]


def test_label_resampling_adds_no_new_values():
    labels = np.zeros((50, 50, 3), np.uint8)
    labels[10:30, 10:30] = 1
    labels[15:20, 15:20] = 2
    for size in ((32, 32), (80, 80), (64, 40)):
        out = resize_in_plane(labels, size, order=0)
        assert out.shape == (*size, 3)
        assert set(np.unique(out)) == {0, 1, 2}


def test_slice_selection_counts():
    labels = np.zeros((8, 8, 20), np.uint8)
    labels[2:4, 2:4, 8:12] = 1
    only_liver = select_slices(labels, "c", SliceConfig(margin=2, keep_fraction=0.0))
    assert only_liver.tolist() == list(range(6, 14))
    everything = select_slices(labels, "c", SliceConfig(selection="all"))
    assert everything.tolist() == list(range(20))
    some = select_slices(labels, "c", SliceConfig(margin=0, keep_fraction=0.5, seed=1))
    assert set(range(8, 12)) <= set(some.tolist()) and 4 < len(some) < 20
    np.testing.assert_array_equal(
        some, select_slices(labels, "c", SliceConfig(margin=0, keep_fraction=0.5, seed=1)))


def test_model_input_has_every_slice(tmp_path):
    files = _save(generate_case(0, in_plane=32, slices_range=(9, 9)), tmp_path, 0)
    case = load_case(files)
    stacks = volume_to_model_input(case, CONFIG)
    assert stacks.shape == (case.hu.shape[2], 48, 48, 3) and stacks.dtype == np.int16
    assert stacks.min() >= -200 and stacks.max() <= 250


def test_splits_are_patient_level_and_deterministic():
    ids = [f"volume-{i}" for i in range(20)]
    a = assign_splits(ids, 0.25, seed=3)
    assert a == assign_splits(list(reversed(ids)), 0.25, seed=3)
    assert sum(v == EVAL for v in a.values()) == 5
    assert assign_splits(ids, 0.25, seed=4) != a
    assert set(assign_splits(ids[:2], 0.1).values()) == {TRAIN, EVAL}
    explicit = assign_splits(ids, 0.0, eval_cases=["volume-0", "volume-1"])
    assert [c for c, s in explicit.items() if s == EVAL] == ["volume-0", "volume-1"]


# --- bad input: each kind gets a CaseError naming the file and the reason ---

@pytest.fixture
def good(tmp_path):
    return _save(generate_case(2, in_plane=32, slices_range=(8, 8)), tmp_path, 0)


def _expect(files, path, words):
    with pytest.raises(CaseError) as info:
        load_case(files)
    assert info.value.path == path
    assert any(w in info.value.reason.lower() for w in words), info.value.reason


def test_truncated_gzip(good):
    data = open(good.image_path, "rb").read()
    open(good.image_path, "wb").write(data[: len(data) // 2])
    _expect(good, good.image_path, ["truncated", "corrupt", "readable"])


def test_not_a_nifti_file(good):
    with gzip.open(good.image_path, "wb") as f:
        f.write(b"this is not a nifti header" * 20)
    _expect(good, good.image_path, ["nifti"])


def test_four_d_data(good, tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), good.image_path)
    _expect(good, good.image_path, ["3-d"])


def test_shape_mismatch(good):
    img = nib.load(good.label_path)
    nib.save(nib.Nifti1Image(np.zeros(np.array(img.shape) + (1, 0, 0), np.uint8), img.affine),
             good.label_path)
    _expect(good, good.label_path, ["shape"])


def test_affine_mismatch(good):
    img = nib.load(good.label_path)
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), good.label_path)
    _expect(good, good.label_path, ["affine"])


def test_labels_outside_domain(good):
    img = nib.load(good.label_path)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine), good.label_path)
    _expect(good, good.label_path, ["outside"])


def test_non_integer_labels(good):
    img = nib.load(good.label_path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = 0.5
    nib.save(nib.Nifti1Image(data, img.affine), good.label_path)
    _expect(good, good.label_path, ["non-integer"])


def test_nan_voxels(good):
    img = nib.load(good.image_path)
    data = np.asarray(img.get_fdata(), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), good.image_path)
    _expect(good, good.image_path, ["nan"])


def test_missing_segmentation_and_duplicates_are_reported(tmp_path):
    _save(generate_case(0, in_plane=16, slices_range=(8, 8)), tmp_path, 0)
    files = _save(generate_case(1, in_plane=16, slices_range=(8, 8)), tmp_path, 1)
    os.remove(files.label_path)
    os.symlink(os.path.join(tmp_path, "volume-0.nii.gz"), os.path.join(tmp_path, "volume-0.nii"))
    cases, errors = discover_lits_cases(str(tmp_path))
    assert [c.case_id for c in cases] == ["volume-0"]
    reasons = sorted(e.reason for e in errors)
    assert any("duplicate" in r for r in reasons) and any("missing segmentation" in r
                                                          for r in reasons)
