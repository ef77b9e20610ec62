"""Every path the pipeline reads or writes may be a URI: each module that touches files, driven
through TensorFlow's in-memory ram:// filesystem (what gs:// and s3:// go through too: tf.io.gfile),
compared with the same files on local disk. Beam's own sinks (shards, report lines) cannot write
ram://, so the Beam conversion is tested with its input there. Last, a scan of the production
code for local-only file calls outside an allow-list that says why each one stays."""
from __future__ import annotations

import json
import types
import uuid

import keras
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from common import storage
from preprocessing.case_discovery import discover_lits_cases, discover_manifest_cases
from preprocessing.nifti import CaseError, load_case, read_case
from remote_io_helpers import (BAD_FILES, allow_list_violations, copy_case, cut_in_half,
                               local_file_calls, metadata_with_artifacts, nifti_from_bytes,
                               scan_production_code, stored_array, write_lits_case, write_nifti)


@pytest.fixture
def ram():
    """A fresh ram:// folder (the ram filesystem is one per process)."""
    root = f"ram://{uuid.uuid4().hex}"
    yield root
    try:
        storage.remove_tree(root)
    except OSError:   # TF's ram:// lists "assets.extra" as "assets/.extra" and then fails
        pass


# --- storage -------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["local", "ram"])
def test_storage_round_trip(tmp_path, ram, where):
    root = str(tmp_path) if where == "local" else ram
    path = storage.join(root, "a", "b.txt")
    storage.write_text(path, "hello")
    assert storage.read_text(path) == "hello" and storage.isfile(path)
    assert storage.isdir(storage.join(root, "a")) and storage.listdir(
        storage.join(root, "a")) == ["b.txt"]   # no temporary left behind
    storage.copy(path, str(tmp_path / "copy.txt"))            # to local
    storage.copy(str(tmp_path / "copy.txt"), storage.join(root, "c", "d.txt"))   # and back
    storage.rename(storage.join(root, "c", "d.txt"), storage.join(root, "c", "e.txt"))
    assert storage.listdir(storage.join(root, "c")) == ["e.txt"]
    assert storage.read_bytes(storage.join(root, "c", "e.txt")) == b"hello"
    storage.remove_tree(storage.join(root, "a"))
    assert not storage.exists(path)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(path)
    assert storage.normpath(storage.join(root, "x", "..", "y")) == storage.join(root, "y")


# --- NIfTI: discovery, reading, errors -----------------------------------------------------------

def test_lits_discovery_on_ram(tmp_path, ram):
    data = storage.join(ram, "LiTS")
    for i in range(3):
        write_lits_case(data, i)
    storage.write_bytes(storage.join(data, "volume-7.nii.gz"), b"orphan")
    storage.write_text(storage.join(data, "notes.txt"), "not a case")
    cases, errors = discover_lits_cases(data)
    assert [c.case_id for c in cases] == ["volume-0", "volume-1", "volume-2"]
    assert cases[1].image_path == f"{data}/volume-1.nii.gz"
    assert [(e.case_id, e.path) for e in errors] == [("volume-7", f"{data}/volume-7.nii.gz")]
    assert "missing segmentation" in errors[0].reason


@pytest.mark.parametrize("suffix,scaling", [(".nii", "half"), (".nii.gz", "offset"),
                                            (".nii.gz", "none")])
def test_reading_from_ram_equals_reading_the_local_file(tmp_path, ram, suffix, scaling):
    remote = write_lits_case(ram, 0, suffix, scaling=scaling, orientation="PIR")
    local = copy_case(remote, str(tmp_path))
    a, b = read_case(remote), read_case(local)
    reference = nib.load(local.image_path)   # nibabel's own reading of the local file
    for raw in (a, b):
        np.testing.assert_array_equal(raw.stored, stored_array(reference))
        assert raw.stored.dtype == reference.get_data_dtype()
        assert (raw.slope, raw.inter) == (float(reference.dataobj.slope),
                                          float(reference.dataobj.inter))
        np.testing.assert_array_equal(raw.label_stored[0],
                                      stored_array(nib.load(local.label_path)))
    np.testing.assert_array_equal(a.image.affine, b.image.affine)
    ca, cb = load_case(remote), load_case(local)
    np.testing.assert_array_equal(ca.hu, cb.hu)
    np.testing.assert_array_equal(ca.labels, cb.labels)
    assert ca.spacing == cb.spacing


