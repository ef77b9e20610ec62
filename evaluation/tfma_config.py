"""The Evaluator's configuration: bless on liver Dice only, sliced per volume and by tumour /
liver presence, against the last blessed model. With classes="liver_tumor" the tumour Dice
("tumor_dice", "tumor_iou") is reported on every slice too, without a bar."""
from __future__ import annotations

import json
from typing import Optional

import tensorflow_model_analysis as tfma

from evaluation import tfma_dice
from preprocessing import features as F
from schema.contract import PROBABILITIES, SIGNATURE_TRANSFORMED

SLICE_FEATURES = (F.VOLUME_ID, F.HAS_TUMOR, F.HAS_LIVER)


def make_eval_config(dice_lower_bound: float, dice_change_tolerance: Optional[float],
                     threshold: float = 0.5, classes: str = "liver") -> tfma.EvalConfig:
    """`classes` is TransformConfig.classes: "liver" (one sigmoid channel) or "liver_tumor"
    (softmax over background / liver / tumour; scored by argmax, `threshold` unused).
    `dice_change_tolerance` None: no comparison with a baseline (a pipeline without one)."""
    F.check_classes(classes)
    dice_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": dice_lower_bound}))
    if dice_change_tolerance is not None:
        # The first run has no baseline and skips this; later runs must not get worse than
        # the last blessed model by more than the tolerance.
        dice_threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -dice_change_tolerance}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            # Evaluates on Transform's output through the matching signature.
            signature_name=SIGNATURE_TRANSFORMED, label_key=F.MASK,
            prediction_key=PROBABILITIES, preprocessing_function_names=[])],
        slicing_specs=[tfma.SlicingSpec()] + [
            tfma.SlicingSpec(feature_keys=[name]) for name in SLICE_FEATURES],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            # The bar applies to the whole eval split only: the other slices are for reading
            # (a slice without liver has Dice 0 as soon as one pixel is predicted). It is set on
            # the metric's name, "dice" (liver), so the tumour Dice it also emits has none.
            tfma.MetricConfig(class_name=tfma_dice.Dice.__name__, module=tfma_dice.__name__,
                              config=json.dumps({"threshold": threshold, "classes": classes}),
                              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                                  slicing_specs=[tfma.SlicingSpec()],
                                  threshold=dice_threshold)]),
        ])],
    )
