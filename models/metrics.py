"""Segmentation metrics: stateful Keras 3 metrics (backend-neutral) and numpy helpers.

Two ways to average, both per class (``class_id``):

* pooled (default, ``per_image=False``): ``DiceCoefficient`` / ``IoUScore`` accumulate TP, FP and
  FN over every pixel of every batch seen (a "global" score, dominated by large organs) and
  return 1.0 while both prediction and truth are empty.
* per-slice mean (``per_image=True``): the score of each image (2D slice) separately, averaged
  over all images seen; an image where prediction and truth are both empty scores 1.0, one with
  only one of them empty scores 0.0. ``sample_weight`` (one weight per image) gives a weighted
  mean.

Which pixels count as positive:

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


def _dice_score(tp, fp, fn):
    denom = 2.0 * tp + fp + fn
    return ops.where(denom > 0, 2.0 * tp / ops.maximum(denom, 1e-12), 1.0)


def _iou_score(tp, fp, fn):
    denom = tp + fp + fn
    return ops.where(denom > 0, tp / ops.maximum(denom, 1e-12), 1.0)


class _OverlapMetric(keras.metrics.Metric):
    """Shared state: pooled TP/FP/FN and the (weighted) sum/count of per-image scores."""

    _score = staticmethod(_dice_score)
    _base_name = "dice"   # default name; "slice_" + it with per_image

    def __init__(self, threshold=0.5, class_id=None, per_image=False, name=None, dtype=None):
        name = name or (f"slice_{self._base_name}" if per_image else self._base_name)
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.class_id = class_id
        self.per_image = bool(per_image)
        self.tp = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="fn")
        self.score_sum = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                           name="score_sum")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                       name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true, pred = _positives(y_true, y_pred, self.threshold, self.class_id)
        tp = ops.sum(true * pred, axis=-1)  # [B]
        fp = ops.sum(pred, axis=-1) - tp
        fn = ops.sum(true, axis=-1) - tp
        if sample_weight is None:
            sw = ops.ones_like(tp)
        else:  # per-image weights [B]
            sw = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        self.tp.assign_add(ops.sum(tp * sw))
        self.fp.assign_add(ops.sum(fp * sw))
        self.fn.assign_add(ops.sum(fn * sw))
        self.score_sum.assign_add(ops.sum(self._score(tp, fp, fn) * sw))
        self.count.assign_add(ops.sum(sw))

    def result(self):
        if self.per_image:
            return ops.where(self.count > 0, self.score_sum / ops.maximum(self.count, 1e-12), 1.0)
        return self._score(self.tp, self.fp, self.fn)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn, self.score_sum, self.count):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "class_id": self.class_id,
                "per_image": self.per_image}


@keras.saving.register_keras_serializable(package="unet3plus")
class DiceCoefficient(_OverlapMetric):
    """Dice = 2TP / (2TP + FP + FN): pooled over all pixels seen (default) or, with
    ``per_image=True``, the mean over images of per-image Dice (an image where prediction and
    truth are both empty scores 1.0).  Default name "dice" / "slice_dice"."""

    _score = staticmethod(_dice_score)
    _base_name = "dice"


@keras.saving.register_keras_serializable(package="unet3plus")
class IoUScore(_OverlapMetric):
    """IoU (Jaccard) = TP / (TP + FP + FN): pooled (default) or per-image mean
    (``per_image=True``; both empty -> 1.0).  Default name "iou" / "slice_iou"."""

    _score = staticmethod(_iou_score)
    _base_name = "iou"


def class_map(values, threshold: float = 0.5) -> np.ndarray:
    """[..., C] probabilities or targets -> integer class per pixel [...]: C == 1 (sigmoid)
    thresholded to 0/1, C > 1 (softmax / one-hot) argmax."""
    values = np.asarray(values)
    if values.shape[-1] == 1:
        return (values[..., 0] >= threshold).astype(np.int64)
    return np.argmax(values, axis=-1)


def dice_numpy(pred_bool, true_bool) -> float:
    """Dice of two boolean arrays (any shape); 1.0 when both are empty."""
    p = np.asarray(pred_bool, dtype=bool)
    t = np.asarray(true_bool, dtype=bool)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom
