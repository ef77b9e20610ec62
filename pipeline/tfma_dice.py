"""Dice and IoU for segmentation as TFMA metrics.

A `tfma.metrics.Metric` backed by a Beam CombineFn: each example adds its pixel counts
(intersection, predicted, true) to the accumulator, so a slice of the evaluation (a volume, the
slices with tumour, ...) gets the Dice pooled over all its pixels: per-volume Dice, as LiTS
reports it. Keras metrics would be flattened per pixel by TFMA, which is slow on images.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

DICE = "dice"
IOU = "iou"


def dice_from_counts(intersection: float, predicted: float, true: float) -> float:
    """2|P&T| / (|P|+|T|); 1.0 when both are empty (nothing to find, nothing found)."""
    denominator = predicted + true
    return 1.0 if denominator == 0 else float(2.0 * intersection / denominator)


def iou_from_counts(intersection: float, predicted: float, true: float) -> float:
    union = predicted + true - intersection
    return 1.0 if union == 0 else float(intersection / union)


class Dice(metric_types.Metric):
    """Pooled Dice and IoU of the thresholded prediction against the binary label."""

    def __init__(self, name: str = DICE, threshold: float = 0.5):
        super().__init__(_dice_computations, name=name, threshold=threshold)


def _dice_computations(name: str = DICE, threshold: float = 0.5,
                       eval_config: Optional[config_pb2.EvalConfig] = None,
                       model_names: Optional[List[str]] = None,
                       output_names: Optional[List[str]] = None,
                       example_weighted: bool = False,
                       **unused) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            keys = {
                metric: metric_types.MetricKey(name=metric_name, model_name=model_name,
                                               output_name=output_name,
                                               example_weighted=example_weighted)
                for metric, metric_name in ((DICE, name), (IOU, name.replace(DICE, IOU)
                                                          if DICE in name else f"{name}_iou"))
            }
            computations.append(metric_types.MetricComputation(
                keys=list(keys.values()), preprocessors=None,
                combiner=_DiceCombiner(keys, eval_config, model_name, output_name, threshold)))
    return computations


class _DiceCombiner(beam.CombineFn):
    def __init__(self, keys: Dict[str, metric_types.MetricKey], eval_config, model_name: str,
                 output_name: str, threshold: float):
        self._keys = keys
        self._eval_config = eval_config
        self._model_name = model_name
        self._output_name = output_name
        self._threshold = threshold

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(3, dtype=np.float64)   # intersection, predicted, true

    def add_input(self, accumulator: np.ndarray, element: Any) -> np.ndarray:
        for label, prediction, _ in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._model_name,
                output_name=self._output_name, flatten=False, squeeze=False):
            true = np.asarray(label).ravel() > 0.5
            predicted = np.asarray(prediction).ravel() >= self._threshold
            if true.size != predicted.size:
                raise ValueError(f"Dice: label has {true.size} pixels, prediction "
                                 f"{predicted.size}")
            accumulator += (np.count_nonzero(true & predicted), np.count_nonzero(predicted),
                            np.count_nonzero(true))
        return accumulator

    def merge_accumulators(self, accumulators) -> np.ndarray:
        return np.sum(list(accumulators), axis=0)

    def extract_output(self, accumulator: np.ndarray) -> Dict[metric_types.MetricKey, float]:
        return {self._keys[DICE]: dice_from_counts(*accumulator),
                self._keys[IOU]: iou_from_counts(*accumulator)}


metric_types.register_metric(Dice)
