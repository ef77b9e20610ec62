"""predict.py against known answers, with a stand-in for the trained model.

The stand-in answers each serialized example it is sent with that slice's label as the ExampleGen
itself writes it (case_conversion.case_examples on the same files): exactly what a perfect model
would return. predict.py must then write the input's own label back, in the input's grid (shape,
affine, axis order and directions), whatever the file's orientation, header scaling, spacing and
the model's SliceConfig. A stand-in that flips its answer along one axis must fail the same check,
which shows the check bites. Also: the int16 slices predict.py sends equal the ExampleGen's, and
bad input ends in one line on stderr naming the file, never a traceback.
"""
from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

import predict
from inference import model as inference_model
from inference import segmenter
from inference.cases import load_input
from inference.inference_config import InferenceConfig
from inference.postprocess import postprocess
from models.metrics import class_map, dice_numpy
from preprocessing import features as F
from preprocessing.case_conversion import case_examples
from preprocessing.nifti import CaseFiles, load_case
from preprocessing.slices import (SliceConfig, canonical_to_display, model_grid_to_canonical,
                                  resample_to_config, volume_to_model_input)
from preprocessing.synthetic_ct import generate_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (40, 36, 12)          # canonical X (towards R), Y (towards A), Z (towards S)
SPACING = (0.8, 0.7, 2.5)     # anisotropic in-plane and through-plane
# Header scaling (scl_slope, scl_inter): none, the common -1024 offset, half steps, and an odd
# pair whose HU are not integers (rounding differences show up there first).
SCALINGS = {"none": None, "offset": (1.0, -1024.0), "half": (0.5, -1024.0),
            "odd": (0.37, -1000.5)}
# Every orientation the ExampleGen reads (nibabel's closest canonical: 6 axis orders x 8 flips).
ALL_CODES = ["".join(c) for perm in itertools.permutations((("R", "L"), ("A", "P"), ("S", "I")))
             for c in itertools.product(*perm)]
FEW_CODES = ["RAS", "LPS", "LAS", "PIR", "SLP", "IRA"]
# The model's grid: the same size as the scan's slices (rows = Y, cols = X: a round trip without
# resampling, so the answer is exact), smaller, larger, and target spacings that pad and crop.
IDENTITY = SliceConfig(size=(SHAPE[1], SHAPE[0]), context=1, keep_fraction=0.0)
RESAMPLED = {
    "down": SliceConfig(size=(32, 32), context=1),
    "up": SliceConfig(size=(48, 56), context=2),
    "spacing_pad": SliceConfig(size=(32, 32), context=1, target_spacing=1.0),
    "spacing_fine": SliceConfig(size=(48, 56), context=1, target_spacing=0.6),
    # 22.4 x 28 mm of the scan's 25.2 x 32: crops 2 pixels a side, the phantom's label is inside.
    "spacing_crop": SliceConfig(size=(32, 40), context=1, target_spacing=0.7),
    # 16.8 mm square: cuts the label; what the model never saw must come back as background.
    "spacing_cut": SliceConfig(size=(24, 24), context=1, target_spacing=0.7),
}
# Dice floors of the grids coarser than the scan (measured: down 0.963 / 0.80, spacing_pad
# 0.985 / 0.887 for liver / tumour), none where the label is cut; the others: 0.98 per label.
FLOORS = {"down": {"liver": 0.95, "tumour": 0.75}, "spacing_pad": {"liver": 0.95, "tumour": 0.75},
          "spacing_cut": None}


# --- the phantom ---------------------------------------------------------------------------------

