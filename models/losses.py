"""Segmentation losses for UNet 3+, backend-neutral (``keras.ops`` only).

Conventions: ``y_true`` and ``y_pred`` are [B, H, W, C] probabilities (y_true one-hot or a binary
mask); everything is computed in float32.  The loss *functions* return one value per image
(shape [B]); the ``keras.losses.Loss`` classes average them over the batch.  For C > 1 (softmax
outputs) the Loss classes by default score only the foreground channels 1..C-1
(``skip_background=None`` = auto: skip channel 0 iff C > 1).

The hybrid loss of the paper (Sec. 2.4) is focal + MS-SSIM + IoU:
``HybridLoss(w_focal=1, w_ms_ssim=1, w_iou=1)``.

MS-SSIM follows Wang et al. 2003 / ``tf.image.ssim_multiscale``: 5 scales with weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333), Gaussian window 11 (sigma 1.5) with VALID filtering,
2x2 average-pool downsampling between scales (an odd side is first padded by repeating its last
row/column, as TF's symmetric padding does), contrast-structure terms at scales 1..4 and the full
SSIM at the coarsest scale, clipped at 0 and combined as a weighted geometric mean, then averaged
over channels.  For images >= 176x176 this matches ``tf.image.ssim_multiscale(max_val=1)``.
Small inputs: (1) the number of scales is reduced while the coarsest scale would be smaller than
3 pixels (the kept weights are renormalised to sum 1); (2) at any scale smaller than the window
the window is shrunk to the largest odd size that fits (Gaussian sigma 1.5 kept, truncated and
renormalised).  A 64x64 input thus uses 5 scales (64, 32, 16, 8, 4) with windows 11, 11, 11, 7, 3.
"""
from __future__ import annotations

import math

import keras
from keras import ops

EPS = 1e-7
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


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


def _gaussian_1d(size: int, sigma: float):
    coords = [i - (size - 1) / 2.0 for i in range(size)]
    g = [math.exp(-0.5 * (c / sigma) ** 2) for c in coords]
    s = sum(g)
    return [v / s for v in g]


def _blur(x, size: int, sigma: float):
    """Separable Gaussian filter, VALID padding, per channel.  x: [B, H, W, C]."""
    channels = x.shape[-1]
    g = ops.convert_to_tensor(_gaussian_1d(size, sigma), dtype="float32")
    kh = ops.tile(ops.reshape(g, (size, 1, 1, 1)), (1, 1, channels, 1))
    kw = ops.tile(ops.reshape(g, (1, size, 1, 1)), (1, 1, channels, 1))
    x = ops.depthwise_conv(x, kh, strides=1, padding="valid")
    return ops.depthwise_conv(x, kw, strides=1, padding="valid")


def _ssim_terms(x, y, size: int, sigma: float, max_val: float, k1: float = 0.01, k2: float = 0.03):
    """Mean SSIM and mean contrast-structure term per image and channel: two [B, C] tensors."""
    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    channels = x.shape[-1]
    stats = _blur(ops.concatenate([x, y, x * x + y * y, x * y], axis=-1), size, sigma)
    mu_x = stats[..., :channels]
    mu_y = stats[..., channels:2 * channels]
    e_xx_yy = stats[..., 2 * channels:3 * channels]
    e_xy = stats[..., 3 * channels:]
    num0 = 2.0 * mu_x * mu_y
    den0 = mu_x * mu_x + mu_y * mu_y
    luminance = (num0 + c1) / (den0 + c1)
    cs = (2.0 * e_xy - num0 + c2) / (e_xx_yy - den0 + c2)
    ssim = ops.mean(luminance * cs, axis=(1, 2))
    return ssim, ops.mean(cs, axis=(1, 2))


def _downsample2(x):
    h, w = x.shape[1], x.shape[2]
    if h % 2:
        x = ops.concatenate([x, x[:, -1:, :, :]], axis=1)
    if w % 2:
        x = ops.concatenate([x, x[:, :, -1:, :]], axis=2)
    return ops.average_pool(x, pool_size=2, strides=2, padding="valid")


def ms_ssim_plan(height: int, width: int, filter_size: int = 11, levels: int = 5, min_size: int = 3):
    """(window sizes per scale, weights) used by :func:`ms_ssim` for an HxW image (see module doc)."""
    side = min(height, width)
    levels = min(levels, len(MS_SSIM_WEIGHTS))
    while levels > 1 and math.ceil(side / 2 ** (levels - 1)) < min_size:
        levels -= 1
    weights = MS_SSIM_WEIGHTS[:levels]
    total = sum(weights)
    weights = tuple(w / total for w in weights) if levels < len(MS_SSIM_WEIGHTS) else weights
    windows = []
    s = side
    for _ in range(levels):
        win = min(filter_size, s if s % 2 else s - 1)
        windows.append(max(win, 1))
        s = math.ceil(s / 2)
    return tuple(windows), weights


def ms_ssim(y_true, y_pred, max_val: float = 1.0, filter_size: int = 11, filter_sigma: float = 1.5,
            levels: int = 5):
    """Multi-scale SSIM per image and channel: [B, C].  Needs static H, W, C."""
    x, y = _prep(y_true, y_pred)
    h, w, c = y.shape[1], y.shape[2], y.shape[3]
    if h is None or w is None or c is None:
        raise ValueError("ms_ssim needs a static height, width and channel count of y_pred")
    if tuple(x.shape[1:]) != (h, w, c):  # e.g. y_true from a tf.data pipeline without static shape
        x = ops.reshape(x, (-1, h, w, c))
    windows, weights = ms_ssim_plan(h, w, filter_size, levels)
    values = []
    for i, win in enumerate(windows):
        if i > 0:
            x, y = _downsample2(x), _downsample2(y)
        ssim, cs = _ssim_terms(x, y, win, filter_sigma, max_val)
        values.append(cs if i < len(windows) - 1 else ssim)
    out = 1.0
    for v, wgt in zip(values, weights):
        # relu(v) ** w as in TF; the inner floor keeps the gradient finite where v <= 0.
        term = ops.where(v > 0, ops.power(ops.maximum(v, 1e-12), wgt), ops.zeros_like(v))
        out = out * term
    return out


def ms_ssim_loss(y_true, y_pred, max_val: float = 1.0, filter_size: int = 11,
                 filter_sigma: float = 1.5):
    """1 - MS-SSIM, averaged over the channels given: [B]."""
    return 1.0 - ops.mean(ms_ssim(y_true, y_pred, max_val, filter_size, filter_sigma), axis=-1)


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
