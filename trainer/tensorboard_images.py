"""TensorBoard extras: the learning rate, and a few validation slices shown as
[CT | ground truth | prediction] after every epoch, so a run can be judged by eye."""
from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf


class SegmentationImages(keras.callbacks.Callback):
    def __init__(self, log_dir: str, images: np.ndarray, masks: np.ndarray, max_images: int = 4):
        super().__init__()
        self._images = images[:max_images]
        self._masks = masks[:max_images]
        self._writer = tf.summary.create_file_writer(os.path.join(log_dir, "images"))

    def on_epoch_end(self, epoch, logs=None):
        predicted = np.asarray(self.model(self._images, training=False)["mask"], np.float32)
        centre = self._images[..., self._images.shape[-1] // 2:][..., :1]
        # Min-max per image, so z-scored inputs show as well as [0, 1] ones.
        lo = centre.min(axis=(1, 2, 3), keepdims=True)
        hi = centre.max(axis=(1, 2, 3), keepdims=True)
        ct = (centre - lo) / np.maximum(hi - lo, 1e-6)
        panel = np.concatenate([ct, self._masks[..., :1], predicted[..., :1]], axis=2)
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        with self._writer.as_default():
            tf.summary.image("ct | truth | prediction", panel, step=epoch,
                             max_outputs=len(panel))
            tf.summary.scalar("learning_rate", learning_rate, step=epoch)
        self._writer.flush()