def phantom():
    """Canonical (RAS) HU and labels: an L-shaped liver (1) off the centre in x, y and z, with a
    tumour (2) in its long arm. Flipping any axis moves most of it (tumour: all of it)."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    long_arm = (x >= 5) & (x < 15) & (y >= 4) & (y < 30) & (z >= 1) & (z < 8)
    short_arm = (x >= 5) & (x < 27) & (y >= 4) & (y < 14) & (z >= 1) & (z < 5)
    tumour = (x >= 7) & (x < 13) & (y >= 18) & (y < 27) & (z >= 2) & (z < 6)
    labels = np.zeros(SHAPE, np.uint8)
    labels[long_arm | short_arm] = 1
    labels[tumour] = 2
    body = ((x - 19.5) / 19) ** 2 + ((y - 17.5) / 17) ** 2 <= 1
    rng = np.random.default_rng(0)
    hu = np.where(body, 40 + 2 * x - y, -1000) + rng.integers(-30, 31, SHAPE)   # noisy integers
    hu = np.where(labels == 1, 70 + rng.integers(-15, 16, SHAPE), hu)
    hu = np.where(labels == 2, 10 + rng.integers(-15, 16, SHAPE), hu)
    return hu.astype(np.float64), labels


def write_case(folder, code, scaling="none", oblique=False, name=None):
    """The phantom stored in orientation `code` (array flipped/permuted, affine composed the same
    way, as scanners and synthetic_ct do), with header scaling; CaseFiles of volume + label."""
    hu, labels = phantom()
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-12.0, 30.0, -100.0]
    if oblique:   # 10 degrees about z: still closest to the same axes
        a = np.deg2rad(10)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        affine = rot @ affine
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt(tuple(code)))
    hu = nib.orientations.apply_orientation(hu, transform)
    labels = np.ascontiguousarray(nib.orientations.apply_orientation(labels, transform))
    affine = affine @ nib.orientations.inv_ornt_aff(transform, SHAPE)
    pair = SCALINGS[scaling]
    stored = hu if pair is None else (hu - pair[1]) / pair[0]
    vol = nib.Nifti1Image(np.rint(stored).astype(np.int16), affine)
    seg = nib.Nifti1Image(labels, affine)
    for img in (vol, seg):
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    if pair is not None:
        vol.header.set_slope_inter(*pair)
    name = name or f"{code}_{scaling}{'_oblique' if oblique else ''}"
    files = CaseFiles(name, os.path.join(folder, f"{name}.nii.gz"),
                      os.path.join(folder, f"{name}_label.nii.gz"))
    nib.save(vol, files.image_path)
    nib.save(seg, files.label_path)
    assert nib.aff2axcodes(nib.load(files.image_path).affine) == tuple(code)
    return files


# --- the stand-in model --------------------------------------------------------------------------

def examplegen_slices(files, config):
    """{slice_index: (image int16 [H, W, K], label uint8 [H, W])} from the ExampleGen's own
    serialized examples of this case (every slice)."""
    examples, _ = case_examples(files, dataclasses.replace(config, selection="all"), "eval")
    out = {}
    for data in examples:
        f = tf.train.Example.FromString(data).features.feature
        shape = list(f[F.IMAGE_SHAPE].int64_list.value)
        image = np.frombuffer(f[F.IMAGE].bytes_list.value[0], F.IMAGE_DTYPE).reshape(shape)
        label = np.frombuffer(f[F.LABEL].bytes_list.value[0], F.LABEL_DTYPE).reshape(shape[:2])
        out[f[F.SLICE_INDEX].int64_list.value[0]] = (image, label)
    return out


def perfect_answers(slices, classes, flip=None):
    """The model-grid labels of examplegen_slices [Z, H, W] as probabilities [Z, H, W, C]:
    C = 1 (liver incl. tumour, 0/1) or 3 (one-hot background / liver / tumour). `flip`: axis of
    [Z, H, W] to flip, a deliberately wrong model."""
    labels = np.stack([slices[z][1] for z in range(len(slices))])
    if flip is not None:
        labels = np.flip(labels, flip)
    if classes == 1:
        return (labels > 0)[..., None].astype(np.float32)
    return np.eye(3, dtype=np.float32)[labels]


class PerfectModel:
    """Stands in for the exported SavedModel: `.signatures["serving_default"](examples=...)`
    returns {"probabilities": ...} like the real one, looking each example up by its
    volume_id and slice_index. Keeps the largest difference between the images it was sent and
    the ExampleGen's images of the same slices."""

    def __init__(self, files, config, classes, flip=None):
        self.case_id = os.path.basename(files.image_path).split(".nii")[0]
        slices = examplegen_slices(files, config)
        self.answers = perfect_answers(slices, classes, flip)
        self.images = {z: image for z, (image, _) in slices.items()}
        self.max_image_diff = 0
        self.signatures = {"serving_default": self._serve}

    def _serve(self, examples):
        out = []
        for data in examples.numpy():
            f = tf.train.Example.FromString(data).features.feature
            assert f[F.VOLUME_ID].bytes_list.value[0].decode() == self.case_id
            z = f[F.SLICE_INDEX].int64_list.value[0]
            image = np.frombuffer(f[F.IMAGE].bytes_list.value[0], F.IMAGE_DTYPE).reshape(
                self.images[z].shape)
            self.max_image_diff = max(self.max_image_diff, int(
                np.abs(image.astype(int) - self.images[z]).max()))
            out.append(self.answers[z])
        return {"probabilities": tf.constant(np.stack(out))}


