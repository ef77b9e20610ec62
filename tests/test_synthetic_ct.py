"""Tests for preprocessing.synthetic_ct (small sizes: the whole file runs in a few seconds)."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from preprocessing import synthetic_ct as sct

SMALL = dict(in_plane=48, slices_range=(16, 24))


def _canonical(case):
    """(HU, labels, affine) in canonical RAS voxel order, read back through the affine."""
    _, seg = case.to_nifti()
    hu_img = nib.as_closest_canonical(nib.Nifti1Image(case.hu, case.affine))
    seg_img = nib.as_closest_canonical(seg)
    return hu_img.get_fdata(), np.asanyarray(seg_img.dataobj), hu_img.affine


def _roundtrip(case, tmp_path, name):
    vol, seg = case.to_nifti()
    vpath, spath = tmp_path / f"volume-{name}.nii.gz", tmp_path / f"segmentation-{name}.nii.gz"
    nib.save(vol, vpath)
    nib.save(seg, spath)
    return nib.load(vpath), nib.load(spath)


def _body_mask(hu):
    # Body = everything denser than -500 HU, with enclosed gas (bowel, stomach) filled in per slice.
    dense = hu > -500
    return np.stack([ndimage.binary_fill_holes(dense[:, :, k]) for k in range(hu.shape[2])], axis=2)


@pytest.fixture(scope="module")
def cases():
    return [sct.generate_case(i, seed=0, in_plane=64, slices_range=(16, 28)) for i in range(6)]


def test_determinism():
    a = sct.generate_case(3, seed=1, **SMALL)
    b = sct.generate_case(3, seed=1, **SMALL)
    assert a.volume.dtype == np.int16 and a.segmentation.dtype == np.uint8
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.segmentation, b.segmentation)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert (a.orientation, a.spacing, a.scl_slope, a.scl_inter) == (b.orientation, b.spacing, b.scl_slope, b.scl_inter)
    other_seed = sct.generate_case(3, seed=2, **SMALL)
    assert other_seed.volume.shape != a.volume.shape or not np.array_equal(other_seed.volume, a.volume)
    # Same orientation/scaling as index 3 (3 + lcm(4, 3)) but different anatomy.
    other_index = sct.generate_case(15, seed=1, **SMALL)
    assert other_index.volume.shape != a.volume.shape or not np.array_equal(other_index.segmentation, a.segmentation)


def test_labels_and_anatomy(cases):
    assert sum(c.num_tumours for c in cases) > 0
    for case in cases:
        hu, seg, _ = _canonical(case)
        assert set(np.unique(seg)) <= {0, 1, 2}
        assert (seg == 1).sum() > 100
        # Tumour strictly inside the liver: its 6-neighbourhood is liver or tumour.
        tumour = seg == 2
        assert (tumour.sum() > 0) == (case.num_tumours > 0)
        assert not (ndimage.binary_dilation(tumour) & (seg == 0)).any()
        # Liver spans a contiguous z range, with liver-free slices above and below.
        with_liver = np.flatnonzero(seg.any(axis=(0, 1)))
        assert with_liver.size == len(case.liver_slices)
        assert np.array_equal(with_liver, np.arange(with_liver[0], with_liver[-1] + 1))
        assert with_liver[0] >= 2 and with_liver[-1] <= seg.shape[2] - 3
        # Labels inside the body.
        assert not ((seg > 0) & ~_body_mask(hu)).any()
        assert (hu[seg > 0] > -500).all()


def test_hu_values(cases):
    for case in cases:
        hu, seg, _ = _canonical(case)
        assert 55.0 <= hu[seg == 1].mean() <= 70.0
        lesions, count = ndimage.label(seg == 2)
        for k in range(1, count + 1):
            # Hypodense (a rim or partial volume may lift part of a lesion to the liver's HU).
            assert np.percentile(hu[lesions == k], 25) < hu[seg == 1].mean() - 10
        corners = np.concatenate([hu[:4, :4].ravel(), hu[-4:, -4:].ravel()])
        assert abs(corners.mean() + 1000.0) < 10.0
        assert (hu > 300).sum() > 10  # bone (spine, ribs)
        assert (hu < -500).any() and hu.min() >= -1024 and hu.max() <= 3071


def test_lesions_spread_like_lits():
    """Across seeds: some cases tumour-free, lesions in every LiTS size band, hypodense by at
    least 15 HU in their darker part, about as deep along z as wide in mm, and counted as the
    metrics count them (3-D components)."""
    diameters, tumour_free = [], 0
    for i in range(24):
        case = sct.generate_case(i, seed=0, in_plane=128, slices_range=(24, 56))
        hu, seg, _ = _canonical(case)
        lesions, count = ndimage.label(seg == 2)
        assert count == case.num_tumours
        tumour_free += count == 0
        liver_hu = hu[seg == 1].mean()
        for k, box in enumerate(ndimage.find_objects(lesions), start=1):
            lesion = lesions == k
            diameter = (6.0 * lesion.sum() * np.prod(case.spacing) / np.pi) ** (1 / 3)
            diameters.append(diameter)
            assert liver_hu - np.percentile(hu[lesion], 25) >= 15.0
            if diameter > 8.0:
                extent = [(s.stop - s.start) * mm for s, mm in zip(box, case.spacing)]
                assert 0.6 <= extent[2] / np.mean(extent[:2]) <= 1.7, (i, k, extent)
    d = np.asarray(diameters)
    assert 1 <= tumour_free <= 6
    assert (d < 10).sum() >= 5 and ((d >= 10) & (d <= 20)).sum() >= 5 and (d > 20).sum() >= 1


def test_liver_is_on_patients_right(cases):
    for case in cases:
        hu, seg, aff = _canonical(case)
        body = _body_mask(hu)
        liver_world = nib.affines.apply_affine(aff, np.argwhere(seg > 0).mean(axis=0))
        body_world = nib.affines.apply_affine(aff, np.argwhere(body).mean(axis=0))
        # RAS+: +x points to the patient's Right.
        assert liver_world[0] > body_world[0] + 5.0


def test_orientation_roundtrip(tmp_path):
    ref = sct.generate_case(2, orientation="RAS", scaling="none", **SMALL)
    ref_hu, ref_seg, _ = _canonical(ref)
    for code in ("LPS", "PIR", "SPR", "LAS"):
        case = sct.generate_case(2, orientation=code, scaling="none", **SMALL)
        vol, seg = _roundtrip(case, tmp_path, code)
        assert nib.aff2axcodes(vol.affine) == tuple(code)
        np.testing.assert_array_equal(nib.as_closest_canonical(vol).get_fdata(), ref_hu)
        np.testing.assert_array_equal(np.asanyarray(nib.as_closest_canonical(seg).dataobj), ref_seg)
    default_codes = {nib.aff2axcodes(sct.generate_case(i, **SMALL).affine) for i in range(4)}
    assert len(default_codes) == 4
    assert ("P", "I", "R") in default_codes


def test_scaling_roundtrip(tmp_path):
    plain = sct.generate_case(4, scaling="none", **SMALL)
    for mode in ("offset", "half"):
        scaled = sct.generate_case(4, scaling=mode, **SMALL)
        slope, inter = sct.SCALINGS[mode]
        assert (scaled.scl_slope, scaled.scl_inter) == (slope, inter)
        assert not np.array_equal(scaled.volume, plain.volume)
        np.testing.assert_array_equal(scaled.hu, plain.hu)
        vol, _ = _roundtrip(scaled, tmp_path, mode)
        assert vol.get_data_dtype() == np.int16
        assert (vol.dataobj.slope, vol.dataobj.inter) == (slope, inter)
        np.testing.assert_array_equal(np.asanyarray(vol.dataobj.get_unscaled()), scaled.volume)
        np.testing.assert_array_equal(vol.get_fdata(), plain.hu)
    # Default cycle: every third case is unscaled.
    assert [sct.generate_case(i, **SMALL).scl_slope is None for i in range(3)] == [True, False, False]


def test_spacing_recorded(tmp_path):
    for index in range(4):
        case = sct.generate_case(index, **SMALL)
        sx, sy, sz = case.spacing
        assert 0.6 <= sx <= 0.9 and sx == sy and 1.0 <= sz <= 5.0
        vol, seg = _roundtrip(case, tmp_path, str(index))
        np.testing.assert_allclose(vol.header.get_zooms(), case.stored_spacing, rtol=1e-6)
        np.testing.assert_allclose(seg.header.get_zooms(), case.stored_spacing, rtol=1e-6)
        np.testing.assert_allclose(nib.as_closest_canonical(vol).header.get_zooms(), case.spacing, rtol=1e-6)
        assert case.volume.shape == vol.shape == seg.shape
        assert 16 <= case.num_slices <= 24


def test_write_and_ensure(tmp_path):
    out = tmp_path / "data"
    pairs = sct.ensure_dataset(str(out), 3, seed=0, progress=False, **SMALL)
    assert [tuple(os.path.basename(p) for p in pair) for pair in pairs] == [
        (f"volume-{i}.nii.gz", f"segmentation-{i}.nii.gz") for i in range(3)
    ]
    assert all(os.path.isfile(p) for pair in pairs for p in pair)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["num_cases"] == 3 and manifest["in_plane"] == 48 and len(manifest["cases"]) == 3
    assert [c["orientation"] for c in manifest["cases"]] == ["RAS", "LPS", "LAS"]
    mtimes = {p: os.stat(p).st_mtime_ns for pair in pairs for p in pair}

    assert sct.ensure_dataset(str(out), 3, seed=0, progress=False, **SMALL) == pairs
    assert sct.write_dataset(str(out), 3, seed=0, progress=False, **SMALL) == pairs
    # Growing the set only adds the new case.
    more = sct.ensure_dataset(str(out), 4, seed=0, progress=False, **SMALL)
    assert len(more) == 4 and os.path.isfile(more[3][0])
    assert {p: os.stat(p).st_mtime_ns for pair in pairs for p in pair} == mtimes

    # The files hold the generated case.
    case = sct.generate_case(1, seed=0, **SMALL)
    vol = nib.load(pairs[1][0])
    np.testing.assert_array_equal(vol.get_fdata(), case.hu)
    np.testing.assert_array_equal(np.asanyarray(nib.load(pairs[1][1]).dataobj), case.segmentation)

    # Other parameters -> regenerated.
    sct.ensure_dataset(str(out), 2, seed=5, progress=False, **SMALL)
    assert json.loads((out / "dataset.json").read_text())["seed"] == 5
    np.testing.assert_array_equal(nib.load(pairs[1][0]).get_fdata(), sct.generate_case(1, seed=5, **SMALL).hu)


def test_cli(tmp_path, caplog):
    out = tmp_path / "cli"
    with caplog.at_level("INFO", logger="preprocessing.synthetic_ct"):
        pairs = sct.main(["--output", str(out), "--num_cases", "2", "--size", "32", "--seed", "3",
                          "--min_slices", "12", "--max_slices", "14", "--no_progress"])
    assert len(pairs) == 2
    for i in range(2):
        assert (out / f"volume-{i}.nii.gz").is_file() and (out / f"segmentation-{i}.nii.gz").is_file()
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["seed"] == 3 and manifest["slices_range"] == [12, 14]
    assert any("done: 2 cases" in r.getMessage() for r in caplog.records)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        sct.generate_case(0, orientation="RRS", **SMALL)
    with pytest.raises(ValueError):
        sct.generate_case(0, scaling="double", **SMALL)
    with pytest.raises(ValueError):
        sct.generate_case(0, in_plane=48, slices_range=(30, 20))
