"""The shared NIfTI -> canonical HU -> 2.5D slice code: geometry by affine, HU scaling, context
edges, label resampling, slice selection, splits, a clear error for each kind of bad input, the
CSV manifest, the resampler (centring, anti-aliasing, target spacing) and the example bytes."""
from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from preprocessing.case_discovery import discover_lits_cases, discover_manifest_cases
from preprocessing.nifti import CaseError, CaseFiles, load_case
from preprocessing.slices import (SliceConfig, canonical_to_display, display_to_canonical,
                                  model_grid_to_canonical, resize_in_plane,
                                  volume_to_model_input)
from preprocessing.splits import EVAL, TRAIN, assign_splits
from preprocessing.synthetic_ct import generate_case
from slice_helpers import iter_slices, prepare_volume, select_slices, stack_context

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


# --- manifest input ---

def _manifest(path, rows, header=("image", "label", "case_id")):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_manifest_paths_are_relative_to_the_csv(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    files = _save(generate_case(0, in_plane=16, slices_range=(8, 8)), data, 0)
    sub = tmp_path / "lists"
    sub.mkdir()
    csv_path = _manifest(sub / "m.csv", [["../data/volume-0.nii.gz",
                                          "../data/segmentation-0.nii.gz", ""]],
                         header=("image", "label", "case_id"))
    cases, errors = discover_manifest_cases(csv_path)
    assert not errors
    assert cases == [CaseFiles("volume-0", files.image_path, files.label_path)]
    assert load_case(cases[0]).labels is not None
    # Without a case_id column the id comes from the image file name, too.
    csv_path = _manifest(sub / "n.csv", [[files.image_path, files.label_path]],
                         header=("image", "label"))
    assert discover_manifest_cases(csv_path)[0][0].case_id == "volume-0"


def test_manifest_row_without_label(tmp_path):
    files = _save(generate_case(0, in_plane=16, slices_range=(8, 8)), tmp_path, 0)
    csv_path = _manifest(tmp_path / "m.csv", [[files.image_path, "", "x"]])
    cases, errors = discover_manifest_cases(csv_path)
    assert not cases and len(errors) == 1
    assert errors[0].case_id == "x" and "without a label" in errors[0].reason
    cases, errors = discover_manifest_cases(csv_path, allow_unlabeled=True)
    assert not errors and cases == [CaseFiles("x", files.image_path, None)]
    case = load_case(cases[0])
    records = list(iter_slices(case, CONFIG))
    assert case.labels is None and len(records) == case.hu.shape[2]   # every slice
    assert all(r.label is None for r in records)


def test_manifest_duplicate_ids_are_all_rejected(tmp_path):
    a = _save(generate_case(0, in_plane=16, slices_range=(8, 8)), tmp_path, 0)
    b = _save(generate_case(1, in_plane=16, slices_range=(8, 8)), tmp_path, 1)
    csv_path = _manifest(tmp_path / "m.csv", [[a.image_path, a.label_path, "p1"],
                                              [b.image_path, b.label_path, "p1"],
                                              [b.image_path, b.label_path, "p2"]])
    cases, errors = discover_manifest_cases(csv_path)
    assert [c.case_id for c in cases] == ["p2"]
    assert [e.case_id for e in errors] == ["p1", "p1"]
    assert all("duplicate case id" in e.reason for e in errors)


def test_manifest_needs_an_image_column(tmp_path):
    with pytest.raises(ValueError, match="image"):
        discover_manifest_cases(_manifest(tmp_path / "m.csv", [["a"]], header=("path",)))


# --- resampling and target spacing ---

def _disc(n, centre, radius):
    yy, xx = np.mgrid[:n, :n]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2)


def _centroid(mask):
    yy, xx = np.nonzero(mask)
    return yy.mean(), xx.mean()


def test_resizer_keeps_a_centred_disc_centred():
    n = 101
    disc = _disc(n, (50, 50), 30).astype(np.float32)[:, :, None] * 1000.0
    for size in ((64, 64), (64, 48), (160, 160)):
        out = resize_in_plane(disc, size, order=1)[:, :, 0]
        cy, cx = _centroid(out > 500)
        assert abs(cy - (size[0] - 1) / 2) < 0.3 and abs(cx - (size[1] - 1) / 2) < 0.3, size
    labels = resize_in_plane(disc.astype(np.uint8), (64, 64), order=0)[:, :, 0]
    assert abs(_centroid(labels > 0)[0] - 31.5) < 0.3


def test_downsampling_does_not_alias():
    # Vertical stripes with a 2-pixel period are above the output's Nyquist limit at 512 -> 320:
    # plain linear interpolation turns them into a strong moire, an anti-aliased resize into a
    # nearly flat grey.
    stripes = np.tile(np.array([0.0, 1000.0], np.float32), 256)[None, :, None].repeat(64, 0)
    out = resize_in_plane(stripes, (40, 320), order=1)[:, :, 0]
    assert abs(out.mean() - 500) < 5 and out.std() < 60


