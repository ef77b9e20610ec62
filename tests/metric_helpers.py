"""Reference metrics that only the tests use, beside models/metrics.py: the per-slice aliases
(``MeanSliceDice`` / ``MeanSliceIoU`` = ``per_image=True``), the (Dice, IoU) x (pooled, per-slice)
set per class, and the numpy twins the Keras metrics are checked against."""
from __future__ import annotations

import keras
import numpy as np

from models.metrics import DiceCoefficient, IoUScore, dice_numpy


@keras.saving.register_keras_serializable(package="unet3plus")
class MeanSliceDice(DiceCoefficient):
    """``DiceCoefficient(per_image=True)``: mean over slices of per-slice Dice."""

    def __init__(self, threshold=0.5, class_id=None, per_image=True, name=None, dtype=None):
        super().__init__(threshold=threshold, class_id=class_id, per_image=per_image, name=name,
                         dtype=dtype)


@keras.saving.register_keras_serializable(package="unet3plus")
class MeanSliceIoU(IoUScore):
    """``IoUScore(per_image=True)``: mean over slices of per-slice IoU."""

    def __init__(self, threshold=0.5, class_id=None, per_image=True, name=None, dtype=None):
        super().__init__(threshold=threshold, class_id=class_id, per_image=per_image, name=name,
                         dtype=dtype)


def overlap_metrics(num_classes: int = 1, threshold: float = 0.5, kinds=("dice", "iou"),
                    per_image=(False, True)) -> list:
    """Dice/IoU metrics per class, pooled and/or per-slice mean.

    ``num_classes == 1``: one of each (names "dice", "iou", "slice_dice", "slice_iou");
    ``num_classes > 1``: one per foreground class c = 1..C-1 (names suffixed ``_c<c>``).
    """
    classes = [None] if num_classes == 1 else list(range(1, num_classes))
    out = []
    for mode in per_image:
        for kind in kinds:
            cls = {"dice": DiceCoefficient, "iou": IoUScore}[kind]
            for c in classes:
                base = f"slice_{kind}" if mode else kind
                out.append(cls(threshold=threshold, class_id=c, per_image=mode,
                               name=base if c is None else f"{base}_c{c}"))
    return out


def iou_numpy(pred_bool, true_bool) -> float:
    """IoU of two boolean arrays (any shape); 1.0 when both are empty."""
    p = np.asarray(pred_bool, dtype=bool)
    t = np.asarray(true_bool, dtype=bool)
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, t).sum()) / union


def mean_slice_dice_numpy(pred_bool, true_bool) -> float:
    """Mean over the first axis (slices) of :func:`dice_numpy`."""
    return float(np.mean([dice_numpy(p, t) for p, t in zip(pred_bool, true_bool)]))


def mean_slice_iou_numpy(pred_bool, true_bool) -> float:
    """Mean over the first axis (slices) of :func:`iou_numpy`."""
    return float(np.mean([iou_numpy(p, t) for p, t in zip(pred_bool, true_bool)]))
