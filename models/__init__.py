"""UNet 3+ model, encoders, losses and metrics (Keras 3, backend-neutral)."""
from models.encoders import ENCODERS, build_encoder
from models.losses import HybridLoss, get_loss
from models.metrics import (DiceCoefficient, IoUScore, MeanSliceDice, MeanSliceIoU, dice_numpy,
                            iou_numpy, mean_slice_dice_numpy, mean_slice_iou_numpy,
                            overlap_metrics)
from models.unet3plus import VARIANTS, build_unet3plus, model_output_names

__all__ = [
    "VARIANTS", "ENCODERS", "build_unet3plus", "build_encoder", "model_output_names",
    "HybridLoss", "get_loss", "DiceCoefficient", "IoUScore", "MeanSliceDice", "MeanSliceIoU",
    "overlap_metrics", "dice_numpy", "iou_numpy", "mean_slice_dice_numpy", "mean_slice_iou_numpy",
]