def run_predict(files, config, model, out_dir):
    """predict.py's own path for an already loaded model: load_input -> segment_case (writes the
    NIfTI). Returns the written image and the input label image."""
    out_path = os.path.join(out_dir,
                            os.path.basename(files.image_path).replace(".nii", "_pred.nii"))
    case = load_input(files.image_path)
    # 5: batches that do not divide Z. No post-processing: the geometry alone is under test.
    segmenter.segment_case(inference_model.serving_function(model), config, case, out_path,
                           InferenceConfig(batch_size=5, postprocess=False))
    return nib.load(out_path), nib.load(files.label_path)


def dices(pred, true, classes):
    """Dice of liver (incl. tumour) and, for three classes, of tumour."""
    out = {"liver": dice_numpy(pred > 0, true > 0)}
    if classes == 3:
        out["tumour"] = dice_numpy(pred == 2, true == 2)
    return out


def check_written(written, label_img, files):
    """A uint8 mask on the input's grid: same shape, affine and axis codes."""
    assert written.shape == label_img.shape, files.image_path
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, nib.load(files.image_path).affine, atol=1e-6)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(label_img.affine)


# --- 1. geometry with known answers --------------------------------------------------------------

@pytest.mark.parametrize("classes", [1, 3])
def test_perfect_model_gives_the_label_back_exactly_in_every_orientation(tmp_path, classes):
    # The model's grid is the scan's (no resampling), so the answer is exact in all 48
    # orientations; scalings cycle so that each one meets several orientations.
    for i, code in enumerate(ALL_CODES):
        files = write_case(tmp_path, code, list(SCALINGS)[i % len(SCALINGS)], oblique=i == 5)
        model = PerfectModel(files, IDENTITY, classes)
        written, label_img = run_predict(files, IDENTITY, model, tmp_path)
        check_written(written, label_img, files)
        true = np.asanyarray(label_img.dataobj)
        got = np.asanyarray(written.dataobj)
        expected = true if classes == 3 else (true > 0).astype(np.uint8)
        assert np.array_equal(got, expected), (code, dices(got, true, classes))
        assert model.max_image_diff == 0, code


def resampling_limit(files, config, classes):
    """What a perfect model can give back at best through this grid, in canonical order, made
    without predict.py: the ExampleGen's canonical label, resampled to the model's grid as the
    ExampleGen does (nearest) and back by the documented inverse (linear per class, then
    threshold / argmax)."""
    case = load_case(files)
    grid = resample_to_config(canonical_to_display(case.labels), case, config, order=0)
    probs = (grid > 0)[..., None].astype(np.float32) if classes == 1 else np.eye(3)[grid]
    back = np.stack([model_grid_to_canonical(probs[..., c], case, config, order=1)
                     for c in range(probs.shape[-1])], axis=-1)
    return class_map(back).astype(np.uint8)


def canonical(img):
    """A written image's array in canonical RAS order (as the ExampleGen reorients)."""
    return nib.orientations.apply_orientation(np.asanyarray(img.dataobj),
                                              nib.io_orientation(img.affine))


@pytest.mark.parametrize("name", sorted(RESAMPLED))
@pytest.mark.parametrize("classes", [1, 3])
def test_perfect_model_gives_the_label_back_through_resampling(tmp_path, name, classes):
    # Through a resampled grid the answer is the resampling limit, exactly, in every
    # orientation. Where the model's grid is at least as fine as the scan's that is the label
    # itself up to Dice >= 0.98 per label. A coarser grid moves an edge by up to one scan pixel
    # (more where tumour, liver and background meet: the argmax of three interpolated classes),
    # which costs a 6-pixel tumour ~0.2 of Dice: there the floors are lower, but still far above
    # a flipped model's (test_a_flipped_model_fails_the_check).
    config = RESAMPLED[name]
    floor = FLOORS.get(name, {"liver": 0.98, "tumour": 0.98})
    for i, code in enumerate(FEW_CODES):
        files = write_case(tmp_path, code, list(SCALINGS)[i % len(SCALINGS)], oblique=i == 1)
        model = PerfectModel(files, config, classes)
        written, label_img = run_predict(files, config, model, tmp_path)
        check_written(written, label_img, files)
        np.testing.assert_array_equal(canonical(written),
                                      resampling_limit(files, config, classes), err_msg=code)
        got, true = np.asanyarray(written.dataobj), np.asanyarray(label_img.dataobj)
        if floor is None:
            assert 0 < np.count_nonzero(got) < np.count_nonzero(true) and not got[true == 0].any()
        else:
            scores = dices(got, true, classes)
            assert all(v >= floor[k] for k, v in scores.items()), (code, scores)
        assert model.max_image_diff == 0, code


