"""inference/postprocess.py on small volumes built by hand, each with the answer worked out from
its geometry: which component stays, which background is a hole in 3-D, which tumour is too
small in mm^3. Every geometric test runs on each installed backend (cc3d, scipy); they must
agree voxel for voxel.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from inference import postprocess as pp
from inference.postprocess import REPORT_KEYS, PostprocessSettings, postprocess

BACKENDS = [b for b in pp.BACKENDS if b == "scipy" or pp.cc3d is not None]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISO = (1.0, 1.0, 1.0)


@pytest.fixture(params=BACKENDS)
def run(request):
    """postprocess on one backend, checking what every call must keep to."""
    def call(labels, spacing=ISO, **settings):
        before = np.array(labels, copy=True)
        out, report = postprocess(labels, spacing, PostprocessSettings(**settings),
                                  backend=request.param)
        np.testing.assert_array_equal(labels, before)          # the input is left alone
        assert not np.shares_memory(out, labels)
        assert out.dtype == np.uint8 and out.flags.c_contiguous and out.shape == labels.shape
        assert set(report) == set(REPORT_KEYS)
        assert all(type(v) is int for v in report.values())
        return out, report
    return call


def volume(shape=(12, 12, 12)) -> np.ndarray:
    return np.zeros(shape, np.uint8)


def report_of(**counts) -> dict:
    return {**dict.fromkeys(REPORT_KEYS, 0), **counts}


def solid_cube(shape=(9, 9, 9), lo=1, hi=8) -> np.ndarray:
    v = volume(shape)
    v[lo:hi, lo:hi, lo:hi] = 1
    return v


# --- 1. the liver: the largest component ---------------------------------------------------------

def test_a_speck_far_from_the_liver_is_removed(run):
    labels = volume()
    labels[1:5, 1:5, 1:5] = 1
    labels[10, 10, 10] = 1                     # a liver speck
    labels[10, 0:2, 10] = 2                    # tumour on its own: outside the liver
    out, report = run(labels)
    expected = volume()
    expected[1:5, 1:5, 1:5] = 1
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(liver_components_removed=2, liver_speck_voxels_removed=1,
                               tumour_outside_liver_voxels_removed=2)


def test_of_two_liver_blobs_the_larger_stays_with_its_tumour(run):
    labels = volume()
    labels[0:3, 0:3, 0:3] = 1                  # 27 voxels, first in C order
    labels[6:9, 6:9, 6:10] = 1                 # 36 voxels
    labels[7, 7, 7] = 2                        # tumour inside the larger blob
    labels[1, 1, 1] = 2                        # tumour inside the smaller one
    out, report = run(labels, min_tumour_volume_mm3=0.0)
    expected = volume()
    expected[6:9, 6:9, 6:10] = 1
    expected[7, 7, 7] = 2
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(liver_components_removed=1, liver_speck_voxels_removed=26,
                               tumour_outside_liver_voxels_removed=1)


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_tie_keeps_the_component_first_in_c_order(run, order):
    """Two 8-voxel blobs: A's first voxel (0, 8, 0) precedes B's (8, 0, 0) in C order, B comes
    first in memory of a Fortran-ordered array (the order cc3d numbers in); A stays."""
    labels = volume()
    labels[0:2, 8:10, 0:2] = 1                 # A
    labels[8:10, 0:2, 0:2] = 1                 # B
    out, report = run(np.asarray(labels, order=order))
    expected = volume()
    expected[0:2, 8:10, 0:2] = 1
    np.testing.assert_array_equal(out, expected)
    assert report["liver_speck_voxels_removed"] == 8


def test_blobs_touching_at_a_corner_are_one_component_unless_6_connected(run):
    labels = volume()
    labels[0:3, 0:3, 0:3] = 1                  # 27 voxels
    labels[3:5, 3:5, 3:5] = 1                  # 8 voxels, touching at the corner (2,2,2)-(3,3,3)
    out, report = run(labels)
    np.testing.assert_array_equal(out, labels)
    assert report == report_of()
    out, report = run(labels, connectivity=6)
    expected = volume()
    expected[0:3, 0:3, 0:3] = 1
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(liver_components_removed=1, liver_speck_voxels_removed=8)


def test_specks_inside_the_livers_bounding_box_are_removed(run):
    """An L-shaped liver: a tumour speck in the notch goes (0); a liver speck floating in an
    enclosed cavity goes too, and the cavity, the speck's place included, is filled."""
    labels = volume()
    labels[1:11, 1:11, 1:6] = 1                # the L's foot
    labels[1:11, 1:4, 6:11] = 1                # its leg; the notch is [1:11, 4:11, 6:11]
    labels[3:8, 3:8, 2:5] = 0                  # a cavity of 75 voxels ...
    labels[5, 5, 3] = 1                        # ... with a speck in its middle
    labels[6, 8, 9] = 2                        # tumour in the notch, clear of the liver
    out, report = run(labels)
    expected = volume()
    expected[1:11, 1:11, 1:6] = 1
    expected[1:11, 1:4, 6:11] = 1
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(liver_components_removed=2, liver_speck_voxels_removed=1,
                               tumour_outside_liver_voxels_removed=1, holes_filled=1,
                               hole_voxels_filled=75)


