"""Three-class targets (background / liver / tumour) outside the pipeline: the TFMA Dice
combiner's counts, the Evaluator config's bar, the trainer's metrics, predict.py's label map,
the TensorBoard panel and the run summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tensorflow_model_analysis.metrics import metric_specs, metric_types

from evaluation import tfma_dice
from evaluation.tfma_config import make_eval_config

# One 4x4 slice, as class maps. Liver is class >= 1, tumour class 2:
#   liver:  true 6, predicted 6, both 5 -> Dice 10/12, IoU 5/7
#   tumour: true 3, predicted 3, both 2 -> Dice 4/6,  IoU 2/4
TRUE = np.array([[0, 0, 0, 0],
                 [0, 1, 1, 0],
                 [0, 1, 2, 2],
                 [0, 0, 2, 0]])
PRED = np.array([[0, 0, 0, 0],
                 [0, 1, 1, 1],
                 [0, 2, 2, 0],
                 [0, 0, 2, 0]])


def _one_hot(classes, channels=3):
    return np.eye(channels, dtype=np.float32)[classes]


def _softmax_like(classes):
    """Probabilities whose argmax is `classes` (not one-hot, as a model's are)."""
    return 0.1 + 0.7 * _one_hot(classes)


def _combiner(classes="liver_tumor"):
    (computation,) = tfma_dice.Dice(classes=classes).computations(model_names=[""],
                                                                   output_names=[""])
    return computation.combiner


def _evaluate(combiner, pairs, flat_label=True):
    """Each (label, prediction) pair is one example, in its own accumulator; then merged, as
    Beam does for a slice spread over workers. TFMA hands labels over flat (as the example
    stores them) and predictions in the model's shape."""
    accumulators = []
    for label, prediction in pairs:
        element = metric_types.StandardMetricInputs(
            labels=label.ravel() if flat_label else label, predictions=prediction,
            example_weights=np.array([1.0]))
        accumulators.append(combiner.add_input(combiner.create_accumulator(), element))
    result = combiner.extract_output(combiner.merge_accumulators(accumulators))
    return {key.name: value for key, value in result.items()}


@pytest.mark.parametrize("flat_label", [True, False])
def test_liver_and_tumor_dice_from_known_counts(flat_label):
    values = _evaluate(_combiner(), [(_one_hot(TRUE), _softmax_like(PRED))], flat_label)
    assert values == pytest.approx({"dice": 10 / 12, "iou": 5 / 7,
                                    "tumor_dice": 4 / 6, "tumor_iou": 2 / 4})


def test_counts_are_pooled_over_the_examples_of_a_slice():
    # A second slice with nothing to find and one pixel predicted as tumour: one more predicted
    # pixel of liver (tumour is liver) and of tumour.
    empty = np.zeros_like(TRUE)
    stray = empty.copy()
    stray[0, 0] = 2
    values = _evaluate(_combiner(), [(_one_hot(TRUE), _softmax_like(PRED)),
                                     (_one_hot(empty), _softmax_like(stray))])
    assert values["dice"] == pytest.approx(10 / 13)
    assert values["tumor_dice"] == pytest.approx(4 / 7)


def test_nothing_to_find_and_nothing_found_scores_one():
    empty = np.zeros_like(TRUE)
    values = _evaluate(_combiner(), [(_one_hot(empty), _softmax_like(empty))])
    assert values == {"dice": 1.0, "iou": 1.0, "tumor_dice": 1.0, "tumor_iou": 1.0}


def test_one_channel_mode_keeps_its_names_and_values():
    label = (TRUE > 0).astype(np.float32)[..., None]
    prediction = np.where(PRED > 0, 0.9, 0.2).astype(np.float32)[..., None]
    values = _evaluate(_combiner("liver"), [(label, prediction)])
    assert values == pytest.approx({"dice": 10 / 12, "iou": 5 / 7})


def test_a_one_channel_baseline_is_scored_against_three_class_labels():
    # The last blessed model may predate a switch to liver_tumor: its liver Dice still counts,
    # and it finds no tumour.
    prediction = np.where(PRED > 0, 0.9, 0.2).astype(np.float32)[..., None]
    values = _evaluate(_combiner(), [(_one_hot(TRUE), prediction)])
    assert values["dice"] == pytest.approx(10 / 12)
    assert values["tumor_dice"] == 0.0


def test_a_label_that_does_not_fit_the_prediction_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        _evaluate(_combiner(), [(_one_hot(TRUE)[:3], _softmax_like(PRED))])


def test_unknown_classes_mode_is_rejected():
    with pytest.raises(ValueError, match="classes must be one of"):
        tfma_dice.Dice(classes="tumor")
    with pytest.raises(ValueError, match="classes must be one of"):
        make_eval_config(0.5, 0.01, classes="tumor")


@pytest.mark.parametrize("classes", ["liver", "liver_tumor"])
def test_the_bar_is_on_liver_dice_only(classes):
    eval_config = make_eval_config(0.8, 0.01, classes=classes)
    (metric_config,) = [m for m in eval_config.metrics_specs[0].metrics
                        if m.class_name == tfma_dice.Dice.__name__]
    assert json.loads(metric_config.config)["classes"] == classes
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(eval_config.metrics_specs,
                                                                   eval_config)
    # "dice" and its change against the baseline; nothing on tumour Dice or IoU.
    assert {key.name for key in thresholds} == {"dice"}
    assert len(thresholds) == 2


def test_trainer_metrics_name_liver_dice_dice_in_both_modes():
    from trainer.run import mask_metrics
    assert [m.name for m in mask_metrics(1)] == ["dice", "slice_dice"]
    liver, _, tumor = mask_metrics(3)
    assert (liver.name, tumor.name) == ("dice", "tumor_dice")
    true, pred = _one_hot(TRUE)[None], _softmax_like(PRED)[None]
    liver.update_state(true, pred)
    tumor.update_state(true, pred)
    assert float(liver.result()) == pytest.approx(10 / 12)
    assert float(tumor.result()) == pytest.approx(4 / 6)


def test_predict_labels_by_argmax_or_threshold():
    from inference.segmenter import probabilities_to_labels
    labels = probabilities_to_labels(_softmax_like(PRED))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, PRED)
    one = np.array([[[0.2], [0.5], [0.7]]], np.float32)
    np.testing.assert_array_equal(probabilities_to_labels(one, 0.5), [[0, 1, 1]])


def test_tensorboard_panel_shows_classes_as_grey_levels():
    from trainer.tensorboard_images import mask_to_gray
    gray = mask_to_gray(_one_hot(TRUE)[None])
    assert gray.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(gray[0, ..., 0], TRUE / 2.0)
    single = np.full((1, 4, 4, 1), 0.3, np.float32)
    np.testing.assert_array_equal(mask_to_gray(single), single)


def test_summary_shows_tumor_dice_when_present():
    from pipeline.summary import format_run_summary
    base = {"run_id": "r", "components": {}}
    liver = {"overall": 0.9, "volume_id=volume-1": 0.8}
    text = format_run_summary({**base, "eval_dice": liver})
    assert "Eval liver Dice (pooled over the eval split): 0.9000" in text
    assert "tumour" not in text
    text = format_run_summary({**base, "eval_dice": liver,
                               "eval_tumor_dice": {"overall": 0.5, "volume_id=volume-1": 0.25}})
    assert "liver 0.9000, tumour 0.5000" in text
    assert "volume_id=volume-1: liver 0.8000, tumour 0.2500" in text