@pytest.mark.parametrize("flip", [0, 1, 2], ids=["z", "rows", "cols"])
def test_a_flipped_model_fails_the_check(tmp_path, flip):
    # The same check on a model whose answer is mirrored along one axis of its grid: the liver
    # Dice falls far below 0.98 (the tumour's to 0), in every orientation and grid.
    for code in FEW_CODES:
        files = write_case(tmp_path, code, "half")
        for name, config in (("identity", IDENTITY), ("down", RESAMPLED["down"]),
                             ("spacing_pad", RESAMPLED["spacing_pad"])):
            model = PerfectModel(files, config, 3, flip=flip)
            written, label_img = run_predict(files, config, model, tmp_path)
            scores = dices(np.asanyarray(written.dataobj), np.asanyarray(label_img.dataobj), 3)
            assert scores["liver"] < 0.8 and scores["tumour"] < 0.2, (code, name, scores)


# --- 2. predict.py's pixels are the ExampleGen's -------------------------------------------------

def test_predict_sends_the_examplegen_pixels(tmp_path):
    """volume_to_model_input of inference.cases.load_input equals the images in the ExampleGen's
    examples, bit for bit, for every slice; the float-HU route (load_case) that predict.py used
    before differs by at most 1 HU on a few pixels of header-scaled files (measured here, as
    predict.py's docstring says)."""
    cases = [write_case(tmp_path, code, scaling) for code, scaling in
             (("RAS", "offset"), ("LPS", "half"), ("LAS", "odd"), ("PIR", "none"))]
    # Realistic anatomy too: synthetic LiTS-like cases.
    for i, (code, scaling) in enumerate((("RAS", "none"), ("LPS", "offset"), ("LAS", "half"),
                                         ("PIR", "offset"))):
        vol, seg = generate_case(i, in_plane=96, slices_range=(16, 16), orientation=code,
                                 scaling=scaling).to_nifti()
        files = CaseFiles(f"syn{i}", str(tmp_path / f"syn-{i}.nii.gz"),
                          str(tmp_path / f"syn-{i}_label.nii.gz"))
        nib.save(vol, files.image_path)
        nib.save(seg, files.label_path)
        cases.append(files)
    old_diff, old_count, pixels = 0, 0, 0
    for files in cases:
        for config in (SliceConfig(size=(64, 48), context=1),
                       SliceConfig(size=(40, 40), context=2, target_spacing=0.9)):
            expected = examplegen_slices(files, config)
            sent = volume_to_model_input(load_input(files.image_path), config)
            assert len(sent) == len(expected)
            for z, (image, _) in expected.items():
                np.testing.assert_array_equal(sent[z], image, err_msg=f"{files.image_path} z={z}")
            old = volume_to_model_input(load_case(CaseFiles("x", files.image_path, None)), config)
            diff = np.abs(old.astype(int) - sent)
            old_diff = max(old_diff, int(diff.max()))
            old_count += int(np.count_nonzero(diff))
            pixels += diff.size
    print(f"float-HU route: max {old_diff} HU on {old_count} of {pixels} pixels")
    # Measured: max 1 HU, on 0.05% of these pixels (up to 0.2% of a header-scaled file's).
    assert old_diff <= 1 and old_count / pixels < 0.01


# --- the whole command line, with a saved stand-in -----------------------------------------------

class _SavedPerfectModel(tf.Module):
    """The perfect model as a real SavedModel, answering by slice_index from a constant table."""

    def __init__(self, answers):
        super().__init__()
        self.answers = tf.constant(answers)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        spec = {F.SLICE_INDEX: tf.io.FixedLenFeature([], tf.int64)}
        z = tf.io.parse_example(examples, spec)[F.SLICE_INDEX]
        return {"probabilities": tf.gather(self.answers, z)}


SAVED_CONFIG = RESAMPLED["spacing_fine"]


