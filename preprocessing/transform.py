"""The Transform `preprocessing_fn`: raw slice bytes -> normalized float images and the model's
targets. The same graph is saved inside the exported model, so serving takes raw examples.

custom_config (from pipeline/configs.py): image_shape [H, W, K], window [lo, hi].
"""
from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf

from preprocessing import features as F


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
    """Maps the HU window linearly to [0, 1] (values were clipped by the ExampleGen)."""
    lo, hi = float(window[0]), float(window[1])
    return (tf.clip_by_value(hu, lo, hi) - lo) / (hi - lo)


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config: Dict[str, Any]
                     ) -> Dict[str, tf.Tensor]:
    image_shape = custom_config["image_shape"]
    outputs = {F.IMAGE: normalize_window(decode_image(inputs[F.IMAGE], image_shape),
                                         custom_config["window"])}
    if F.LABEL in inputs:
        labels = decode_label(inputs[F.LABEL], image_shape)
        # Liver target includes tumour: the liver task segments the whole organ.
        outputs[F.MASK] = tf.cast(labels > 0, tf.float32)
        outputs[F.ORGAN] = tf.cast(tf.reshape(inputs[F.HAS_LIVER], [-1, 1]), tf.float32)
    for name in F.PASSTHROUGH_FEATURES:
        if name in inputs:
            outputs[name] = inputs[name]
    return outputs
