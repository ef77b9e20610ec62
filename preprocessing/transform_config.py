"""The Transform's settings: a plain dataclass (no TensorFlow), so pipeline/configs.py and the
runners can hold it without importing tf.Transform. preprocessing/transform.py applies it."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

from preprocessing.features import MASK_CHANNELS, check_classes
from schema.settings import settings_from_dict

NORMALIZATIONS = ("window", "zscore")
CLASSES = tuple(MASK_CHANNELS)   # liver | liver_tumor


@dataclasses.dataclass
class TransformConfig:
    # one of NORMALIZATIONS; window: HU window -> [0, 1], zscore: foreground z-score
    normalization: str = "window"
    # one of CLASSES; liver: one channel, liver including tumour (the paper's liver task),
    # liver_tumor: three one-hot channels background / liver / tumour (softmax model)
    classes: str = "liver"

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, "
                             f"got {self.normalization!r}")
        check_classes(self.classes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TransformConfig":
        """A missing key takes its default; an unknown one is an error."""
        return settings_from_dict(cls, d, "Transform")

    @classmethod
    def from_custom_config(cls, custom_config: Dict[str, Any]) -> "TransformConfig":
        """The Transform component's custom_config holds these fields beside image_shape and
        window (pipeline/pipeline.py)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in custom_config.items() if k in names})
