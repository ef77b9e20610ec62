"""Reading what TFMA wrote (the Evaluator's artifact): Dice per slice of the data, and why a
model was not blessed. Used by the run summary (pipeline/summary.py) and the report."""
from __future__ import annotations

from typing import Dict, List

# Summary key -> TFMA metric name (evaluation/tfma_dice.py): liver always, tumour for
# three-class models.
EVAL_METRICS = {"eval_dice": "dice", "eval_tumor_dice": "tumor_dice"}


def read_eval_metrics(eval_uri: str, names=tuple(EVAL_METRICS.values())
                      ) -> Dict[str, Dict[str, float]]:
    """{metric: {slice name: value}} from a TFMA evaluation, slice names "overall",
    "volume_id=...", "has_tumor=1"...; a metric the evaluation lacks maps to {}."""
    import tensorflow_model_analysis as tfma  # heavy; only when there is an evaluation
    return slice_metrics(tfma.load_eval_result(eval_uri), names)


def slice_metrics(result, names=tuple(EVAL_METRICS.values())) -> Dict[str, Dict[str, float]]:
    """read_eval_metrics for an already loaded TFMA EvalResult."""
    out: Dict[str, Dict[str, float]] = {name: {} for name in names}
    for slice_key, metrics in result.slicing_metrics:
        values = metrics.get("", {}).get("", {})
        slice_name = ", ".join(f"{k}={v}" for k, v in slice_key) if slice_key else "overall"
        for name in names:
            if name in values:
                out[name][slice_name] = float(values[name].get("doubleValue", float("nan")))
    return out


def _slice_value(single_slice_key):
    value = getattr(single_slice_key, single_slice_key.WhichOneof("kind"))
    return value.decode() if isinstance(value, bytes) else value


def read_blessing_failures(eval_uri: str) -> List[str]:
    """Why the Evaluator did not bless: one line per failed threshold, from TFMA's validation
    result (a value threshold: below the bar; a change threshold: worse than the last blessed
    model by more than the tolerance). Empty when validation passed."""
    import tensorflow_model_analysis as tfma
    result = tfma.load_validation_result(eval_uri)
    reasons = []
    for per_slice in result.metric_validations_per_slice:
        where = ", ".join(f"{c.column}={_slice_value(c)}"
                          for c in per_slice.slice_key.single_slice_keys) or "overall"
        for failure in per_slice.failures:
            name = failure.metric_key.name
            value = failure.metric_value.double_value.value
            threshold = failure.metric_threshold
            if failure.metric_key.is_diff:
                tolerance = -threshold.change_threshold.absolute.value
                reasons.append(f"{name} ({where}) changed by {value:+.4f} against the last "
                               f"blessed model: worse than the tolerance of {tolerance:.4f}")
            else:
                bar = threshold.value_threshold.lower_bound.value
                reasons.append(f"{name} ({where}) {value:.4f} is below the bar {bar:.4f}")
    return reasons