# --- 2. holes enclosed in 3-D ---------------------------------------------------------------------

def test_an_enclosed_cavity_is_filled_as_liver(run):
    labels = solid_cube()
    labels[3:6, 3:6, 3:6] = 0                  # 27 enclosed voxels
    labels[2, 2, 2] = 2                        # tumour in the wall, kept
    out, report = run(labels, min_tumour_volume_mm3=0.0)
    expected = solid_cube()
    expected[2, 2, 2] = 2
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(holes_filled=1, hole_voxels_filled=27)
    out, report = run(labels, fill_holes=False, min_tumour_volume_mm3=0.0)
    np.testing.assert_array_equal(out, labels)
    assert report == report_of()


def test_a_tunnel_enclosed_in_every_slice_but_open_in_3d_stays(run):
    """A tunnel along axis 2 through the cube: in every 2-D slice across it, the liver encloses
    it (2-D filling fills it); in 3-D it runs out of both ends and is no hole. A closed pocket
    beside it is filled."""
    labels = solid_cube()
    labels[4, 4, :] = 0                        # the tunnel, through the whole cube
    labels[2, 2, 3:6] = 0                      # a closed pocket of 3 voxels
    per_slice = np.stack([ndimage.binary_fill_holes(labels[:, :, z] > 0)
                          for z in range(labels.shape[2])], axis=2)
    assert per_slice[4, 4, 1:8].all()          # what slice-by-slice filling would have done
    out, report = run(labels)
    expected = solid_cube()
    expected[4, 4, :] = 0
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(holes_filled=1, hole_voxels_filled=3)


def test_a_cavity_open_to_the_volume_border_stays(run):
    """The liver fills its corner of the volume; the cavity's only opening is on the volume's
    border (the box's face there is the border too)."""
    labels = volume((8, 8, 8))
    labels[0:6, 0:6, 0:6] = 1
    labels[0:3, 2:4, 2:4] = 0                  # a blind well opening at axis-0 index 0
    out, report = run(labels)
    np.testing.assert_array_equal(out, labels)
    assert report == report_of()


def test_a_diagonal_gap_lets_background_out_only_when_the_liver_is_6_connected(run):
    """A chain of background voxels from the centre to an edge of the cube, each step diagonal:
    26-connected liver (6-connected background) encloses the three inner ones one by one; a
    6-connected liver lets background through diagonal steps, so nothing is enclosed."""
    labels = solid_cube()
    for i in (4, 3, 2, 1):                     # (1, 1, 4) is on the cube's edge, open outside
        labels[i, i, 4] = 0
    out, report = run(labels)
    expected = solid_cube()
    expected[1, 1, 4] = 0
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(holes_filled=3, hole_voxels_filled=3)
    out, report = run(labels, connectivity=6)
    np.testing.assert_array_equal(out, labels)
    assert report == report_of()


def test_holes_match_scipys_3d_fill_of_the_kept_liver(run):
    rng = np.random.default_rng(3)
    labels = (ndimage.uniform_filter(rng.random((30, 30, 30)), 3) > 0.45).astype(np.uint8)
    out, report = run(labels)
    alone, _ = run(labels, fill_holes=False)   # the kept component, then scipy's 3-D fill
    filled = ndimage.binary_fill_holes(alone > 0, ndimage.generate_binary_structure(3, 1))
    np.testing.assert_array_equal(out > 0, filled)
    assert report["hole_voxels_filled"] == int(filled.sum() - (alone > 0).sum()) > 0


