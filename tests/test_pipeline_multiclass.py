"""The real tiny pipeline with three-class targets, end to end, its settings given as --set
overrides (transform.classes=liver_tumor, model.variant=ds): the Transform's one-hot mask, a
deep-supervised softmax model, liver and tumour Dice from the Evaluator, predict.py's 0/1/2
label map in the input's grid, and the settings saved with the run and the model."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

import local_runner
from conftest import artifact_uris, predict_volume_3, truth_of_volume_3
from models.metrics import dice_numpy
from pipeline.summary import collect_run_summary, format_run_summary
from preprocessing import features as F

pytestmark = pytest.mark.pipeline
OVERRIDES = ["--set", "transform.classes=liver_tumor", "--set", "model.variant=ds"]


@pytest.fixture(scope="module")
def multiclass_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("pipeline_liver_tumor"))
    assert local_runner.main(["--profile", "tiny", "--output_dir", output_dir, *OVERRIDES]) == 0
    summary = collect_run_summary(os.path.join(output_dir, "metadata.sqlite"))
    assert summary is not None
    return output_dir, summary


def _eval_examples(output_dir: str, count: int):
    examples_dir = artifact_uris(output_dir, "NiftiExampleGen", "examples")[0]
    files = glob.glob(os.path.join(examples_dir, "Split-eval", "*"))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    return [r.numpy() for r in records]


def test_transform_writes_a_three_channel_mask(multiclass_run):
    import tensorflow_transform as tft
    output_dir, _ = multiclass_run
    graph = tft.TFTransformOutput(artifact_uris(output_dir, "Transform", "transform_graph")[0])
    assert graph.transformed_feature_spec()[F.MASK].shape == [64, 64, 3]


def test_pushed_model_returns_class_probabilities(multiclass_run):
    output_dir, summary = multiclass_run
    # Blessed means liver Dice >= the tiny profile's bar of 0.8, also with three classes.
    assert summary["blessed"] and summary["pushed"], format_run_summary(summary)
    model = tf.saved_model.load(summary["pushed_to"])
    out = model.signatures["serving_default"](
        examples=tf.constant(_eval_examples(output_dir, 4)))["probabilities"].numpy()
    assert out.shape == (4, 64, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-4)


def test_evaluation_has_liver_and_tumor_dice(multiclass_run):
    _, summary = multiclass_run
    for key in ("eval_dice", "eval_tumor_dice"):
        values = summary[key]
        assert 0.0 <= values["overall"] <= 1.0, key
        assert any(k.startswith("volume_id=") for k in values), f"no per-volume {key}"
    text = format_run_summary(summary)
    assert "Eval liver and tumour Dice" in text and ", tumour " in text


def test_predict_writes_a_label_map_in_the_input_grid(multiclass_run, tmp_path, capsys):
    output_dir, summary = multiclass_run
    source, labels = predict_volume_3(output_dir, summary["pushed_to"],
                                      str(tmp_path / "labels.nii.gz"))
    assert labels.shape == source.shape
    np.testing.assert_allclose(labels.affine, source.affine)
    written = np.asanyarray(labels.dataobj)
    assert set(np.unique(written)) <= {0, 1, 2}
    assert dice_numpy(written > 0, truth_of_volume_3(output_dir) > 0) >= 0.7   # liver
    printed = capsys.readouterr().out
    assert "Liver Dice" in printed and "Tumour Dice" in printed


def test_the_trainer_saw_the_overrides_and_the_run_saved_them(multiclass_run, tmp_path):
    """The exported model has the ds variant's side heads, the settings saved with the model and
    under the pipeline root say what was set, and the saved file replays the run's settings."""
    import yaml

    from schema.contract import MODEL_SETTINGS_FILE, SETTINGS_FILE
    output_dir, summary = multiclass_run
    # A deep-supervision side head (layers head2..head5; the base variant has head1 only) is
    # in the exported graph.
    with open(os.path.join(summary["pushed_to"], "saved_model.pb"), "rb") as f:
        assert b"head5" in f.read()
    with open(os.path.join(summary["pushed_to"], MODEL_SETTINGS_FILE)) as f:
        saved = yaml.safe_load(f)
    assert saved["model"]["variant"] == "ds" and saved["transform"]["classes"] == "liver_tumor"
    assert "evaluation" not in saved          # not a setting of the model
    run_file = os.path.join(output_dir, "pipeline", SETTINGS_FILE)
    replayed = local_runner.config_from_args(local_runner.parse_args(["--config", run_file]))
    original = local_runner.config_from_args(local_runner.parse_args(
        ["--profile", "tiny", "--output_dir", output_dir, *OVERRIDES]))
    assert replayed == original
    volume_eval = artifact_uris(output_dir, "VolumeEvaluator", "evaluation")[-1]
    with open(os.path.join(volume_eval, SETTINGS_FILE)) as f:
        assert yaml.safe_load(f)["model"]["variant"] == "ds"
    with open(os.path.join(volume_eval, "eval_report.html")) as f:
        assert "variant: ds" in f.read()
