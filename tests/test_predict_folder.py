"""predict.py over a folder (LiTS layout) and a CSV manifest, with a real SavedModel.

The model is tests/test_volume_eval.py's threshold model (exported like the Trainer's model, a
`serving_default` on serialized raw examples, 3 classes): crude but real, and fast, so whole
volumes go through the command line in seconds. Checked: one bad file among good ones is named,
skipped and fails the run (exit 1); every good volume gets the mask a one-volume run writes, byte
for byte; predictions.csv's volumes and Dice are the masks' own; discovery errors are counted.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

import predict
from models.metrics import dice_numpy
from inference import writers
from inference.cases import discover_inputs
from preprocessing.nifti import CaseError
from preprocessing.synthetic_ct import write_dataset
from schema.contract import MODEL_SLICE_CONFIG_FILE
from test_volume_eval import export_model

GOOD = ["volume-0", "volume-1", "volume-2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data folder: 3 good labelled cases, a truncated unlabelled volume-3 and an orphan
    segmentation-7; model directory; work folder)."""
    work = tmp_path_factory.mktemp("predict_folder")
    data = str(work / "data")
    write_dataset(data, num_cases=3, in_plane=32, slices_range=(8, 10), progress=False)
    raw = open(os.path.join(data, "volume-0.nii.gz"), "rb").read()
    with open(os.path.join(data, "volume-3.nii.gz"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    shutil.copy(os.path.join(data, "segmentation-0.nii.gz"),
                os.path.join(data, "segmentation-7.nii.gz"))
    return data, export_model(str(work / "model")), work


@pytest.fixture(scope="module")
def folder_run(setup):
    """predict.py on the folder: (exit code, stdout, stderr, output folder)."""
    data, model, work = setup
    out = str(work / "out")
    stdout, stderr = io.StringIO(), io.StringIO()   # capsys is per test; this run is shared
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = predict.main(["--model", model, "--input", data, "--output", out])
    return code, stdout.getvalue(), stderr.getvalue(), out


def _rows(out):
    with open(os.path.join(out, writers.PREDICTIONS_CSV)) as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == writers.PREDICTION_COLUMNS
        return {r["case"]: r for r in reader}


def _single_run(model, image, out):
    assert predict.main(["--model", model, "--input", image, "--output", out]) == 0
    return open(out, "rb").read()


def test_bad_files_are_named_skipped_and_fail_the_run(setup, folder_run):
    data, _, _ = setup
    code, stdout, stderr, out = folder_run
    assert code == 1
    truncated = os.path.join(data, "volume-3.nii.gz")
    orphan = os.path.join(data, "segmentation-7.nii.gz")
    errors = [l for l in stderr.splitlines() if l.startswith("predict.py: error: ")]
    assert len(errors) == 2, stderr
    assert any(l.startswith(f"predict.py: error: {truncated}: truncated") for l in errors)
    assert any(l.startswith(f"predict.py: error: {orphan}: segmentation without") for l in errors)
    # The summary: everything found is counted (written + failed), each failed file named.
    assert f"3 of 5 volumes written to {out}" in stdout and "2 failed" in stdout, stdout
    assert "volumes/min" in stdout
    failed = [l for l in stdout.splitlines() if l.startswith("predict.py: failed: ")]
    assert sorted(l.split(": ")[2] for l in failed) == sorted([truncated, orphan]), stdout


def test_one_mask_per_good_volume_equal_to_a_single_run(setup, folder_run, tmp_path):
    data, model, _ = setup
    _, _, stderr, out = folder_run
    assert sorted(os.listdir(out)) == sorted(
        [f"{c}{writers.MASK_SUFFIX}" for c in GOOD] + [writers.PREDICTIONS_CSV])
    for case in GOOD:
        single = _single_run(model, os.path.join(data, f"{case}.nii.gz"),
                             str(tmp_path / f"{case}.nii.gz"))
        with open(os.path.join(out, f"{case}{writers.MASK_SUFFIX}"), "rb") as f:
            assert f.read() == single, case
    # Not a terminal here: a log line per volume instead of the bar.
    assert sum(" Volume " in l or l.startswith("Volume ") for l in stderr.splitlines()) >= 3


def test_the_csv_holds_each_masks_volumes_and_dice(setup, folder_run):
    data, _, _ = setup
    out = folder_run[3]
    rows = _rows(out)
    assert sorted(rows) == GOOD
    for case in GOOD:
        row = rows[case]
        mask_img = nib.load(os.path.join(out, f"{case}{writers.MASK_SUFFIX}"))
        mask = np.asanyarray(mask_img.dataobj)
        true = np.asanyarray(nib.load(os.path.join(
            data, case.replace("volume", "segmentation") + ".nii.gz")).dataobj)
        voxel_ml = float(np.prod(nib.load(os.path.join(data, f"{case}.nii.gz"))
                                 .header.get_zooms()[:3])) / 1000
        assert np.count_nonzero(mask) > 0, case   # the threshold model finds some liver
        assert float(row["liver_ml"]) == pytest.approx(np.count_nonzero(mask) * voxel_ml,
                                                       abs=1e-5)
        assert float(row["tumour_ml"]) == pytest.approx(np.count_nonzero(mask == 2) * voxel_ml,
                                                        abs=1e-5)
        assert float(row["liver_dice"]) == pytest.approx(dice_numpy(mask > 0, true > 0),
                                                         abs=1e-6)
        assert float(row["tumour_dice"]) == pytest.approx(dice_numpy(mask == 2, true == 2),
                                                          abs=1e-6)
        assert 0 < float(row["seconds"]) < 60


def test_a_manifest_with_an_unlabelled_row_and_a_missing_file(setup, folder_run, capsys):
    data, model, work = setup
    manifest = work / "cases.csv"
    manifest.write_text("image,label,case_id\n"
                        "data/volume-0.nii.gz,data/segmentation-0.nii.gz,first\n"
                        "data/volume-1.nii.gz,,\n"
                        "data/volume-9.nii.gz,,\n")
    out = str(work / "out_manifest")
    assert predict.main(["--model", model, "--input", str(manifest), "--output", out]) == 1
    captured = capsys.readouterr()
    missing = os.path.join(data, "volume-9.nii.gz")
    assert f"predict.py: error: {missing}: file not found" in captured.err
    assert "2 of 3 volumes written" in captured.out and "1 failed" in captured.out
    rows = _rows(out)
    assert sorted(rows) == ["first", "volume-1"]
    assert rows["first"]["liver_dice"] != "" and rows["volume-1"]["liver_dice"] == ""
    assert rows["volume-1"]["tumour_dice"] == "" and float(rows["volume-1"]["liver_ml"]) > 0
    # The same volumes, the same masks as the folder run's.
    for name, case in (("first", "volume-0"), ("volume-1", "volume-1")):
        with open(os.path.join(out, f"{name}{writers.MASK_SUFFIX}"), "rb") as a, \
                open(os.path.join(folder_run[3], f"{case}{writers.MASK_SUFFIX}"), "rb") as b:
            assert a.read() == b.read(), name


def test_a_volume_without_segmentation_is_a_case_to_segment(tmp_path):
    for name in ("volume-0.nii.gz", "segmentation-0.nii.gz", "volume-5.nii", "notes.txt",
                 "volume-12.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    cases, errors = discover_inputs(str(tmp_path))
    assert errors == []
    assert [(c.case_id, c.label_path is not None) for c in cases] == [
        ("volume-0", True), ("volume-5", False), ("volume-12", False)]
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CaseError, match="no volumes found"):
        discover_inputs(str(tmp_path / "empty"))


def test_mask_paths_stay_in_the_folder_and_never_collide():
    """Case ids from a manifest may hold path separators: each mask stays inside the output
    folder under a name no other case id maps to (replacing "/" by "_" sent "a/b" and "a_b" to
    one file, the second overwriting the first)."""
    ids = ["a/b", "a_b", "a%2Fb", "a\\b", "a%5Cb", "volume-3", "../up"]
    paths = [writers.mask_path("out", case_id) for case_id in ids]
    assert len(set(paths)) == len(ids), paths
    for path in paths:
        assert os.path.dirname(path) == "out" and path.endswith(writers.MASK_SUFFIX), path
    assert writers.mask_path("out", "volume-3") == os.path.join(
        "out", "volume-3" + writers.MASK_SUFFIX)


@pytest.mark.parametrize("damage, reason", [
    ("no saved_model.pb", "not a SavedModel directory"),
    ("truncated saved_model.pb", "cannot load the SavedModel"),
    ("no slice config", "slice config not found"),
    ("garbled slice config", "invalid slice config"),
])
def test_a_broken_model_folder_is_one_line_naming_it(setup, tmp_path, capsys, damage, reason):
    """What a full disk or an interrupted copy leaves of an export: one error line that names
    the folder (or the file) and what is wrong, exit 1, no mask, no traceback."""
    data, model, _ = setup
    broken = str(tmp_path / "model")
    shutil.copytree(model, broken)
    graph = os.path.join(broken, "saved_model.pb")
    config = os.path.join(broken, MODEL_SLICE_CONFIG_FILE)
    if damage == "no saved_model.pb":
        os.remove(graph)
    elif damage == "truncated saved_model.pb":
        size = os.path.getsize(graph)
        with open(graph, "r+b") as f:
            f.truncate(size // 3)
    elif damage == "no slice config":
        os.remove(config)
    else:
        with open(config, "w") as f:
            f.write('{"size": [32')
    out = str(tmp_path / "mask.nii.gz")
    code = predict.main(["--model", broken, "--input", os.path.join(data, "volume-0.nii.gz"),
                         "--output", out])
    err = capsys.readouterr().err
    assert code == 1 and not os.path.exists(out), err   # EXIT_BAD_INPUT
    lines = [line for line in err.splitlines() if line.startswith("predict.py: error:")]
    assert len(lines) == 1 and broken in lines[0] and reason in lines[0], err
    assert "Traceback" not in err
