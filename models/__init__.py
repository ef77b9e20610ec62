"""UNet 3+ model, losses and metrics (Keras 3, backend-neutral)."""
from models.losses import HybridLoss, get_loss
from models.metrics import DiceCoefficient, IoUScore, dice_numpy, iou_numpy
from models.unet3plus import VARIANTS, build_unet3plus, model_output_names

__all__ = [
    "VARIANTS", "build_unet3plus", "model_output_names", "HybridLoss", "get_loss",
    "DiceCoefficient", "IoUScore", "dice_numpy", "iou_numpy",
]
