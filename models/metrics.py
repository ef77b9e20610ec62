"""Segmentation metrics: stateful Keras 3 metrics (backend-neutral) and numpy helpers.

``DiceCoefficient`` / ``IoUScore`` accumulate TP, FP and FN over every pixel of every batch seen
(a pooled, "global" score, not a mean of per-image scores) and return 1.0 while both prediction
and truth are empty.  Which pixels count as positive:

* C == 1 (sigmoid): ``y_pred >= threshold`` and ``y_true >= 0.5``.
* C > 1 (softmax): ``argmax(y_pred) == class_id`` (``threshold`` unused); with
  ``class_id=None`` any foreground class (argmax != 0).  ``y_true`` may be one-hot [B,H,W,C]
  or integer labels [B,H,W,1] / [B,H,W].
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops


def _positives(y_true, y_pred, threshold, class_id):
    """Boolean-as-float [B, N] masks (true, pred) of the positive class."""
    y_pred = ops.cast(y_pred, "float32")
    channels = y_pred.shape[-1]
    if channels is None or channels == 1:
        c = 0 if class_id is None else int(class_id)
        if c != 0:
            raise ValueError("class_id must be 0 or None for a single-channel output")
        pred = y_pred[..., 0] >= threshold
        y_true = ops.cast(y_true, "float32")
        if len(y_true.shape) == len(y_pred.shape):
            y_true = y_true[..., 0]
        true = y_true >= 0.5
    else:
        pred_lbl = ops.argmax(y_pred, axis=-1)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == channels:
            true_lbl = ops.argmax(y_true, axis=-1)
        else:
            if len(y_true.shape) == len(y_pred.shape):
                y_true = y_true[..., 0]
            true_lbl = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")
        if class_id is None:
            pred, true = pred_lbl != 0, true_lbl != 0
        else:
            pred, true = pred_lbl == int(class_id), true_lbl == int(class_id)
    pred = ops.cast(pred, "float32")
    true = ops.cast(true, "float32")
    batch = ops.shape(pred)[0]
    return ops.reshape(true, (batch, -1)), ops.reshape(pred, (batch, -1))


class _OverlapMetric(keras.metrics.Metric):
    def __init__(self, threshold=0.5, class_id=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.class_id = class_id
        self.tp = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true, pred = _positives(y_true, y_pred, self.threshold, self.class_id)
        tp_map = true * pred
        if sample_weight is not None:  # per-image weights [B]
            sw = ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
            true, pred, tp_map = true * sw, pred * sw, tp_map * sw
        tp = ops.sum(tp_map)
        self.tp.assign_add(tp)
        self.fp.assign_add(ops.sum(pred) - tp)
        self.fn.assign_add(ops.sum(true) - tp)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="unet3plus")
class DiceCoefficient(_OverlapMetric):
    """Pooled Dice = 2TP / (2TP + FP + FN); 1.0 when both are empty."""

    def __init__(self, threshold=0.5, class_id=None, name="dice", dtype=None):
        super().__init__(threshold=threshold, class_id=class_id, name=name, dtype=dtype)

    def result(self):
        denom = 2.0 * self.tp + self.fp + self.fn
        return ops.where(denom > 0, 2.0 * self.tp / ops.maximum(denom, 1e-12), 1.0)


@keras.saving.register_keras_serializable(package="unet3plus")
class IoUScore(_OverlapMetric):
    """Pooled IoU (Jaccard) = TP / (TP + FP + FN); 1.0 when both are empty."""

    def __init__(self, threshold=0.5, class_id=None, name="iou", dtype=None):
        super().__init__(threshold=threshold, class_id=class_id, name=name, dtype=dtype)

    def result(self):
        denom = self.tp + self.fp + self.fn
        return ops.where(denom > 0, self.tp / ops.maximum(denom, 1e-12), 1.0)


def dice_numpy(pred_bool, true_bool) -> float:
    """Dice of two boolean arrays (any shape); 1.0 when both are empty."""
    p = np.asarray(pred_bool, dtype=bool)
    t = np.asarray(true_bool, dtype=bool)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


def iou_numpy(pred_bool, true_bool) -> float:
    """IoU of two boolean arrays (any shape); 1.0 when both are empty."""
    p = np.asarray(pred_bool, dtype=bool)
    t = np.asarray(true_bool, dtype=bool)
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, t).sum()) / union