# --- 3. tumours ---------------------------------------------------------------------------------

def test_tumour_outside_the_kept_liver_is_removed_inside_kept(run):
    labels = volume()
    labels[0:6, 0:6, 0:6] = 1
    labels[2:4, 2:4, 2:4] = 2                  # inside
    labels[9:11, 9:11, 9:11] = 2               # a tumour-only blob away from the liver
    out, report = run(labels, min_tumour_volume_mm3=0.0)
    expected = labels.copy()
    expected[9:11, 9:11, 9:11] = 0
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(liver_components_removed=1, tumour_outside_liver_voxels_removed=8)


def tumour_scene() -> np.ndarray:
    """A 12^3 liver with three separate tumours of 8, 12 and 16 voxels; room around it."""
    labels = volume((16, 16, 16))
    labels[1:13, 1:13, 1:13] = 1
    labels[2:4, 2:4, 2:4] = 2                  # 8 voxels
    labels[2:4, 8:10, 2:5] = 2                 # 12
    labels[8:10, 2:4, 2:6] = 2                 # 16
    return labels


@pytest.mark.parametrize("spacing, minimum, dropped", [
    ((0.5, 0.5, 3.0), 10.0, (8, 12)),          # 0.75 mm^3 a voxel: 6, 9, 12 mm^3
    ((1.0, 1.0, 1.0), 10.0, (8,)),             # 8, 12, 16 mm^3
    ((3.0, 0.5, 0.5), 10.0, (8, 12)),          # the same volume whichever axis is coarse
    ((0.5, 0.5, 3.0), 6.0, ()),                # 6 mm^3 is not below 6
    ((0.5, 0.5, 3.0), 0.0, ()),                # 0: every tumour kept
], ids=["aniso_10", "iso_10", "aniso_first_axis", "at_threshold", "zero"])
def test_small_tumours_dropped_by_volume_in_mm3(run, spacing, minimum, dropped):
    labels = tumour_scene()
    out, report = run(labels, spacing, min_tumour_volume_mm3=minimum)
    expected = labels.copy()
    for size, box in ((8, np.s_[2:4, 2:4, 2:4]), (12, np.s_[2:4, 8:10, 2:5]),
                      (16, np.s_[8:10, 2:4, 2:6])):
        if size in dropped:
            expected[box] = 1                  # inside the liver: becomes liver
    np.testing.assert_array_equal(out, expected)
    assert report == report_of(small_tumours_dropped=len(dropped),
                               small_tumour_voxels_dropped=sum(dropped))


def test_every_count_of_the_report_at_once(run):
    labels = tumour_scene()
    labels[5:8, 5:8, 5:8] = 0                  # a 27-voxel hole
    labels[15, 15, 15] = 1                     # a speck, two voxels from the liver
    labels[15, 0, 15] = 2                      # tumour outside
    labels[0, 15, 15] = 2                      # and another, with a liver voxel beside it
    labels[0, 15, 14] = 1
    out, report = run(labels, (0.5, 0.5, 3.0))
    assert report == report_of(liver_components_removed=3, liver_speck_voxels_removed=2,
                               tumour_outside_liver_voxels_removed=2, holes_filled=1,
                               hole_voxels_filled=27, small_tumours_dropped=2,
                               small_tumour_voxels_dropped=20)
    assert np.count_nonzero(out == 2) == 16
    assert np.count_nonzero(out) == 12 ** 3


# --- two classes, empty, disabled ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, bool, np.int64])
def test_a_liver_only_map_gets_the_liver_steps(run, dtype):
    labels = solid_cube((10, 10, 10))
    labels[3:6, 3:6, 3:6] = 0
    labels[9, 9, 9] = 1
    out, report = run(labels.astype(dtype))
    np.testing.assert_array_equal(out, solid_cube((10, 10, 10)))
    assert set(np.unique(out)) == {0, 1}
    assert report == report_of(liver_components_removed=1, liver_speck_voxels_removed=1,
                               holes_filled=1, hole_voxels_filled=27)


@pytest.mark.parametrize("shape", [(12, 12, 12), (0, 4, 4)])
def test_an_empty_prediction_stays_empty(run, shape):
    out, report = run(volume(shape))
    np.testing.assert_array_equal(out, volume(shape))
    assert report == report_of()


