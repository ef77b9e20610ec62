"""Training-time augmentation as batched TensorFlow ops (no py_function), for the tf.data input
and, for the elastic part on a CPU-only DALI pipeline, after the DALIDataset.

One geometric resampling per batch: rotation, scaling (and an optional left-right flip) and an
elastic displacement field are composed into one map of source coordinates, so the image is
interpolated once (bilinear) and the mask with the same map by nearest neighbour: a mask keeps
exactly its set of values and a one-hot mask stays one-hot. Coordinates outside the image are
clamped to the border (like DALI's warp_affine without fill_value), which also keeps one-hot
masks one-hot, where a constant fill would not. Brightness, contrast and noise touch the image
only.

Randomness is stateless: every batch is augmented from (seed, batch index), so a run is
reproducible whatever the number of parallel map calls.

`organ` (organ present) is recomputed from the augmented mask rather than kept: a scaled or
displaced slice can push a small organ at the border out of view, and the target must describe
the pixels the model sees. Present = any non-background pixel (C == 1: mask > 0.5; C > 1:
channels 1.. > 0.5, channel 0 being background).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import tensorflow as tf

from models.losses import organ_present
from trainer.augment_config import AugmentConfig


def has_affine(cfg: AugmentConfig) -> bool:
    return (cfg.rotation_degrees > 0 or tuple(cfg.scale_range) != (1.0, 1.0)
            or cfg.flip_left_right)


def is_geometric(cfg: AugmentConfig) -> bool:
    return has_affine(cfg) or cfg.elastic_alpha > 0


def _uniform(seed, batch, lo, hi):
    return tf.random.stateless_uniform([batch], seed, minval=float(lo), maxval=float(hi))


def _seeds(seed, n: int):
    """n independent stateless seeds from one [2] int seed."""
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n))


def gaussian_kernel(sigma: float, radius: int) -> tf.Tensor:
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(x / sigma))
    return k / tf.reduce_sum(k)


def elastic_displacement(seed, batch: int, height: int, width: int, alpha: float,
                         sigma: float) -> tf.Tensor:
    """[B, H, W, 2] (dy, dx) smooth random displacement, in pixels: white noise blurred by a
    Gaussian of `sigma` pixels, scaled so each component's standard deviation is `alpha`.
    The field is smooth at the scale of sigma, so it is drawn on a grid `sigma // 2` times
    coarser and upsampled bilinearly (8x less work at sigma 8; the standard deviation drops
    by under 2% between grid points)."""
    step = max(1, int(sigma // 2))
    rows, cols, coarse_sigma = -(-height // step), -(-width // step), sigma / step
    radius = max(1, min(int(math.ceil(3 * coarse_sigma)), rows - 1, cols - 1))
    k = gaussian_kernel(coarse_sigma, radius)
    # The two components as separate one-channel images: [2B, rows, cols, 1].
    noise = tf.random.stateless_normal([2 * batch, rows, cols, 1], seed)
    padded = tf.pad(noise, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    # Separable blur: a [2R+1, 1] then a [1, 2R+1] filter. (Plain conv2d: a depthwise conv
    # with a tall kernel on two channels crashed TF 2.16's CPU kernel here.)
    smooth = tf.nn.conv2d(padded, tf.reshape(k, [-1, 1, 1, 1]), 1, "VALID")
    smooth = tf.nn.conv2d(smooth, tf.reshape(k, [1, -1, 1, 1]), 1, "VALID")
    if step > 1:
        smooth = tf.image.resize(smooth, [height, width], "bilinear")
    field = tf.concat(tf.split(smooth, 2, axis=0), axis=-1)
    # Blurring unit-variance white noise with a normalized 2-D kernel leaves a standard
    # deviation of sqrt(sum k2d^2) = sum k1d^2; divide it out so alpha is in pixels.
    return field * (alpha / tf.reduce_sum(tf.square(k)))


def resample(images: tf.Tensor, coords: tf.Tensor, method: str) -> tf.Tensor:
    """Samples [B, H, W, C] `images` at [B, H, W, 2] (y, x) pixel coordinates (pixel centres at
    integers), clamped to the image. method: "bilinear" | "nearest"."""
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    channels = images.shape[-1]
    flat = tf.reshape(images, [-1, channels])
    y = tf.clip_by_value(coords[..., 0], 0.0, tf.cast(h - 1, tf.float32))
    x = tf.clip_by_value(coords[..., 1], 0.0, tf.cast(w - 1, tf.float32))
    base = tf.reshape(tf.range(b) * h * w, [-1, 1, 1])

    def gather(yi, xi):
        return tf.gather(flat, base + yi * w + xi)

    if method == "nearest":
        return gather(tf.cast(tf.floor(y + 0.5), tf.int32), tf.cast(tf.floor(x + 0.5), tf.int32))
    y0f, x0f = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0f)[..., None], (x - x0f)[..., None]
    y0, x0 = tf.cast(y0f, tf.int32), tf.cast(x0f, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, h - 1), tf.minimum(x0 + 1, w - 1)
    top = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _identity_grid(height: int, width: int) -> Tuple[tf.Tensor, tf.Tensor]:
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32),
                         indexing="ij")
    return ys, xs


def source_coordinates(seed, batch: int, height: int, width: int, cfg: AugmentConfig,
                       applied: tf.Tensor, affine: bool = True, elastic: bool = True
                       ) -> tf.Tensor:
    """[B, H, W, 2] source (y, x) of every output pixel: the inverse of a rotation and scaling
    about the image centre (and a flip), plus the elastic displacement. `applied` [B] is 1 for
    images drawn for augmentation, 0 for those left as they are (identity map)."""
    s_angle, s_scale, s_flip, s_field = _seeds(seed, 4)
    ys, xs = _identity_grid(height, width)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    qy, qx = (ys - cy)[None], (xs - cx)[None]
    src_y, src_x = [tf.broadcast_to(v, [batch, height, width]) for v in (ys, xs)]
    if affine:
        r = math.radians(float(cfg.rotation_degrees))
        angle = _uniform(s_angle, batch, -r, r) * applied
        lo, hi = cfg.scale_range
        scale = 1.0 + (_uniform(s_scale, batch, lo, hi) - 1.0) * applied
        flip = tf.zeros([batch])
        if cfg.flip_left_right:
            flip = tf.cast(_uniform(s_flip, batch, 0, 1) < 0.5, tf.float32) * applied
        fx = 1.0 - 2.0 * flip
        cos, sin = [tf.reshape(v / scale, [-1, 1, 1]) for v in (tf.cos(angle), tf.sin(angle))]
        fx = tf.reshape(fx, [-1, 1, 1])
        src_y = cy + cos * qy + sin * fx * qx
        src_x = cx - sin * qy + cos * fx * qx
    coords = tf.stack([src_y, src_x], axis=-1)
    if elastic and cfg.elastic_alpha > 0:
        field = elastic_displacement(s_field, batch, height, width, cfg.elastic_alpha,
                                     cfg.elastic_sigma)
        coords = coords + field * tf.reshape(applied, [-1, 1, 1, 1])
    return coords


def adjust_intensity(image: tf.Tensor, seed, cfg: AugmentConfig, applied: tf.Tensor,
                     mean: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Contrast about each image's mean (`mean` [B, 1, 1, 1], default this image's), an
    additive brightness shift and Gaussian noise, after any resampling so the noise stays
    white."""
    s_bright, s_contrast, s_noise = _seeds(seed, 3)
    batch = tf.shape(image)[0]
    a = tf.reshape(applied, [-1, 1, 1, 1])
    lo, hi = cfg.contrast_range
    contrast = 1.0 + (tf.reshape(_uniform(s_contrast, batch, lo, hi), [-1, 1, 1, 1]) - 1.0) * a
    shift = tf.reshape(_uniform(s_bright, batch, -cfg.brightness, cfg.brightness), [-1, 1, 1, 1])
    if mean is None:
        mean = tf.reduce_mean(image, axis=[1, 2, 3], keepdims=True)
    out = (image - mean) * contrast + mean + shift * a
    if cfg.noise_std > 0:
        out = out + tf.random.stateless_normal(tf.shape(image), s_noise,
                                               stddev=float(cfg.noise_std)) * a
    return out