def test_target_spacing_crops_and_pads_around_the_centre(tmp_path):
    files = _save(generate_case(0, in_plane=40, slices_range=(8, 8)), tmp_path, 0)
    case = load_case(files)
    sx, sy = case.spacing[:2]
    for target in (0.5, 2.0):   # finer than the scan (crops) and coarser (pads)
        config = SliceConfig(size=(48, 40), context=1, target_spacing=target, selection="all")
        image, labels = prepare_volume(case, config)
        assert image.shape == (48, 40, case.hu.shape[2]) and labels.shape == image.shape
        assert set(np.unique(labels)) <= set(np.unique(case.labels))
        assert image.min() >= -200 and image.max() <= 250
    # A disc at the centre of the scan stays at the centre of the example, at the right scale.
    n = 64
    canon = np.repeat(_disc(n, ((n - 1) / 2, (n - 1) / 2), 10)[:, :, None], 3, axis=2)
    disc_case = type(case)("d", canon.astype(np.float32) * 100.0, canon.astype(np.uint8),
                           (0.8, 0.8, 2.0), np.eye(4), np.eye(4), canon.shape)
    config = SliceConfig(size=(40, 40), target_spacing=1.6, selection="all", window=(0, 100))
    image, labels = prepare_volume(disc_case, config)
    mask = labels[:, :, 1] > 0
    cy, cx = _centroid(mask)
    assert abs(cy - 19.5) < 0.3 and abs(cx - 19.5) < 0.3
    radius_mm = np.sqrt(mask.sum() / np.pi) * 1.6
    assert abs(radius_mm - 10 * 0.8) < 1.0
    assert image[0, 0, 0] == 0 and image[20, 20, 0] == 100   # padding is clipped to the window
    # And back onto the scan's grid (what predict.py needs for a target spacing).
    back = model_grid_to_canonical(labels.astype(np.float32), disc_case, config, order=1)
    assert back.shape == canon.shape
    agree = ((back[:, :, 1] > 0.5) == canon[:, :, 1]).mean()
    assert agree > 0.98


def test_slice_config_round_trips_through_custom_config():
    from components.nifti_example_gen import make_custom_config
    from google.protobuf import json_format, struct_pb2
    from preprocessing.conversion_settings import ConversionSettings
    for config in (SliceConfig(size=(64, 48), target_spacing=0.75, keep_fraction=0.3),
                   SliceConfig()):
        struct = struct_pb2.Struct()
        make_custom_config(ConversionSettings(slices=config)).custom_config.Unpack(struct)
        back = SliceConfig.from_dict(json_format.MessageToDict(struct)["slice"])
        assert back == config
        assert back.target_spacing is None or isinstance(back.target_spacing, float)
        assert isinstance(back.context, int) and isinstance(back.size[0], int)


def test_fast_example_bytes_equal_the_proto():
    import tensorflow as tf
    from preprocessing.examples import example_bytes, slice_example_bytes
    from preprocessing.slices import SliceRecord
    from slice_helpers import slice_to_example
    rng = np.random.default_rng(0)
    image = rng.integers(-200, 250, (6, 5, 3)).astype(np.int16)
    label = rng.integers(0, 3, (6, 5)).astype(np.uint8)
    for lab in (label, None):
        proto = slice_to_example("volume-3", (0.7, 0.8, 2.5), SliceRecord(image, lab, 4, 90))
        fast = tf.train.Example.FromString(example_bytes("volume-3", (0.7, 0.8, 2.5), image,
                                                         4, 90, lab))
        assert fast == proto
        assert slice_example_bytes("volume-3", (0.7, 0.8, 2.5),
                                   SliceRecord(image, lab, 4, 90)) == example_bytes(
            "volume-3", (0.7, 0.8, 2.5), image, 4, 90, lab)


def test_slice_by_slice_path_equals_the_volume_path(tmp_path):
    """The conversion's fast path (stored values, HU scaling after resampling, one slice at a
    time) gives the examples of load_case + the whole-volume resizer, for every orientation."""
    from preprocessing.nifti import canonicalize_case, read_case
    from preprocessing.slices import prepare_slices, resample_to_config
    from slice_helpers import window_hu
    for i, (code, scaling) in enumerate((("RAS", "half"), ("LPS", "offset"), ("PIR", "none"))):
        files = _save(generate_case(i, in_plane=40, slices_range=(8, 8), orientation=code,
                                    scaling=scaling), tmp_path, i)
        for spacing in (None, 1.1):
            config = SliceConfig(size=(24, 30), target_spacing=spacing, selection="all")
            case = load_case(files)
            fast = prepare_slices(canonicalize_case(read_case(files), hu=False), config)
            volume = window_hu(resample_to_config(canonical_to_display(case.hu), case, config,
                                                  order=1, pad_value=-1024.0), config.window)
            diff = np.abs(fast.image.astype(int) - np.transpose(volume, (2, 0, 1)))
            assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (code, spacing)
            np.testing.assert_array_equal(fast.labels, prepare_slices(case, config).labels)


def test_only_the_needed_slices_are_resampled(tmp_path):
    from preprocessing.slices import context_indices, prepare_slices
    files = _save(generate_case(5, in_plane=32, slices_range=(30, 30)), tmp_path, 0)
    case = load_case(files)
    config = SliceConfig(size=(24, 24), keep_fraction=0.0, margin=0)
    full, part = prepare_slices(case, config), prepare_slices(case, config, selected_only=True)
    np.testing.assert_array_equal(full.selected, part.selected)
    assert 0 < len(part.selected) < case.hu.shape[2]
    for z in part.selected:
        idx = context_indices(int(z), config.context, case.hu.shape[2])
        np.testing.assert_array_equal(full.image[idx], part.image[idx])
