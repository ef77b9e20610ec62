"""evaluation/volume_eval.py and components/volume_evaluator.py on tiny synthetic cases with a
real SavedModel.

The model is a crude one on purpose: a tf.Module exported like the Trainer's model (a
`serving_default` signature taking serialized raw examples, assets.extra/slice_config.json)
that calls a voxel liver when the centre slice's HU lie in LIVER_HU and tumour in TUMOUR_HU.
Its mistakes (muscle called liver, liver edges missed) give every metric something to measure,
and it runs in milliseconds, so whole volumes go through predict.py's code path quickly.
"""
from __future__ import annotations

import io
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from inference import segmenter
from inference.inference_config import InferenceConfig
from components.volume_evaluator import VolumeEvaluation, VolumeEvaluator, volume_evaluator
from models.metrics import dice_numpy
from evaluation import volume_eval
from evaluation.volume_metrics import METRIC_NAMES
from common import storage
from preprocessing import features as F
from preprocessing.case_discovery import discover_lits_cases
from preprocessing.conversion_plan import plan_conversion
from preprocessing.conversion_settings import ConversionSettings
from preprocessing.slices import SliceConfig
from preprocessing.synthetic_ct import write_dataset
from schema.contract import MODEL_SLICE_CONFIG_FILE

LIVER_HU, TUMOUR_HU = (45, 90), (15, 45)
SLICE_CONFIG = SliceConfig(size=(32, 32), context=1)