def test_disabled_returns_a_copy_of_the_labels(run):
    labels = tumour_scene()
    labels[15, 15, 15] = 1
    out, report = run(np.asfortranarray(labels), enabled=False)
    np.testing.assert_array_equal(out, labels)
    assert report == report_of()


def test_many_slabs_give_the_same_answer(monkeypatch):
    """Counts, lookups and the tie search go slab by slab: with slabs of one plane each."""
    rng = np.random.default_rng(5)
    labels = (ndimage.uniform_filter(rng.random((24, 20, 16)), 3) > 0.47).astype(np.uint8)
    labels[labels.astype(bool) & (rng.random(labels.shape) > 0.8)] = 2
    whole = [postprocess(labels, (0.5, 0.7, 2.0), backend=b) for b in BACKENDS]
    monkeypatch.setattr(pp, "_BLOCK_VOXELS", 1)
    for b, (out, report) in zip(BACKENDS, whole):
        sliced, sliced_report = postprocess(labels, (0.5, 0.7, 2.0), backend=b)
        np.testing.assert_array_equal(sliced, out)
        assert sliced_report == report
        np.testing.assert_array_equal(out, whole[0][0])   # the backends agree
        assert report == whole[0][1]
    assert whole[0][1]["small_tumours_dropped"] > 0 and whole[0][1]["holes_filled"] > 0


# --- settings and input checks ------------------------------------------------------------------

def test_settings_defaults_and_round_trip():
    from inference.inference_config import InferenceConfig
    s = PostprocessSettings()
    assert (s.enabled, s.min_tumour_volume_mm3, s.fill_holes, s.connectivity) == (
        True, 10.0, True, 26)
    # What the VolumeEvaluator gets: the InferenceConfig as JSON (every number may be a float).
    d = {"postprocess": True, "min_tumour_volume_mm3": 5, "fill_holes": False,
         "batch_size": 8.0}
    config = InferenceConfig.from_dict(d)
    assert config.postprocess_settings() == PostprocessSettings(True, 5.0, False, 26)
    assert config.batch_size == 8 and InferenceConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("bad", [{"connectivity": 8}, {"connectivity": 26.0},
                                 {"min_tumour_volume_mm3": -1.0},
                                 {"min_tumour_volume_mm3": float("nan")},
                                 {"enabled": "yes"}, {"fill_holes": 1}])
def test_settings_that_cannot_work_are_refused(bad):
    with pytest.raises(ValueError):
        PostprocessSettings(**bad)


def test_unknown_settings_are_refused():
    from inference.inference_config import InferenceConfig
    with pytest.raises(ValueError, match="unknown"):
        InferenceConfig.from_dict({"min_tumor_volume_mm3": 5.0})


@pytest.mark.parametrize("labels, spacing, error", [
    (np.zeros((4, 4), np.uint8), (1.0, 1.0), ValueError),
    (np.zeros((4, 4, 4), np.float32), ISO, TypeError),
    (np.full((4, 4, 4), 3, np.uint8), ISO, ValueError),
    (np.full((4, 4, 4), -1, np.int16), ISO, ValueError),
    (np.zeros((4, 4, 4), np.uint8), (1.0, 1.0), ValueError),
    (np.zeros((4, 4, 4), np.uint8), (1.0, 0.0, 1.0), ValueError),
])
def test_bad_input_is_refused(labels, spacing, error):
    with pytest.raises(error):
        postprocess(labels, spacing)


def test_backend_choice():
    assert pp.DEFAULT_BACKEND == ("cc3d" if pp.cc3d is not None else "scipy")
    with pytest.raises(ValueError, match="backend"):
        postprocess(volume(), ISO, backend="skimage")


def test_no_tensorflow_is_imported():
    code = ("import sys; import inference.postprocess; "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_without_cc3d_scipy_does_it():
    code = ("import sys; sys.modules['cc3d'] = None; import numpy as np; "
            "from inference import postprocess as pp; assert pp.DEFAULT_BACKEND == 'scipy'; "
            "v = np.zeros((6, 6, 6), np.uint8); v[1:4, 1:4, 1:4] = 1; v[5, 5, 5] = 1; "
            "out, report = pp.postprocess(v, (1, 1, 1)); "
            "assert report['liver_speck_voxels_removed'] == 1 and out.sum() == 27")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
