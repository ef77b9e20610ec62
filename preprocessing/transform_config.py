"""The Transform's settings: a plain dataclass (no TensorFlow), so pipeline/configs.py and the
runners can hold it without importing tf.Transform. preprocessing/transform.py applies it."""
from __future__ import annotations

import dataclasses

from preprocessing.features import MASK_CHANNELS

NORMALIZATIONS = ("window", "zscore")
CLASSES = tuple(MASK_CHANNELS)   # liver | liver_tumor


@dataclasses.dataclass
class TransformConfig:
    normalization: str = "window"   # window: HU window -> [0, 1]; zscore: foreground z-score
    # (one of NORMALIZATIONS)
    # liver: one channel, liver including tumour (the paper's liver task);
    # liver_tumor: three one-hot channels background / liver / tumour (softmax model).
    classes: str = "liver"
