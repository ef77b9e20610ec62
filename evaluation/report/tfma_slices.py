"""What the report takes from the TFX Evaluator's output (a ModelEvaluation artifact): Dice and
example counts overall and on the has_liver / has_tumor slices, the change against the
baseline, the thresholds it ran with, and why it did not bless. The readers of
evaluation/tfma_results.py do the TFMA work; this module only picks and reshapes."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from evaluation.evaluation_config import EvalConfig
from evaluation.report.inputs import Thresholds
from evaluation.tfma_dice import DICE, TUMOR_PREFIX, Dice
from evaluation.tfma_results import read_blessing_failures, slice_metrics
from preprocessing import features as F

EXAMPLE_COUNT = "example_count"
# TFMA names the candidate's change against the baseline "<metric>_diff".
DICE_DIFF = DICE + "_diff"
METRICS = (DICE, TUMOR_PREFIX + DICE, EXAMPLE_COUNT, DICE_DIFF)
SLICE_COLUMNS = (F.HAS_LIVER, F.HAS_TUMOR)
OVERALL = "overall"


@dataclasses.dataclass
class TfmaSummary:
    """slices: {slice name: {metric: value}}, "overall" first, then has_liver=..., has_tumor=...;
    failures: why not blessed (None when the evaluation holds no validation result)."""
    uri: str
    slices: Dict[str, Dict[str, float]]
    thresholds: Optional[Thresholds]
    failures: Optional[List[str]]

    @property
    def overall_dice(self) -> Optional[float]:
        return self.slices.get(OVERALL, {}).get(DICE)

    @property
    def dice_change(self) -> Optional[float]:
        return self.slices.get(OVERALL, {}).get(DICE_DIFF)


def _slice_order(name: str):
    column = name.split("=", 1)[0]
    return (name != OVERALL, SLICE_COLUMNS.index(column) if column in SLICE_COLUMNS else 9, name)


def read_tfma_summary(evaluation_uri: str) -> TfmaSummary:
    import tensorflow_model_analysis as tfma  # heavy; only when there is an evaluation
    result = tfma.load_eval_result(evaluation_uri)   # read once: metrics and stored config
    by_metric = slice_metrics(result, names=METRICS)
    slices: Dict[str, Dict[str, float]] = {}
    for metric, values in by_metric.items():
        for slice_name, value in values.items():
            if slice_name == OVERALL or slice_name.split("=", 1)[0] in SLICE_COLUMNS:
                slices.setdefault(slice_name, {})[metric] = value
    try:
        failures: Optional[List[str]] = read_blessing_failures(evaluation_uri)
    except (AssertionError, OSError):   # TFMA asserts exactly one validation file
        failures = None
    return TfmaSummary(uri=evaluation_uri,
                       slices={k: slices[k] for k in sorted(slices, key=_slice_order)},
                       thresholds=thresholds_from_config(result.config), failures=failures)


def thresholds_from_config(config) -> Optional[Thresholds]:
    """The bar and change tolerance on liver Dice from the EvalConfig the Evaluator stored with
    its results (evaluation/tfma_config.py sets them on the metric named "dice"); None if absent."""
    for spec in config.metrics_specs if config else ():
        for metric in (m for m in spec.metrics if m.class_name == Dice.__name__):
            for per_slice in metric.per_slice_thresholds:
                threshold = per_slice.threshold
                if not threshold.HasField("value_threshold"):
                    continue
                if threshold.HasField("change_threshold"):
                    tolerance = -threshold.change_threshold.absolute.value
                    source = "the Evaluator's config stored with the evaluation"
                else:
                    # TFX drops the change threshold when there is no baseline to compare with.
                    tolerance = EvalConfig().dice_change_tolerance
                    source = ("the bar from the Evaluator's stored config; it has no change "
                              "threshold (no baseline), the tolerance shown is the default")
                return Thresholds(
                    dice_lower_bound=threshold.value_threshold.lower_bound.value,
                    dice_change_tolerance=tolerance, source=source)
    return None
