"""The real tiny pipeline with three-class targets, end to end, on real CT: the LiTS crop of
docs/real_ct.md (fetched by `make setup`), its settings given as --set overrides
(transform.classes=liver_tumor, model.variant=ds). With two cases the ExampleGen's split puts
volume-0 (the inferior half) in train and volume-1 (the superior half, most of the tumour) in
eval. Checked: the ExampleGen's examples on real HU and real lesion shapes, the Transform's
one-hot mask, a deep-supervised softmax model, liver and tumour Dice from the Evaluator, the
VolumeEvaluator's LiTS and lesion figures (raw and post-processed), predict.py's 0/1/2 label
map in the input's grid (stored L, P, S: not RAS), and the settings saved with the run and the
model.

The bar is set from measurement, well under it, so that it catches a broken path (labels lost,
a model that learned nothing) rather than the noise of a 2-core CPU run: measured on
2026-12-03 (AMD EPYC, 2 cores, AVX2), liver Dice 0.888 (0.864 with the base variant) on
volume-1 after the tiny profile's training on volume-0; tumour Dice 0 (57 reference lesions,
none found: the tiny run learns no tumour), so there is no tumour bar. The tiny profile's blessing bar is for the
phantom, so it is lowered here: the run must finish and push."""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

import local_runner
import predict
from conftest import artifact_uris
from models.metrics import dice_numpy
from pipeline.configs import profile_config
from pipeline.summary import collect_run_summary, format_run_summary
from preprocessing import features as F

pytestmark = pytest.mark.pipeline
REAL_CT = Path(__file__).resolve().parents[1] / ".cache" / "real_ct" / "lits"
OVERRIDES = ["--set", "transform.classes=liver_tumor", "--set", "model.variant=ds",
             "--set", "evaluation.dice_lower_bound=0.05"]
LIVER_DICE_BAR = 0.6   # measured 0.888 (module docstring)


def _run_args(output_dir: str):
    return ["--profile", "tiny", "--output_dir", output_dir, "--data_root", str(REAL_CT),
            *OVERRIDES]


@pytest.fixture(scope="module")
def multiclass_run(tmp_path_factory):
    if not (REAL_CT / "volume-1.nii.gz").exists():
        pytest.fail(f"{REAL_CT} is missing: run `make setup` (scripts/fetch_real_ct.sh)")
    output_dir = str(tmp_path_factory.mktemp("pipeline_liver_tumor"))
    assert local_runner.main(_run_args(output_dir)) == 0
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
    # Blessed means liver Dice >= the lowered bar (module docstring).
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
    # The full-volume evaluation's pooled lesion detection, raw and post-processed.
    assert set(summary["full_volume"]["lesions"]) == {"candidate", "candidate_postprocessed"}
    assert "Lesions (model; LiTS: found at overlap > 0.5): recall " in text
    assert "Lesions (model postprocessed;" in text


def test_examples_carry_real_hu_and_both_labels(multiclass_run):
    output_dir, _ = multiclass_run
    examples = artifact_uris(output_dir, "NiftiExampleGen", "examples")[0]
    spec = {F.IMAGE: tf.io.FixedLenFeature([], tf.string),
            F.LABEL: tf.io.FixedLenFeature([], tf.string)}
    lows, highs, labels = [], [], set()
    for split in ("train", "eval"):
        files = glob.glob(os.path.join(examples, f"Split-{split}", "*"))
        assert files, split
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            parsed = tf.io.parse_single_example(record, spec)
            image = tf.io.decode_raw(parsed[F.IMAGE], tf.int16).numpy()
            lows.append(image.min())
            highs.append(image.max())
            labels |= set(np.unique(tf.io.decode_raw(parsed[F.LABEL], tf.uint8).numpy()))
    # Real CT reaches both ends of the stored HU window (air and fat below, bone and contrast
    # above).
    window = profile_config("tiny").example_gen.slices.window
    assert (min(lows), max(highs)) == tuple(int(v) for v in window), (min(lows), max(highs))
    assert labels == {0, 1, 2}


def test_volume_evaluator_scores_the_eval_half_with_lesions(multiclass_run):
    output_dir, _ = multiclass_run
    folder = artifact_uris(output_dir, "VolumeEvaluator", "evaluation")[0]
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    assert [c["case_id"] for c in metrics["cases"]] == ["volume-1"]
    liver = metrics["global"]["candidate_postprocessed"]["liver"]
    assert liver["mean_dice"] >= LIVER_DICE_BAR, metrics["global"]
    lesions = metrics["lesions"]["candidate"]
    assert lesions["lesion_ref"] >= 1 and lesions["cases"] == 1, lesions
    print("real crop, eval half:", json.dumps(metrics["global"]), json.dumps(lesions))
    with open(os.path.join(folder, "eval_report.html")) as f:
        assert 'id="postprocessing"' in f.read()


def test_predict_writes_a_label_map_in_the_input_grid(multiclass_run, tmp_path, capsys):
    _, summary = multiclass_run
    out = str(tmp_path / "volume-1_mask.nii.gz")
    assert predict.main(["--model", summary["pushed_to"],
                         "--input", str(REAL_CT / "volume-1.nii.gz"),
                         "--label", str(REAL_CT / "segmentation-1.nii.gz"),
                         "--output", out]) == 0
    written = nib.load(out)
    truth = nib.load(REAL_CT / "segmentation-1.nii.gz")
    assert written.shape == truth.shape and nib.aff2axcodes(written.affine) == ("L", "P", "S")
    np.testing.assert_allclose(written.affine, truth.affine)
    mask = np.asanyarray(written.dataobj)
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert dice_numpy(mask > 0, np.asanyarray(truth.dataobj) > 0) >= LIVER_DICE_BAR
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
    original = local_runner.config_from_args(local_runner.parse_args(_run_args(output_dir)))
    assert replayed == original
    volume_eval = artifact_uris(output_dir, "VolumeEvaluator", "evaluation")[-1]
    with open(os.path.join(volume_eval, SETTINGS_FILE)) as f:
        assert yaml.safe_load(f)["model"]["variant"] == "ds"
    with open(os.path.join(volume_eval, "eval_report.html")) as f:
        assert "variant: ds" in f.read()
