"""The model's settings: a plain dataclass (no Keras), composed by pipeline/configs.py and read
back by the Trainer from its custom_config."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Sequence, Tuple

from schema.settings import settings_from_dict

# The UNet 3+ variants (models/unet3plus.py): the plain model, deep supervision (a side output per
# decoder scale), and deep supervision with the classification-guided module (CGM).
VARIANTS = ("base", "ds", "ds_cgm")
DEEP_SUPERVISED = ("ds", "ds_cgm")   # the variants with side outputs
# Backbones (models/encoders.py): the paper's plain UNet encoder, or keras.applications topologies.
ENCODERS = ("unet3plus", "vgg16", "vgg19", "resnet50")
# Segmentation losses by name (models/losses.py builds them) and the keyword parameters each
# takes (ModelConfig.loss_weights), so a wrong one is refused before any work starts;
# tests/test_models.py checks both against the loss classes.
LOSS_PARAMETERS = {
    "hybrid": ("w_focal", "w_ms_ssim", "w_iou", "alpha", "gamma", "filter_size", "filter_sigma",
               "iou_smooth", "batch_overlap"),
    "dice": ("smooth", "batch_overlap"), "bce": (), "focal": ("alpha", "gamma"),
    "iou": ("smooth", "batch_overlap"), "ms_ssim": ("filter_size", "filter_sigma"),
    "bce_dice": ("w_bce", "w_dice", "batch_overlap"),
}
LOSSES = tuple(LOSS_PARAMETERS)


def check_encoder(encoder: str) -> None:
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; expected one of {ENCODERS}")


def encoder_depth(encoder: str, filters: Sequence[int]) -> int:
    """Number of encoder scales: len(filters) for ``unet3plus``, 5 for the keras.applications
    encoders (their widths are fixed). The model pools depth - 1 times."""
    check_encoder(encoder)
    return len(tuple(filters)) if encoder == "unet3plus" else 5


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


@dataclasses.dataclass
class ModelConfig:
    variant: str = "base"                                # one of VARIANTS
    encoder: str = "unet3plus"          # one of ENCODERS (unet3plus: the paper's)
    # Encoder widths, one per scale (unet3plus encoder; the others have fixed widths)
    filters: Tuple[int, ...] = (64, 128, 256, 512, 1024)
    skip_filters: int = 64      # channels of each full-scale skip (the paper's 64)
    loss: str = "hybrid"                                 # one of LOSSES (hybrid: the paper's)
    # The loss's own weights by name, e.g. {"w_focal": 1, "w_ms_ssim": 0.5, "w_iou": 1} for
    # hybrid or {"w_bce": 1, "w_dice": 2} for bce_dice (models/losses.py); {}: all 1.
    # batch_overlap: 1 takes the Dice / IoU term over the whole batch (small lesions).
    loss_weights: Dict[str, float] = dataclasses.field(default_factory=dict)
    deep_supervision_weight: float = 1.0   # weight of each side output's loss (ds variants)
    cgm_weight: float = 1.0                # weight of the organ classifier's BCE (ds_cgm)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able: the component's custom_config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        """Inverse of to_dict; a missing key takes its default, an unknown one is an error."""
        return settings_from_dict(cls, d, "model")
