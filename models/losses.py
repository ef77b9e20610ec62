"""Segmentation losses for UNet 3+, backend-neutral (``keras.ops`` only).

Conventions: ``y_true`` and ``y_pred`` are [B, H, W, C] probabilities (y_true one-hot or a binary
mask); everything is computed in float32.  The loss *functions* return one value per image
(shape [B]); the ``keras.losses.Loss`` classes average them over the batch.  For C > 1 (softmax
outputs) the Loss classes by default score only the foreground channels 1..C-1
(``skip_background=None`` = auto: skip channel 0 iff C > 1).

The hybrid loss of the paper (Sec. 2.4) is focal + MS-SSIM + IoU:
``HybridLoss(w_focal=1, w_ms_ssim=1, w_iou=1)``.

MS-SSIM (window, scales, small inputs) is documented in ``models/ms_ssim.py``.
"""
from __future__ import annotations

import keras
from keras import ops

from models.ms_ssim import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_loss, ms_ssim_plan  # noqa: F401 (re-exported)

EPS = 1e-7


def _prep(y_true, y_pred):
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    return y_true, y_pred


def _per_image_mean(x):
    return ops.mean(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


def _per_image_channel_sum(x):
    """[B, H, W, C] -> [B, C]: the overlap terms are taken per class, then averaged, so a small
    class (tumour) weighs as much as a large one (liver) instead of vanishing in their sum."""
    return ops.sum(x, axis=(1, 2))


# ---------------------------------------------------------------------------------------------
# Loss functions: [B, H, W, C] x 2 -> [B]
# ---------------------------------------------------------------------------------------------

def bce_loss(y_true, y_pred):
    """Pixel-wise binary cross-entropy, mean per image."""
    y_true, y_pred = _prep(y_true, y_pred)
    p = ops.clip(y_pred, EPS, 1.0 - EPS)
    bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    return _per_image_mean(bce)


def focal_loss(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0):
    """Binary focal loss (Lin et al. 2017), -alpha_t (1 - p_t)^gamma log(p_t), mean per image."""
    y_true, y_pred = _prep(y_true, y_pred)
    p = ops.clip(y_pred, EPS, 1.0 - EPS)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    fl = -alpha_t * ops.power(1.0 - p_t, gamma) * ops.log(p_t)
    return _per_image_mean(fl)


def _overlap_sums(y_true, y_pred, over_batch: bool):
    """(|T.P|, |T|, |P|) per image and channel, [B, C]; `over_batch`: summed over the whole
    batch first (nnU-Net's "batch Dice") and repeated per image, so a slice without tumour adds
    no term of its own pushing the tumour channel to zero, and a small lesion is judged with
    the batch's other lesions rather than alone."""
    sums = [_per_image_channel_sum(y_true * y_pred), _per_image_channel_sum(y_true),
            _per_image_channel_sum(y_pred)]
    if over_batch:
        sums = [ops.zeros_like(v) + ops.sum(v, axis=0, keepdims=True) for v in sums]
    return sums


def iou_loss(y_true, y_pred, smooth: float = 1.0, over_batch: bool = False):
    """Soft Jaccard loss 1 - (|T.P| + s) / (|T| + |P| - |T.P| + s), per image and channel, then
    the mean over the channels."""
    y_true, y_pred = _prep(y_true, y_pred)
    inter, true, pred = _overlap_sums(y_true, y_pred, over_batch)
    return ops.mean(1.0 - (inter + smooth) / (true + pred - inter + smooth), axis=-1)


def dice_loss(y_true, y_pred, smooth: float = 1.0, over_batch: bool = False):
    """Soft Dice loss 1 - (2|T.P| + s) / (|T| + |P| + s), per image and channel, then the mean
    over the channels."""
    y_true, y_pred = _prep(y_true, y_pred)
    inter, true, pred = _overlap_sums(y_true, y_pred, over_batch)
    return ops.mean(1.0 - (2.0 * inter + smooth) / (true + pred + smooth), axis=-1)


def organ_present(y_true_mask, threshold: float = 0.5, skip_background=None):
    """Per-image organ-present label [B, 1] (float32) from a [B,H,W,C] mask: 1 if any foreground
    pixel (channels 1.. when C > 1 and skip_background is None/True) exceeds ``threshold``."""
    m = ops.cast(y_true_mask, "float32")
    if _should_skip(m, skip_background):
        m = m[..., 1:]
    flat = ops.reshape(m, (ops.shape(m)[0], -1))
    return ops.cast(ops.max(flat, axis=-1, keepdims=True) > threshold, "float32")


# ---------------------------------------------------------------------------------------------
# Loss classes (serializable)
# ---------------------------------------------------------------------------------------------

def _should_skip(y, skip_background):
    channels = y.shape[-1]
    if skip_background is None:
        return channels is not None and channels > 1
    return bool(skip_background) and channels is not None and channels > 1


class _SegLoss(keras.losses.Loss):
    """Base: casts to float32 and drops the background channel (see module doc)."""

    def __init__(self, skip_background=None, name=None, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.skip_background = skip_background

    def call(self, y_true, y_pred):
        y_true, y_pred = _prep(y_true, y_pred)
        if _should_skip(y_pred, self.skip_background):
            y_true, y_pred = y_true[..., 1:], y_pred[..., 1:]
        return self.per_image(y_true, y_pred)

    def per_image(self, y_true, y_pred):  # pragma: no cover - abstract
        raise NotImplementedError

    # The subclass's own constructor arguments, stored as attributes of the same names: what
    # get_config saves so a loaded model rebuilds the same loss.
    config_fields = ()

    def get_config(self):
        config = super().get_config()
        config["skip_background"] = self.skip_background
        config.update({name: getattr(self, name) for name in self.config_fields})
        return config


@keras.saving.register_keras_serializable(package="unet3plus")
class BCELoss(_SegLoss):
    def __init__(self, skip_background=None, name="bce_loss", **kwargs):
        super().__init__(skip_background=skip_background, name=name, **kwargs)

    def per_image(self, y_true, y_pred):
        return bce_loss(y_true, y_pred)


class _SmoothedOverlapLoss(_SegLoss):
    """Base of the overlap losses with a smoothing term: `overlap_loss(y_true, y_pred, smooth,
    over_batch)`. batch_overlap: taken over the whole batch (see _overlap_sums)."""
    overlap_loss = None   # set by each subclass (a staticmethod)
    config_fields = ("smooth", "batch_overlap")

    def __init__(self, smooth=1.0, batch_overlap=False, skip_background=None, name=None,
                 **kwargs):
        super().__init__(skip_background=skip_background, name=name, **kwargs)
        self.smooth = float(smooth)
        self.batch_overlap = bool(batch_overlap)

    def per_image(self, y_true, y_pred):
        return self.overlap_loss(y_true, y_pred, self.smooth, self.batch_overlap)


@keras.saving.register_keras_serializable(package="unet3plus")
class DiceLoss(_SmoothedOverlapLoss):
    overlap_loss = staticmethod(dice_loss)

    def __init__(self, smooth=1.0, batch_overlap=False, skip_background=None, name="dice_loss",
                 **kwargs):
        super().__init__(smooth=smooth, batch_overlap=batch_overlap,
                         skip_background=skip_background, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="unet3plus")
class IoULoss(_SmoothedOverlapLoss):
    overlap_loss = staticmethod(iou_loss)

    def __init__(self, smooth=1.0, batch_overlap=False, skip_background=None, name="iou_loss",
                 **kwargs):
        super().__init__(smooth=smooth, batch_overlap=batch_overlap,
                         skip_background=skip_background, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="unet3plus")
class FocalLoss(_SegLoss):
    config_fields = ("alpha", "gamma")

    def __init__(self, alpha=0.25, gamma=2.0, skip_background=None, name="focal_loss", **kwargs):
        super().__init__(skip_background=skip_background, name=name, **kwargs)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def per_image(self, y_true, y_pred):
        return focal_loss(y_true, y_pred, self.alpha, self.gamma)


@keras.saving.register_keras_serializable(package="unet3plus")
class MSSSIMLoss(_SegLoss):
    config_fields = ("filter_size", "filter_sigma")

    def __init__(self, filter_size=11, filter_sigma=1.5, skip_background=None, name="ms_ssim_loss",
                 **kwargs):
        super().__init__(skip_background=skip_background, name=name, **kwargs)
        self.filter_size, self.filter_sigma = int(filter_size), float(filter_sigma)

    def per_image(self, y_true, y_pred):
        return ms_ssim_loss(y_true, y_pred, 1.0, self.filter_size, self.filter_sigma)


@keras.saving.register_keras_serializable(package="unet3plus")
class BCEDiceLoss(_SegLoss):
    config_fields = ("w_bce", "w_dice", "batch_overlap")

    def __init__(self, w_bce=1.0, w_dice=1.0, batch_overlap=False, skip_background=None,
                 name="bce_dice_loss", **kwargs):
        super().__init__(skip_background=skip_background, name=name, **kwargs)
        self.w_bce, self.w_dice = float(w_bce), float(w_dice)
        self.batch_overlap = bool(batch_overlap)

    def per_image(self, y_true, y_pred):
        return (self.w_bce * bce_loss(y_true, y_pred)
                + self.w_dice * dice_loss(y_true, y_pred, over_batch=self.batch_overlap))


@keras.saving.register_keras_serializable(package="unet3plus")
class HybridLoss(_SegLoss):
    """UNet 3+ hybrid loss: w_focal * focal + w_ms_ssim * (1 - MS-SSIM) + w_iou * IoU loss
    (batch_overlap: the IoU over the whole batch)."""
    config_fields = ("w_focal", "w_ms_ssim", "w_iou", "alpha", "gamma", "filter_size",
                     "filter_sigma", "iou_smooth", "batch_overlap")

    def __init__(self, w_focal=1.0, w_ms_ssim=1.0, w_iou=1.0, alpha=0.25, gamma=2.0,
                 filter_size=11, filter_sigma=1.5, iou_smooth=1.0, batch_overlap=False,
                 skip_background=None, name="hybrid_loss", **kwargs):
        super().__init__(skip_background=skip_background, name=name, **kwargs)
        self.w_focal, self.w_ms_ssim, self.w_iou = float(w_focal), float(w_ms_ssim), float(w_iou)
        self.alpha, self.gamma = float(alpha), float(gamma)
        self.filter_size, self.filter_sigma = int(filter_size), float(filter_sigma)
        self.iou_smooth = float(iou_smooth)
        self.batch_overlap = bool(batch_overlap)

    def per_image(self, y_true, y_pred):
        total = 0.0
        if self.w_focal:
            total = total + self.w_focal * focal_loss(y_true, y_pred, self.alpha, self.gamma)
        if self.w_ms_ssim:
            total = total + self.w_ms_ssim * ms_ssim_loss(y_true, y_pred, 1.0, self.filter_size,
                                                          self.filter_sigma)
        if self.w_iou:
            total = total + self.w_iou * iou_loss(y_true, y_pred, self.iou_smooth,
                                                  self.batch_overlap)
        return total



_LOSSES = {
    "hybrid": HybridLoss,
    "dice": DiceLoss,
    "bce": BCELoss,
    "focal": FocalLoss,
    "iou": IoULoss,
    "ms_ssim": MSSSIMLoss,
    "bce_dice": BCEDiceLoss,
}


def get_loss(name: str, **kwargs) -> keras.losses.Loss:
    """Loss by name: one of models/model_config.py LOSSES."""
    key = name.lower().replace("-", "_").replace("+", "_")
    if key not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(_LOSSES)}")
    return _LOSSES[key](**kwargs)
