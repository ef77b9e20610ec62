"""Multi-scale SSIM (the structural term of the hybrid loss), backend-neutral (``keras.ops``).

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

from keras import ops

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _as_float32(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


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
    x, y = _as_float32(y_true, y_pred)
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