def test_gzip_is_told_by_its_bytes_not_its_name(ram):
    files = write_lits_case(ram, 0, ".nii.gz")
    volume = nifti_from_bytes(storage.read_bytes(files.image_path))
    gzip_named_nii = write_nifti(storage.join(ram, "v.nii"), volume, gzipped=True)
    plain_named_gz = write_nifti(storage.join(ram, "w.nii.gz"), volume, gzipped=False)
    expected = stored_array(volume)
    for path in (gzip_named_nii, plain_named_gz):
        raw = read_case(files.__class__("v", path, None))
        np.testing.assert_array_equal(raw.stored, expected)


@pytest.mark.parametrize("kind", sorted(BAD_FILES) + ["truncated_nii"])
def test_bad_files_on_ram_name_the_uri(ram, kind):
    files = write_lits_case(ram, 0, ".nii" if kind == "truncated_nii" else ".nii.gz")
    which, spoil, words = BAD_FILES.get(kind, ("image", cut_in_half, ["truncated"]))
    path = files.image_path if which == "image" else files.label_path
    if spoil is None:
        storage.remove_tree(path)
    else:
        storage.write_bytes(path, spoil(storage.read_bytes(path)))
    with pytest.raises(CaseError) as info:
        load_case(files)
    assert info.value.path == path and path.startswith("ram://")
    assert any(w in info.value.reason.lower() for w in words), info.value.reason


def test_manifest_on_ram_resolves_relative_paths_against_its_folder(ram):
    data = storage.join(ram, "data")
    a, b = write_lits_case(data, 0), write_lits_case(data, 1)
    csv_path = storage.join(ram, "lists", "cases.csv")
    storage.write_text(csv_path, "\ufeffimage,label,case_id\r\n"   # a spreadsheet's BOM and CRLF
                       "../data/volume-0.nii.gz,../data/segmentation-0.nii.gz,\r\n"
                       f"{b.image_path},{b.label_path},p1\r\n")
    cases, errors = discover_manifest_cases(csv_path)
    assert not errors
    assert cases == [a, b.__class__("p1", b.image_path, b.label_path)]
    assert load_case(cases[0]).labels is not None


# --- the conversion ------------------------------------------------------------------------------

def test_beam_conversion_reads_its_input_from_ram(tmp_path, ram):
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions
    from preprocessing.beam_convert import add_conversion
    from preprocessing.conversion_plan import plan_conversion
    from preprocessing.conversion_report import summarize_conversion
    from preprocessing.conversion_settings import ConversionSettings
    from preprocessing.slices import SliceConfig

    for i in range(3):
        write_lits_case(storage.join(ram, "data"), i)
    plan = plan_conversion(ConversionSettings(eval_fraction=0.34), storage.join(ram, "data"))
    out = str(tmp_path / "out")
    split_dirs = {s: storage.join(out, s) for s in ("train", "eval")}
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=in_memory"])
    with beam.Pipeline(options=options) as p:
        add_conversion(p, plan, SliceConfig(size=(32, 32), keep_fraction=0.25), split_dirs,
                       out, storage.join(out, ".tmp"))
    summary = summarize_conversion(out, plan.input_cases)
    assert summary["cases_converted"] == 3 and summary["cases_quarantined"] == 0
    records = sum(1 for s in split_dirs.values() for _ in tf.data.TFRecordDataset(
        tf.io.gfile.glob(storage.join(s, "*")), "GZIP"))
    assert records == sum(summary["examples_per_split"].values()) > 0
    # Why the output is local here: Beam's filesystems (its sinks) know no ram://.
    with pytest.raises(ValueError):
        FileSystems.get_filesystem("ram://x")


def test_conversion_summary_and_converter_outputs_on_ram(ram):
    from preprocessing.conversion_report import summarize_conversion
    from preprocessing.convert import earlier_outputs
    from schema.contract import CASES_FILE, CONVERSION_SUMMARY_FILE, QUARANTINE_FILE
    storage.write_text(storage.join(ram, CASES_FILE), json.dumps(
        {"case_id": "volume-0", "split": "train", "num_slices": 8, "slices_written": 5}) + "\n")
    storage.write_text(storage.join(ram, QUARANTINE_FILE), json.dumps(
        {"file": "ram://x/volume-1.nii.gz", "case_id": "volume-1", "reason": "bad"}) + "\n")
    summary = summarize_conversion(ram, 2)
    assert json.loads(storage.read_text(storage.join(ram, CONVERSION_SUMMARY_FILE))) == summary
    assert summary["examples_per_split"]["train"] == 5 and summary["cases_quarantined"] == 1
    storage.write_bytes(storage.join(ram, "train", "data-00000-of-00001.tfrecord.gz"), b"x")
    storage.write_bytes(storage.join(ram, "train", ".hidden"), b"x")
    assert earlier_outputs([storage.join(ram, "train"), storage.join(ram, "eval")]) == [
        storage.join(ram, "train", "data-00000-of-00001.tfrecord.gz")]