def _applied(seed, batch, probability: float) -> tf.Tensor:
    return tf.cast(_uniform(seed, batch, 0, 1) < float(probability), tf.float32)


def augment_batch(image: tf.Tensor, mask: tf.Tensor, seed, cfg: AugmentConfig,
                  affine: bool = True, elastic: bool = True, intensity: bool = True
                  ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Augments a batch: image [B, H, W, K], mask [B, H, W, C], seed [2] ints. Returns
    (image, mask, organ [B, 1]). affine/elastic/intensity select parts (the DALI path applies
    only what DALI cannot do on its device)."""
    height, width = image.shape[1], image.shape[2]
    batch = tf.shape(image)[0]
    s_applied, s_geometry, s_intensity = _seeds(seed, 3)
    applied = _applied(s_applied, batch, cfg.probability)
    # Contrast pivots on the mean of the image as read, as in the DALI pipeline.
    mean = tf.reduce_mean(image, axis=[1, 2, 3], keepdims=True)
    if (affine and has_affine(cfg)) or (elastic and cfg.elastic_alpha > 0):
        coords = source_coordinates(s_geometry, batch, height, width, cfg, applied,
                                    affine=affine, elastic=elastic)
        image = resample(image, coords, "bilinear")
        mask = resample(mask, coords, "nearest")
    if intensity:
        image = adjust_intensity(image, s_intensity, cfg, applied, mean)
    return image, mask, organ_present(mask)
