"""The Transform `preprocessing_fn`: raw slice bytes -> normalized float images and the model's
targets. The same graph is saved inside the exported model, so serving takes raw examples.

custom_config (pipeline/pipeline.py; normalization and classes are TransformConfig's fields):
  image_shape    [H, W, K]
  window         [lo, hi] HU (the ExampleGen already clipped to it)
  normalization  "window": the HU window mapped linearly to [0, 1] (the paper's code);
                 "zscore": (HU - mean) / std with mean and std of the windowed HU of the
                 training split's foreground (liver and tumour) voxels, computed by tft
                 analyzers, as nnU-Net does for CT.
  classes        "liver" (default): mask [B, H, W, 1], 1 where liver or tumour (labels > 0);
                 "liver_tumor": mask [B, H, W, 3], one-hot background / liver / tumour.
                 Either way `organ` is 1 where the slice has liver (incl. tumour).
"""
from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft

from preprocessing import features as F
from preprocessing.transform_config import TransformConfig



def decode_image(raw: tf.Tensor, image_shape) -> tf.Tensor:
    """[B, 1] raw int16 bytes -> float32 HU [B, H, W, K]. decode_raw works on the whole batch
    because every example has the same byte length."""
    h, w, k = (int(v) for v in image_shape)
    values = tf.io.decode_raw(tf.reshape(raw, [-1]), tf.int16, little_endian=True)
    return tf.reshape(tf.cast(values, tf.float32), [-1, h, w, k])


def decode_label(raw: tf.Tensor, image_shape) -> tf.Tensor:
    """[B, 1] raw uint8 bytes -> uint8 labels [B, H, W, 1]."""
    h, w = int(image_shape[0]), int(image_shape[1])
    return tf.reshape(tf.io.decode_raw(tf.reshape(raw, [-1]), tf.uint8), [-1, h, w, 1])


def normalize_window(hu: tf.Tensor, window) -> tf.Tensor:
    """Maps the HU window linearly to [0, 1]."""
    lo, hi = float(window[0]), float(window[1])
    return (tf.clip_by_value(hu, lo, hi) - lo) / (hi - lo)


NO_FOREGROUND = ("z-score normalization: the analysed train split has no foreground "
                 "(label > 0) voxels, so there is no foreground mean and std to normalize with; "
                 "use --normalization window or check the labels")


def normalize_zscore(hu: tf.Tensor, labels: tf.Tensor, window) -> tf.Tensor:
    """z-score with the foreground statistics of the analysed (training) data. The analyzers
    become constants in the saved graph, so serving needs no labels. Fails (NO_FOREGROUND)
    when the analysed data has no foreground voxel."""
    hu = tf.clip_by_value(hu, float(window[0]), float(window[1]))
    centre = hu.shape[-1] // 2
    foreground = tf.boolean_mask(hu[..., centre:centre + 1], labels > 0)
    mean = tft.mean(foreground)
    std = tf.sqrt(tft.var(foreground)) + 1e-6
    # Without foreground, mean and var of the empty set come out as 0, and the images as
    # HU / 1e-6 (~1e8) without any error; stop the Transform run instead, naming the cause.
    # background_only: 1 when no analysed slice has a label > 0. It is phrased so that 0 is the
    # good value because the assertion also runs while tft analyses, with 0 standing in for
    # every analyzer's output until it is computed (a foreground count would fail there).
    background_only = tft.min(tf.cast(tf.reduce_all(labels == 0, axis=[1, 2, 3]), tf.float32))
    check = tf.debugging.assert_equal(background_only, 0.0, message=NO_FOREGROUND)
    with tf.control_dependencies([check]):
        return (hu - mean) / std


def make_mask(labels: tf.Tensor, classes: str) -> tf.Tensor:
    """uint8 labels [B, H, W, 1] (0/1/2) -> float32 target of the classes mode."""
    if F.check_classes(classes) == "liver_tumor":
        return tf.one_hot(tf.cast(labels[..., 0], tf.int32), F.MASK_CHANNELS[classes],
                          dtype=tf.float32)
    # The liver target includes tumour: the liver task segments the whole organ.
    return tf.cast(labels > 0, tf.float32)


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config: Dict[str, Any]
                     ) -> Dict[str, tf.Tensor]:
    image_shape = custom_config["image_shape"]
    settings = TransformConfig.from_custom_config(custom_config)   # checks both choices
    method, classes = settings.normalization, settings.classes
    hu = decode_image(inputs[F.IMAGE], image_shape)
    labels = decode_label(inputs[F.LABEL], image_shape)
    if method == "zscore":
        image = normalize_zscore(hu, labels, custom_config["window"])
    else:
        image = normalize_window(hu, custom_config["window"])
    outputs = {
        F.IMAGE: image,
        F.MASK: make_mask(labels, classes),
        F.ORGAN: tf.cast(tf.reshape(inputs[F.HAS_LIVER], [-1, 1]), tf.float32),
    }
    for name in F.PASSTHROUGH_FEATURES:
        outputs[name] = inputs[name]
    return outputs
