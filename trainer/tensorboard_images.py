"""TensorBoard extras: the learning rate, and a few validation slices shown as
[CT | ground truth | prediction] after every epoch, so a run can be judged by eye.
One-channel masks show the liver probability; multi-class ones the argmax class as grey levels
(background black, liver grey, tumour white for three classes)."""
from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf


def mask_to_gray(mask: np.ndarray) -> np.ndarray:
    """[B, H, W, C] mask or probabilities -> [B, H, W, 1] in [0, 1] for display."""
    mask = np.asarray(mask, np.float32)
    if mask.shape[-1] == 1:
        return mask
    return (np.argmax(mask, axis=-1)[..., None] / (mask.shape[-1] - 1)).astype(np.float32)


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
        panel = np.concatenate([ct, mask_to_gray(self._masks), mask_to_gray(predicted)],
                               axis=2)
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        with self._writer.as_default():
            tf.summary.image("ct | truth | prediction", panel, step=epoch,
                             max_outputs=len(panel))
            tf.summary.scalar("learning_rate", learning_rate, step=epoch)
        self._writer.flush()