class _ThresholdModel(tf.Module):
    def __init__(self, channels: int = 3):
        super().__init__()
        self.channels = channels    # 3: background / liver / tumour; 1: liver (incl. tumour)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        spec = {F.IMAGE: tf.io.FixedLenFeature([], tf.string),
                F.IMAGE_SHAPE: tf.io.FixedLenFeature([3], tf.int64)}
        parsed = tf.io.parse_example(examples, spec)
        shape = tf.cast(parsed[F.IMAGE_SHAPE][0], tf.int32)
        images = tf.reshape(tf.io.decode_raw(parsed[F.IMAGE], tf.int16),
                            tf.concat([[-1], shape], 0))
        hu = tf.cast(images[..., shape[2] // 2], tf.float32)
        liver = tf.cast((hu >= LIVER_HU[0]) & (hu < LIVER_HU[1]), tf.float32)
        tumour = tf.cast((hu >= TUMOUR_HU[0]) & (hu < TUMOUR_HU[1]), tf.float32)
        if self.channels == 1:
            return {"probabilities": (liver + tumour)[..., None]}
        return {"probabilities": tf.stack([1.0 - liver - tumour, liver, tumour], axis=-1)}


def export_model(model_dir: str, channels: int = 3) -> str:
    """The threshold model laid out like the Trainer's export."""
    module = _ThresholdModel(channels)
    tf.saved_model.save(module, model_dir,
                        signatures={"serving_default": module.serve.get_concrete_function()})
    os.makedirs(os.path.join(model_dir, os.path.dirname(MODEL_SLICE_CONFIG_FILE)))
    with open(os.path.join(model_dir, MODEL_SLICE_CONFIG_FILE), "w") as f:
        json.dump(SLICE_CONFIG.to_dict(), f)
    return model_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data folder of 2 synthetic cases, model directory, work folder)."""
    work = tmp_path_factory.mktemp("volume_eval")
    data = str(work / "data")
    write_dataset(data, num_cases=2, in_plane=48, slices_range=(10, 12), progress=False)
    return data, export_model(str(work / "model")), work


@pytest.fixture(scope="module")
def evaluated(setup):
    """Both cases evaluated, with the model as its own baseline."""
    data, model_dir, work = setup
    cases, errors = discover_lits_cases(data)
    assert len(cases) == 2 and not errors
    out = str(work / "evaluated")
    result = volume_eval.evaluate_volumes(model_dir, cases, model_dir, output_dir=out,
                                          worst_volumes=3, worst_slices=4)
    return cases, out, result


def _read(out):
    """The three files of a folder or URI: metrics.json, rows of metrics.csv, the npz."""
    metrics = json.loads(storage.read_text(storage.join(out, "metrics.json")))
    rows = [line.split(",") for line in
            storage.read_text(storage.join(out, "metrics.csv")).splitlines()]
    return metrics, rows, np.load(io.BytesIO(storage.read_bytes(
        storage.join(out, "worst_slices.npz"))))


def test_writes_the_three_files_in_the_agreed_format(evaluated, setup):
    cases, out, result = evaluated
    metrics, rows, npz = _read(out)
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["model"] == {"uri": setup[1]} and metrics["baseline"] == {"uri": setup[1]}
    assert metrics["classes"] == ["liver", "tumour"]       # a three-channel model
    assert [c["case_id"] for c in metrics["cases"]] == ["volume-0", "volume-1"]
    for case in metrics["cases"]:
        assert set(case) == {"case_id", "spacing_mm", "num_slices", "seconds", "lesions",
                             *volume_eval.ROLES}
        assert len(case["spacing_mm"]) == 3 and case["seconds"] > 0
        for role in volume_eval.ROLES:
            for name in ("liver", "tumour"):
                assert set(case[role][name]) == set(METRIC_NAMES)
            assert isinstance(case["lesions"][role]["lesion_tp"], int), case["lesions"]
    for role in volume_eval.ROLES:
        assert set(metrics["global"][role]) == {"liver", "tumour"}
        assert set(metrics["global"][role]["liver"]) == {"global_dice", "mean_dice"}
        assert "lesion_recall" in metrics["lesions"][role]
    assert metrics["inference"] == InferenceConfig().to_dict()
    assert metrics["seconds_per_volume"] > 0 and metrics["errors"] == []
    columns = ["case_id", "model"] + [f"{c}_{m}" for c in ("liver", "tumour")
                                      for m in METRIC_NAMES]
    assert rows[0] == columns
    assert [r[:2] for r in rows[1:]] == [[f"volume-{i}", role] for i in (0, 1)
                                         for role in volume_eval.ROLES]
    assert float(rows[1][2]) == metrics["cases"][0]["candidate"]["liver"]["dice"]
    # Two cases, fewer than worst_volumes=3: both, four slices each.
    assert sorted(npz.files) == sorted(f"volume-{i}__{p}" for i in (0, 1) for p in
                                       ("image", "truth", "prediction", "slice_index"))
    for i in (0, 1):
        image, index = npz[f"volume-{i}__image"], npz[f"volume-{i}__slice_index"]
        assert image.dtype == np.float32 and index.dtype == np.int32 and index.shape == (4,)
        assert image.shape == npz[f"volume-{i}__truth"].shape == (4, 48, 48)
        assert npz[f"volume-{i}__prediction"].dtype == np.uint8
        assert image.min() < -500 and image.max() > 40      # HU: air and soft tissue


def _canonical(img):
    return nib.orientations.apply_orientation(np.asanyarray(img.dataobj),
                                              nib.io_orientation(img.affine))


def test_scores_match_predict_py_masks(evaluated, setup, tmp_path):
    """Dice of predict.py's written mask against the segmentation file, computed here; the
    worst slices are those where that mask is wrong most; the volumes are the voxel counts."""
    cases, out, _ = evaluated
    metrics, _, npz = _read(out)
    for files, case in zip(cases, metrics["cases"]):
        # The raw labels are predict.py's --no-postprocess masks.
        raw_path = str(tmp_path / f"{files.case_id}_raw.nii.gz")
        segmenter.segment_volume(setup[1], files.image_path, raw_path,
                                 InferenceConfig(postprocess=False))
        raw = np.asanyarray(nib.load(raw_path).dataobj)
        truth_raw = np.rint(nib.load(files.label_path).get_fdata())
        assert case["candidate"]["liver"]["dice"] == pytest.approx(
            dice_numpy(raw > 0, truth_raw > 0), 1e-9)
        # The post-processed ones, and the worst slices, are its default masks.
        mask_path = str(tmp_path / f"{files.case_id}_mask.nii.gz")
        segmenter.segment_volume(setup[1], files.image_path, mask_path)
        mask_img, truth_img = nib.load(mask_path), nib.load(files.label_path)
        mask, truth = np.asanyarray(mask_img.dataobj), np.rint(truth_img.get_fdata())
        scores = case["candidate_postprocessed"]
        assert scores["liver"]["dice"] == pytest.approx(dice_numpy(mask > 0, truth > 0), 1e-9)
        assert scores["tumour"]["dice"] == pytest.approx(dice_numpy(mask == 2, truth == 2),
                                                         1e-9)
        assert 0.05 < scores["liver"]["dice"] < 0.95        # imperfect: something to measure
        voxel_ml = np.prod(case["spacing_mm"]) / 1000
        assert scores["liver"]["truth_ml"] == pytest.approx((truth > 0).sum() * voxel_ml)
        assert scores["liver"]["pred_ml"] == pytest.approx((mask > 0).sum() * voxel_ml)
        wrong = (_canonical(mask_img) != _canonical(truth_img)).sum(axis=(0, 1))
        picked = npz[f"{files.case_id}__slice_index"]
        assert sorted(wrong[picked]) == sorted(wrong)[-4:]
        np.testing.assert_array_equal(npz[f"{files.case_id}__truth"][0],
                                      _canonical(truth_img)[::-1, ::-1, picked[0]].T)


def test_the_model_as_its_own_baseline_scores_the_same(evaluated):
    _, out, _ = evaluated
    metrics, _, _ = _read(out)
    for case in metrics["cases"]:
        assert case["baseline"] == case["candidate"]
    assert metrics["global"]["baseline"] == metrics["global"]["candidate"]


def test_classes_follow_the_candidates_channels(setup):
    # A liver-only candidate is scored on liver only; a liver-only baseline beside a
    # three-class candidate gets null for tumour, and the same liver scores in either role.
    data, model_dir, work = setup
    liver_only = export_model(str(work / "liver_only"), channels=1)
    cases, _ = discover_lits_cases(data)
    one = volume_eval.evaluate_volumes(liver_only, cases[:1], model_dir,
                                       output_dir=str(work / "one")).metrics
    assert one["classes"] == ["liver"] and set(one["cases"][0]["baseline"]) == {"liver"}
    three = volume_eval.evaluate_volumes(model_dir, cases[:1], liver_only,
                                         output_dir=str(work / "three")).metrics
    case = three["cases"][0]
    assert three["classes"] == ["liver", "tumour"] and case["baseline"]["tumour"] is None
    assert three["global"]["baseline"]["tumour"] is None
    assert case["baseline"]["liver"] == one["cases"][0]["candidate"]["liver"]
    assert case["candidate"]["liver"] == one["cases"][0]["baseline"]["liver"]
    with open(os.path.join(work, "three", "metrics.csv")) as f:
        rows = {tuple(line.split(",")[:2]): line for line in f.read().splitlines()[1:]}
    for role in ("baseline", "baseline_postprocessed"):              # no tumour
        assert rows[(case["case_id"], role)].endswith(",".join([""] * 9)), rows


def test_command_line_evaluates_the_examplegen_eval_split(setup, capsys):
    data, model_dir, work = setup
    out = f"ram://{work.name}/cli"                       # outputs may be URIs
    assert volume_eval.main(["--model", model_dir, "--data_root", data, "--output", out,
                             "--eval_fraction", "0.5", "--worst_slices", "2"]) == 0
    plan = plan_conversion(ConversionSettings(eval_fraction=0.5), data)
    eval_ids = [c.case_id for c, split in plan.cases if split == "eval"]
    metrics, _, npz = _read(out)
    assert [c["case_id"] for c in metrics["cases"]] == eval_ids and len(eval_ids) == 1
    assert metrics["baseline"] is None and metrics["cases"][0]["baseline"] is None
    assert npz[f"{eval_ids[0]}__slice_index"].shape == (2,)
    printed = capsys.readouterr().out
    assert "candidate liver: global Dice" in printed and f"Worst case: {eval_ids[0]}" in printed


def test_command_line_reports_a_corrupt_volume_and_fails(setup, capsys):
    data, model_dir, work = setup
    mixed = work / "mixed"
    shutil.copytree(data, mixed)
    bad = str(mixed / "volume-7.nii.gz")
    with open(os.path.join(data, "volume-0.nii.gz"), "rb") as f:
        payload = f.read()
    with open(bad, "wb") as f:
        f.write(payload[: len(payload) // 2])                # truncated gzip
    shutil.copy(os.path.join(data, "segmentation-0.nii.gz"), mixed / "segmentation-7.nii.gz")
    out = str(work / "mixed_out")
    assert volume_eval.main(["--model", model_dir, "--data_root", str(mixed), "--output", out,
                             "--split", "all"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if bad in line]
    assert len(lines) == 1 and "truncated" in lines[0], err
    metrics, _, _ = _read(out)
    assert [c["case_id"] for c in metrics["cases"]] == ["volume-0", "volume-1"]
    assert [(e["case_id"], e["file"]) for e in metrics["errors"]] == [("volume-7", bad)]


def test_a_missing_model_is_one_line(setup, capsys):
    data, _, work = setup
    missing = str(work / "no_model")
    assert volume_eval.main(["--model", missing, "--data_root", data,
                             "--output", str(work / "x")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"volume_eval: error: {missing}: model directory not found")


def _model_artifact(model_dir, work, name):
    """A Trainer-like Model artifact: the SavedModel under <uri>/Format-Serving."""
    from tfx.types import standard_artifacts
    artifact = standard_artifacts.Model()
    artifact.uri = str(work / name)
    shutil.copytree(model_dir, os.path.join(artifact.uri, "Format-Serving"))
    return artifact


def test_component_runs_on_the_serving_dir_and_records_figures(setup):
    from tfx.orchestration.kubeflow.v2 import compiler_utils
    from tfx.types import channel_utils
    data, model_dir, work = setup
    model = _model_artifact(model_dir, work, "model_artifact")
    evaluation = VolumeEvaluation()
    evaluation.uri = str(work / "component_out")
    VolumeEvaluator.test_call(model=model, evaluation=evaluation, data_root=data,
                              conversion_settings=json.dumps({"eval_fraction": 0.5}),
                              split="eval", worst_volumes=1, worst_slices=1,
                              baseline_model=model)
    metrics, _, npz = _read(evaluation.uri)
    assert metrics["model"]["uri"] == os.path.join(model.uri, "Format-Serving")
    assert metrics["baseline"]["uri"] == metrics["model"]["uri"]
    assert evaluation.get_int_custom_property("cases_evaluated") == 1
    assert evaluation.get_float_custom_property("liver_global_dice") == pytest.approx(
        metrics["global"]["candidate"]["liver"]["global_dice"])
    assert len(npz.files) == 4
    # The baseline input is optional: the component builds with and without it.
    channel = channel_utils.as_channel([model])
    assert VolumeEvaluator.SPEC_CLASS.INPUTS["baseline_model"].optional
    compiler_utils.get_artifact_schema(VolumeEvaluation)   # a type name Kubeflow accepts
    for baseline in (None, channel):
        node = volume_evaluator(channel, data, ConversionSettings(), baseline_model=baseline)
        assert ("baseline_model" in node.inputs) == (baseline is not None)
        assert node.outputs["evaluation"].type is VolumeEvaluation


def test_a_manifest_case_keeps_its_id_and_a_failing_baseline_counts_nowhere(setup, tmp_path,
                                                                          monkeypatch):
    """A bad case is named by the manifest's case_id; a case the baseline cannot score is in
    neither the table nor either pooled Dice; entries rejected before the split are listed
    apart from the failures."""
    data, model_dir, work = setup
    payload = open(os.path.join(data, "volume-0.nii.gz"), "rb").read()
    (tmp_path / "broken.nii.gz").write_bytes(payload[: len(payload) // 2])
    manifest = tmp_path / "cases.csv"
    manifest.write_text(
        "image,label,case_id\n"
        f"{data}/volume-0.nii.gz,{data}/segmentation-0.nii.gz,first\n"
        f"{tmp_path}/broken.nii.gz,{data}/segmentation-0.nii.gz,second\n"
        f"{data}/volume-1.nii.gz,,third\n")
    from preprocessing.case_discovery import discover_manifest_cases
    cases, rejected = discover_manifest_cases(str(manifest))
    result = volume_eval.evaluate_volumes(model_dir, cases, model_dir,
                                          output_dir=str(tmp_path / "out"),
                                          known_errors=rejected)
    metrics = result.metrics
    assert [e["case_id"] for e in metrics["errors"]] == ["second"]
    assert [e["case_id"] for e in metrics["rejected_before_split"]] == ["third"]

    class BaselineFailsOnFirst:           # the baseline's segmentation fails on one case
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def segment(self, case, options):
            if case.case_id == "first":
                raise MemoryError("out of memory")
            return self.model.segment(case, options)

    load_models = volume_eval.load_models

    def with_failing_baseline(candidate_dir, baseline_dir):
        candidate, baseline = load_models(candidate_dir, baseline_dir)
        return [candidate, BaselineFailsOnFirst(baseline)]

    monkeypatch.setattr(volume_eval, "load_models", with_failing_baseline)
    metrics = volume_eval.evaluate_volumes(model_dir, cases, model_dir,
                                           output_dir=str(tmp_path / "out2")).metrics
    assert metrics["cases"] == []
    assert [(e["case_id"], e["reason"]) for e in metrics["errors"]] == [
        ("first", "MemoryError: out of memory"), ("second", metrics["errors"][1]["reason"])]
    assert metrics["global"]["candidate"]["liver"]["global_dice"] is None