def save_answering_model(answers, model_dir: str) -> str:
    """_SavedPerfectModel(answers) laid out like the Trainer's export (saved_model.pb +
    assets.extra/slice_config.json with SAVED_CONFIG)."""
    from schema.contract import MODEL_SLICE_CONFIG_FILE as SLICE_CONFIG_FILE
    module = _SavedPerfectModel(answers)
    tf.saved_model.save(module, model_dir,
                        signatures={"serving_default": module.serve.get_concrete_function()})
    os.makedirs(os.path.join(model_dir, os.path.dirname(SLICE_CONFIG_FILE)))
    with open(os.path.join(model_dir, SLICE_CONFIG_FILE), "w") as f:
        json.dump(SAVED_CONFIG.to_dict(), f)
    return model_dir


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A PIR, header-scaled case and a SavedModel laid out like the Trainer's export that
    segments it perfectly (3 classes)."""
    folder = tmp_path_factory.mktemp("saved")
    files = write_case(folder, "PIR", "half", name="volume-3")
    answers = perfect_answers(examplegen_slices(files, SAVED_CONFIG), 3)
    return files, save_answering_model(answers, str(folder / "model"))


def test_main_writes_the_label_back_and_prints_dice(saved, tmp_path, capsys):
    files, model_dir = saved
    out = str(tmp_path / "mask.nii.gz")
    assert predict.main(["--model", model_dir, "--input", files.image_path, "--output", out,
                         "--label", files.label_path, "--no-postprocess"]) == 0
    written, label_img = nib.load(out), nib.load(files.label_path)
    check_written(written, label_img, files)
    np.testing.assert_array_equal(canonical(written), resampling_limit(files, SAVED_CONFIG, 3))
    printed = capsys.readouterr().out
    for name in ("Liver", "Tumour"):
        line = next(l for l in printed.splitlines() if l.startswith(f"{name} Dice"))
        assert float(line.split()[-1]) >= 0.98, printed
    # segment_volume (the same without --label) writes the same mask.
    mask, channels = segmenter.segment_volume(model_dir, files.image_path, str(tmp_path / "b.nii"),
                                              InferenceConfig(postprocess=False))
    assert channels == 3
    np.testing.assert_array_equal(mask, np.asanyarray(written.dataobj))


# --- 3. bad input: one line naming the file and the reason, exit status 1 ------------------------

def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _not_nifti(path):
    with gzip.open(path, "wb") as f:
        f.write(b"this is not a nifti header" * 20)


def _four_d(path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), path)


def _nan(path):
    img = nib.load(path)
    data = np.asarray(img.get_fdata(), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)


def _other_shape(path):
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(np.array(img.shape) + (1, 0, 0), np.uint8), img.affine),
             path)


def _other_values(path):
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine), path)


def _no_saved_model(model_dir):
    os.remove(os.path.join(model_dir, "saved_model.pb"))


def _broken_saved_model(model_dir):
    with open(os.path.join(model_dir, "saved_model.pb"), "wb") as f:
        f.write(b"\x00garbage" * 10)


def _no_slice_config(model_dir):
    shutil.rmtree(os.path.join(model_dir, "assets.extra"))


# (which file is spoiled, how, words one of which the reason must contain)
BAD_INPUTS = {
    "missing_volume": ("image", os.remove, ["not found"]),
    "not_nifti": ("image", _not_nifti, ["nifti"]),
    "truncated_gzip": ("image", _truncate, ["truncated", "corrupt"]),
    "four_d": ("image", _four_d, ["3-d"]),
    "nan_voxels": ("image", _nan, ["nan"]),
    "label_of_another_shape": ("label", _other_shape, ["shape"]),
    "label_values": ("label", _other_values, ["outside"]),
    "missing_model_dir": ("model", lambda d: os.rename(d, d + ".gone"), ["not found"]),
    "not_a_saved_model": ("model", _no_saved_model, ["savedmodel"]),
    "broken_saved_model": ("model", _broken_saved_model, ["cannot load"]),
    "no_slice_config": ("model", _no_slice_config, ["slice config"]),
    "unwritable_output": ("output", None, ["cannot write"]),
}


def _spoiled_copy(saved, tmp_path, kind):
    """Copies of the good case and model with one thing spoiled; (argv, the path that must be
    named)."""
    files, model_dir = saved
    image, label = str(tmp_path / "volume-3.nii.gz"), str(tmp_path / "segmentation-3.nii.gz")
    model = str(tmp_path / "model")
    shutil.copy(files.image_path, image)
    shutil.copy(files.label_path, label)
    shutil.copytree(model_dir, model)
    output = str(tmp_path / "out" / "mask.nii.gz") if kind == "unwritable_output" else str(
        tmp_path / "mask.nii.gz")
    which, spoil, _ = BAD_INPUTS[kind]
    path = {"image": image, "label": label, "model": model, "output": output}[which]
    if spoil is not None:
        spoil(path)
    if kind == "no_slice_config":
        path = os.path.join(model, "assets.extra", "slice_config.json")
    return ["--model", model, "--input", image, "--output", output, "--label", label], path


@pytest.mark.filterwarnings("ignore:Unexpected end-group tag")   # the broken saved_model.pb
@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file(saved, tmp_path, capsys, kind):
    argv, path = _spoiled_copy(saved, tmp_path, kind)
    assert predict.main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"predict.py: error: {path}: "), lines[0]
    reason = lines[0][len(f"predict.py: error: {path}: "):].lower()
    assert any(w in reason for w in BAD_INPUTS[kind][2]), lines[0]
    assert not os.path.exists(argv[argv.index("--output") + 1])


@pytest.mark.parametrize("kind", ["truncated_gzip", "broken_saved_model"])
def test_bad_input_from_the_shell_has_no_traceback(saved, tmp_path, kind):
    # As a user runs it. A bad volume is rejected before TensorFlow is imported, so stderr is
    # that one line; a broken model needs TensorFlow, whose start-up chatter comes first.
    argv, path = _spoiled_copy(saved, tmp_path, kind)
    proc = subprocess.run([sys.executable, "predict.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"predict.py: error: {path}: "), proc.stderr
    if kind == "truncated_gzip":
        assert len(lines) == 1, proc.stderr


def test_post_processing_reaches_the_written_mask(saved, tmp_path):
    """predict.py post-processes in the canonical grid with its spacing: a speck of liver far
    from the liver, which the stand-in answers, is in the mask with --no-postprocess and gone
    by default; otherwise the two masks are equal."""
    files, _ = saved
    answers = perfect_answers(examplegen_slices(files, SAVED_CONFIG), 3)
    answers[len(answers) // 2, 2:8, 2:8] = [0.0, 1.0, 0.0]      # the speck: near a corner
    model_dir = save_answering_model(answers, str(tmp_path / "speck_model"))
    written = {}
    for flag in ("--postprocess", "--no-postprocess"):
        out = str(tmp_path / f"{flag.strip('-')}.nii.gz")
        assert predict.main(["--model", model_dir, "--input", files.image_path,
                             "--output", out, flag]) == 0
        written[flag] = canonical(nib.load(out))
    raw, cleaned = written["--no-postprocess"], written["--postprocess"]
    assert np.count_nonzero(raw != cleaned) > 0, "the speck should have been removed"
    expected, report = postprocess(raw, load_input(files.image_path).spacing)
    np.testing.assert_array_equal(cleaned, expected)
    assert report["liver_components_removed"] >= 1, report


def test_mirroring_averages_the_unmirrored_answers(tmp_path):
    """--mirror flips: the model's answer to each mirrored input is mirrored back and the four
    averaged. A stand-in that answers one fixed, asymmetric pattern whatever it is shown makes
    the expected mean exact (a wrong axis or a missing un-flip would change it)."""
    files = write_case(tmp_path, "RAS")
    case = load_input(files.image_path)
    slices = examplegen_slices(files, IDENTITY)
    h, w = slices[0][1].shape
    pattern = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)

    def serve(batch):
        return np.repeat(pattern[None], len(batch), axis=0)
    plain = segmenter.predict_probabilities(serve, case, IDENTITY, mirror="none")
    mirrored = segmenter.predict_probabilities(serve, case, IDENTITY, mirror="flips")
    mean = (pattern + pattern[::-1] + pattern[:, ::-1] + pattern[::-1, ::-1]) / 4
    expected = segmenter.predict_probabilities(
        lambda batch: np.repeat(mean[None], len(batch), axis=0), case, IDENTITY)
    np.testing.assert_allclose(mirrored, expected, atol=1e-6)
    assert not np.allclose(plain, mirrored)
    with pytest.raises(ValueError, match="mirror"):
        segmenter.predict_probabilities(serve, case, IDENTITY, mirror="sideways")
