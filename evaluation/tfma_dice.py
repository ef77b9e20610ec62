"""Dice and IoU for segmentation as TFMA metrics.

A `tfma.metrics.Metric` backed by a Beam CombineFn: each example adds its pixel counts
(intersection, predicted, true) to the accumulator, so a slice of the evaluation (a volume, the
slices with tumour, ...) gets the Dice pooled over all its pixels: per-volume Dice, as LiTS
reports it. Keras metrics would be flattened per pixel by TFMA, which is slow on images.

Label and prediction become [pixels, C] (TFMA hands the label over flat, as the example stores
it; its C is the classes mode's: 1 or 3), then a class per pixel: C == 1 (sigmoid) thresholded
(label at 0.5, prediction at `threshold`), C > 1 (softmax, one-hot label) argmax.
Liver is class >= 1 (liver including tumour) and gives "dice" / "iou" in both modes, so the
blessing threshold on "dice" means the same thing. With classes="liver_tumor" the tumour
(class == 2) adds "tumor_dice" / "tumor_iou". A one-channel model (e.g. a baseline trained
before switching modes) predicts no tumour class, so its tumour scores are what it earns.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from models.metrics import class_map
from preprocessing import features as F

DICE = "dice"
IOU = "iou"
TUMOR_PREFIX = "tumor_"
# Classes mode (TransformConfig.classes) -> the structures scored, each "class >= 1" or "== 2".
STRUCTURES = {"liver": ("liver",), "liver_tumor": ("liver", "tumor")}


def dice_from_counts(intersection: float, predicted: float, true: float) -> float:
    """2|P&T| / (|P|+|T|); 1.0 when both are empty (nothing to find, nothing found)."""
    denominator = predicted + true
    return 1.0 if denominator == 0 else float(2.0 * intersection / denominator)


def iou_from_counts(intersection: float, predicted: float, true: float) -> float:
    union = predicted + true - intersection
    return 1.0 if union == 0 else float(intersection / union)


def structure_masks(classes: np.ndarray, structures) -> List[np.ndarray]:
    """Boolean pixel masks of each structure: liver = class >= 1, tumor = class == 2."""
    return [(classes >= 1) if s == "liver" else (classes == F.TUMOR_LABEL) for s in structures]


class Dice(metric_types.Metric):
    """Pooled Dice and IoU of liver (and tumour with classes="liver_tumor"); see module doc."""

    def __init__(self, name: str = DICE, threshold: float = 0.5, classes: str = "liver"):
        F.check_classes(classes)
        super().__init__(_dice_computations, name=name, threshold=threshold, classes=classes)


def _metric_names(name: str, structure: str):
    iou_name = name.replace(DICE, IOU) if DICE in name else f"{name}_iou"
    prefix = "" if structure == "liver" else TUMOR_PREFIX
    return prefix + name, prefix + iou_name


def _dice_computations(name: str = DICE, threshold: float = 0.5, classes: str = "liver",
                       eval_config: Optional[config_pb2.EvalConfig] = None,
                       model_names: Optional[List[str]] = None,
                       output_names: Optional[List[str]] = None,
                       example_weighted: bool = False,
                       **unused) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            # [(Dice key, IoU key)] per structure, in the accumulator's row order.
            keys = [tuple(metric_types.MetricKey(name=metric_name, model_name=model_name,
                                                 output_name=output_name,
                                                 example_weighted=example_weighted)
                          for metric_name in _metric_names(name, structure))
                    for structure in STRUCTURES[classes]]
            computations.append(metric_types.MetricComputation(
                keys=[k for pair in keys for k in pair], preprocessors=None,
                combiner=_DiceCombiner(keys, eval_config, model_name, output_name, threshold,
                                       classes)))
    return computations


class _DiceCombiner(beam.CombineFn):
    def __init__(self, keys: List[Tuple[metric_types.MetricKey, metric_types.MetricKey]],
                 eval_config, model_name: str, output_name: str, threshold: float,
                 classes: str = "liver"):
        self._keys = keys
        self._eval_config = eval_config
        self._model_name = model_name
        self._output_name = output_name
        self._threshold = threshold
        self._structures = STRUCTURES[classes]
        self._label_channels = F.MASK_CHANNELS[classes]

    def create_accumulator(self) -> np.ndarray:
        # One row per structure: intersection, predicted, true pixel counts.
        return np.zeros((len(self._structures), 3), dtype=np.float64)

    def add_input(self, accumulator: np.ndarray, element: Any) -> np.ndarray:
        for label, prediction, _ in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._model_name,
                output_name=self._output_name, flatten=False, squeeze=False):
            label, prediction = np.asarray(label), np.asarray(prediction)
            pixels = label.size // self._label_channels
            # The prediction may have other channels than the label (1 or 3): a baseline model
            # trained in the other classes mode.
            if (pixels == 0 or label.size % self._label_channels
                    or prediction.size not in {pixels * c for c in F.MASK_CHANNELS.values()}):
                raise ValueError(f"Dice: a label of {label.size} values ({self._label_channels}"
                                 f" per pixel) does not match a prediction of shape "
                                 f"{prediction.shape}")
            true_classes = class_map(label.reshape(pixels, -1), 0.5)
            predicted_classes = class_map(prediction.reshape(pixels, -1), self._threshold)
            for row, (true, predicted) in enumerate(zip(
                    structure_masks(true_classes, self._structures),
                    structure_masks(predicted_classes, self._structures))):
                accumulator[row] += (np.count_nonzero(true & predicted),
                                     np.count_nonzero(predicted), np.count_nonzero(true))
        return accumulator

    def merge_accumulators(self, accumulators) -> np.ndarray:
        return np.sum(list(accumulators), axis=0)

    def extract_output(self, accumulator: np.ndarray) -> Dict[metric_types.MetricKey, float]:
        output = {}
        for (dice_key, iou_key), counts in zip(self._keys, accumulator):
            output[dice_key] = dice_from_counts(*counts)
            output[iou_key] = iou_from_counts(*counts)
        return output


metric_types.register_metric(Dice)