def test_example_gen_keeps_a_manifest_uri(tmp_path, monkeypatch):
    from components.nifti_example_gen import NiftiExampleGen, read_custom_config
    from preprocessing.conversion_settings import ConversionSettings
    gen = NiftiExampleGen(None, ConversionSettings(manifest="gs://bucket/lists/cases.csv"))
    assert gen.exec_properties["input_base"] == "gs://bucket/lists"
    assert read_custom_config(gen.exec_properties).manifest == "gs://bucket/lists/cases.csv"
    monkeypatch.chdir(tmp_path)   # a local manifest is still made absolute
    gen = NiftiExampleGen(None, ConversionSettings(manifest="cases.csv"))
    assert gen.exec_properties["input_base"] == str(tmp_path)


# --- pipeline: the validation gate and the run summary -------------------------------------------

def test_gate_reads_anomalies_from_ram(ram):
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from components.anomalies_gate import ANOMALIES_FILE, describe_anomalies
    bad = anomalies_pb2.Anomalies()
    bad.anomaly_info["has_liver"].reason.add(description="Unexpected value 7")
    storage.write_bytes(storage.join(ram, "Split-train", ANOMALIES_FILE), bad.SerializeToString())
    storage.write_bytes(storage.join(ram, "Split-eval", ANOMALIES_FILE), b"")
    assert describe_anomalies(ram, ["train", "eval"]) == [
        "[train] feature 'has_liver': Unexpected value 7"]


def test_run_summary_reads_reports_from_ram(tmp_path, ram):
    from pipeline.summary import collect_run_summary
    from schema.contract import CONVERSION_SUMMARY_FILE, TRAINING_REPORT_FILE
    examples, model_run = storage.join(ram, "Examples", "1"), storage.join(ram, "ModelRun", "2")
    storage.write_text(storage.join(examples, CONVERSION_SUMMARY_FILE), json.dumps(
        {"examples_per_split": {"train": 5}, "cases_per_split": {"train": ["volume-0"]},
         "quarantined": []}))
    storage.write_text(storage.join(model_run, TRAINING_REPORT_FILE), '{"epochs_run": 3}')
    sqlite = str(tmp_path / "metadata.sqlite")   # the store itself is a local file
    metadata_with_artifacts(sqlite, {"Examples": examples, "ModelRun": model_run})
    summary = collect_run_summary(sqlite, with_evaluation=False)
    assert summary["examples_per_split"] == {"train": 5}
    assert summary["cases_per_split"] == {"train": 1} and summary["training"] == {"epochs_run": 3}


# --- the Trainer ---------------------------------------------------------------------------------

def _small_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_checkpoints_resume_and_best_weights_on_ram(ram):
    from trainer.checkpoints import (BEST_WEIGHTS, RESUME_METADATA, BestWeights,
                                     check_resume_point, resume_directory, trainer_root)
    run_dir = storage.join(ram, "Trainer", "model_run", "7")
    assert trainer_root(run_dir) == storage.join(ram, "Trainer")
    fn_args = types.SimpleNamespace(train_files=["t"], eval_files=["e"], transform_output="x",
                                    train_steps=4, custom_config={}, model_run_dir=run_dir)
    resume = resume_directory(fn_args)
    assert resume.startswith(storage.join(ram, "Trainer", "resume") + "/")
    model = _small_model()
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    best = BestWeights(resume + ".best", "val_dice")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(resume, delete_checkpoint=False), best])
    check_resume_point(resume, 3)   # Keras' metadata on ram://, read back: kept
    assert storage.exists(storage.join(resume, RESUME_METADATA))
    best.on_epoch_end(0, {"val_dice": 0.5})
    saved = [w.copy() for w in model.get_weights()]
    assert sorted(storage.listdir(resume + ".best")) == ["best.json", BEST_WEIGHTS]
    resumed = BestWeights(resume + ".best", "val_dice")   # a restarted run continues from it
    assert (resumed.best, resumed.best_epoch) == (0.5, 0)
    resumed.set_model(model)
    model.set_weights([np.zeros_like(w) for w in saved])
    assert resumed.restore_best(keep_copy_at=storage.join(run_dir, BEST_WEIGHTS))
    for got, want in zip(model.get_weights(), saved):
        np.testing.assert_array_equal(got, want)
    assert storage.exists(storage.join(run_dir, BEST_WEIGHTS))
    assert not storage.exists(resume + ".best")
    storage.write_text(storage.join(resume, RESUME_METADATA), "")   # killed while writing
    check_resume_point(resume, 3)
    assert not storage.exists(resume)


