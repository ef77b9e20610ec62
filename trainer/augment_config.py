"""The augmentation settings (a plain dataclass, no TensorFlow), so that pipeline/configs.py
can hold them without importing the Trainer's ops. trainer/augment.py applies them."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from schema.settings import settings_from_dict


@dataclasses.dataclass
class AugmentConfig:
    """Training-time augmentation (train split only). Image and mask always move together;
    masks are resampled with nearest neighbour. No left-right flips: anatomy is not symmetric."""
    enabled: bool = True                # augment the train split at all
    rotation_degrees: float = 10.0      # uniform in [-r, r]
    scale_range: Tuple[float, float] = (0.9, 1.1)   # zoom factor, uniform in the range
    elastic_alpha: float = 2.0          # std of the displacement in pixels (0 = off)
    elastic_sigma: float = 12.0         # smoothness of the displacement field, pixels
    brightness: float = 0.05            # additive shift, uniform in [-b, b] (normalized units)
    contrast_range: Tuple[float, float] = (0.9, 1.1)   # multiplicative, about the image mean
    noise_std: float = 0.02             # Gaussian noise, normalized units
    flip_left_right: bool = False       # off: the liver is on the patient's right
    probability: float = 1.0            # chance that a given image is augmented at all


def augment_config(cfg: Optional[dict]) -> AugmentConfig:
    """The AugmentConfig of a custom_config dict (JSON turns its tuples into lists); None or
    missing keys take the dataclass defaults, unknown keys are an error."""
    if cfg is None:
        return AugmentConfig()
    if isinstance(cfg, AugmentConfig):
        return cfg
    return settings_from_dict(AugmentConfig, cfg, "augmentation")