def test_training_report_and_precision_cache_on_ram(ram, monkeypatch):
    from schema.contract import TRAINING_REPORT_FILE
    from trainer import precision as P
    from trainer.run import _write_training_report
    device = types.SimpleNamespace(to_dict=lambda: {"policy": "float32"})
    _write_training_report(ram, device, 2, 3.0, 4.0, [0.5, 0.6])
    report = json.loads(storage.read_text(storage.join(ram, TRAINING_REPORT_FILE)))
    assert report["device"] == {"policy": "float32"} and report["val_dice"] == [0.5, 0.6]

    measured = []
    monkeypatch.setattr(P, "time_train_steps", lambda *a, **k: measured.append(1) or {
        "float32": 0.2, "mixed_bfloat16": 0.1})
    probe = P.cached_probe((8, 16), 8, storage.join(ram, "Trainer"))
    assert probe() == (0.2, 0.1) and probe() == (0.2, 0.1)
    assert len(measured) == 1   # the second answer came from the cache on ram://
    cache = json.loads(storage.read_text(storage.join(ram, "Trainer", P.PROBE_FILE)))
    assert [entry["fp32_s"] for entry in cache.values()] == [0.2]


def test_dali_cache_reads_its_sources_from_ram(tmp_path, ram):
    from trainer.dali_input import prepare_shards
    source = storage.join(ram, "Split-train", "data-00000.gz")
    storage.makedirs(storage.dirname(source))
    with tf.io.TFRecordWriter(source, "GZIP") as writer:
        for i in range(3):
            writer.write(f"record {i}".encode())
    shards = prepare_shards([source], str(tmp_path / "cache"))
    assert [r.numpy() for r in tf.data.TFRecordDataset(shards.records[0])] == [
        b"record 0", b"record 1", b"record 2"]
    with pytest.raises(ValueError, match="local"):
        prepare_shards([source], storage.join(ram, "cache"))


# --- predict.py ----------------------------------------------------------------------------------

def test_predict_from_ram_to_ram_writes_what_a_local_run_writes(tmp_path, ram, capsys):
    import predict
    from test_predict_geometry import (SAVED_CONFIG, _SavedPerfectModel, canonical,
                                       examplegen_slices, perfect_answers, resampling_limit,
                                       write_case)
    from trainer.export import write_slice_config
    files = write_case(tmp_path, "PIR", "half", name="volume-3")
    module = _SavedPerfectModel(perfect_answers(examplegen_slices(files, SAVED_CONFIG), 3))
    model_dir = storage.join(ram, "serving", "1")
    tf.saved_model.save(module, model_dir,
                        signatures={"serving_default": module.serve.get_concrete_function()})
    write_slice_config(model_dir, SAVED_CONFIG.to_dict())   # the Trainer's export writes it so
    remote = copy_case(files, storage.join(ram, "data"))
    local_out, remote_out = str(tmp_path / "mask.nii.gz"), storage.join(ram, "out", "mask.nii.gz")
    assert predict.main(["--model", model_dir, "--input", files.image_path,
                         "--output", local_out]) == 0
    assert predict.main(["--model", model_dir, "--input", remote.image_path, "--output",
                         remote_out, "--label", remote.label_path]) == 0
    assert "Liver Dice" in capsys.readouterr().out
    assert storage.read_bytes(remote_out) == storage.read_bytes(local_out)
    written = nifti_from_bytes(storage.read_bytes(remote_out))
    np.testing.assert_array_equal(canonical(written), resampling_limit(files, SAVED_CONFIG, 3))
    np.testing.assert_allclose(written.affine, nib.load(files.image_path).affine, atol=1e-6)
    assert written.get_data_dtype() == np.uint8
    missing = storage.join(ram, "serving", "2")
    assert predict.main(["--model", missing, "--input", remote.image_path,
                         "--output", remote_out]) == 1
    assert f"{missing}: model directory not found" in capsys.readouterr().err


# --- no local-only file call outside the allow-list ----------------------------------------------

def test_production_code_reads_and_writes_through_storage():
    assert allow_list_violations(scan_production_code()) == []


def test_the_scan_sees_local_file_calls():
    source = ("import os, shutil\nimport nibabel as nib\n"
              "def f(p):\n    # open(p) in a comment does not count\n"
              "    with open(p) as f:\n        pass\n"
              "    os.path.exists(p); shutil.copy(p, p); nib.load(p)\n"
              "    return storage.exists(p), 'os.listdir(p)'\n")
    assert local_file_calls(source) == [(5, "open("), (7, "nib.load"), (7, "os.path.exists"),
                                        (7, "shutil.")]
    assert any(p.startswith("predict.py: open( at lines [3]")
               for p in allow_list_violations({("predict.py", "open("): [3]}))
