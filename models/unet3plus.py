"""UNet 3+ (Huang et al. 2020, arXiv:2004.08790) in Keras 3, backend-neutral.

Structure (defaults = the paper's configuration):

* Encoder: 5 stages X_En^1..X_En^5 of two (3x3 conv, BN, ReLU) units with ``filters`` channels,
  2x2 max-pool between stages (the paper's plain UNet backbone).  X_De^5 = X_En^5.
  ``encoder="vgg16" | "vgg19" | "resnet50"`` swaps in a keras.applications backbone (trained from
  scratch, ``filters`` ignored) that also yields 5 maps at scales 1..1/16; the decoder's skip
  convs take its channel counts (models/encoders.py).
* Decoder stage X_De^i (i = 4..1) takes all five scales (paper Eq. 1):
  X_En^k for k < i max-pooled by 2^(i-k), X_En^i as is, X_De^k for k > i bilinearly upsampled
  by 2^(k-i); each goes through 3x3 conv -> ``skip_filters`` + BN + ReLU, the five maps are
  concatenated (5 * skip_filters = 320 channels) and fused by 3x3 conv(320) + BN + ReLU.
* Head: 3x3 conv to ``num_classes`` on X_De^1 and sigmoid (1 class) or softmax (> 1 classes).
* ``variant="ds"``: deep supervision; side heads (3x3 conv -> num_classes, bilinear upsample to
  full size, activation) on X_De^2, X_De^3, X_De^4 and X_En^5.
* ``variant="ds_cgm"``: ds + classification-guided module on X_En^5: dropout -> 1x1 conv to ONE
  channel -> global max pool -> sigmoid = probability that the slice contains the organ
  (``"organ"``, shape [B, 1]; one sigmoid channel instead of the paper's two softmax channels,
  which is equivalent for a binary decision and trains with plain BCE).  Every segmentation
  output is gated by the hard decision ``organ > 0.5`` (stop-gradient, see
  :class:`models.blocks.ClassificationGate`): a slice classified empty is background everywhere.

Outputs are always a dict (see :func:`model_output_names`) of float32 tensors, so the model is
safe under ``keras.mixed_precision.set_dtype_policy("mixed_bfloat16")``.

Parameter count at 320x320x3, 1 class, default widths: 26,971,777 trainable (paper: 26.97 M),
26,984,833 including the BatchNorm moving statistics.  Same setting, base variant, other
encoders (trainable): vgg16 21.66 M, vgg19 26.97 M, resnet50 16.61 M.  Forward FLOPs:
bench/model_flops.py (617.7 GFLOPs = 2 x multiply-adds per 320x320 image for the default).
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

from models.blocks import BN_MOMENTUM, ClassificationGate, conv_bn_relu, resample
from models.encoders import build_encoder
from models.model_config import DEEP_SUPERVISED, check_encoder, check_variant, encoder_depth


def model_output_names(variant: str = "base", depth: int = 5) -> list[str]:
    """Names (dict keys) of the model outputs for ``variant``.

    base: ["mask"]; ds: + ["mask_ds2", ..., "mask_ds5"]; ds_cgm: + ["organ"].
    """
    check_variant(variant)
    names = ["mask"]
    if variant in DEEP_SUPERVISED:
        names += [f"mask_ds{k}" for k in range(2, depth + 1)]
    if variant == "ds_cgm":
        names.append("organ")
    return names


def _seg_head(x, num_classes: int, activation: str, upsample: int, out_name: str, layer_prefix: str):
    """3x3 conv to num_classes -> bilinear upsample (if needed) -> float32 activation."""
    y = layers.Conv2D(num_classes, 3, padding="same", name=f"{layer_prefix}_conv")(x)
    if upsample > 1:
        y = layers.UpSampling2D(size=upsample, interpolation="bilinear", name=f"{layer_prefix}_up")(y)
    return layers.Activation(activation, dtype="float32", name=out_name)(y)


def build_unet3plus(input_shape: Sequence[int] = (320, 320, 3),
                    num_classes: int = 1,
                    filters: Sequence[int] = (64, 128, 256, 512, 1024),
                    skip_filters: int = 64,
                    variant: str = "base",
                    dropout: float = 0.5,
                    name: str | None = None,
                    cgm_gate_in_training: bool = True,
                    bn_momentum: float = BN_MOMENTUM,
                    encoder: str = "unet3plus") -> keras.Model:
    """Build a UNet 3+ model returning a dict of float32 outputs.

    Args:
      input_shape: (H, W, C); H and W must be divisible by 2**(depth-1) (16 by default).
      num_classes: 1 -> sigmoid output; > 1 -> softmax over channels (channel 0 = background).
      filters: encoder widths per stage (the paper's UNet: 64..1024); len(filters) = depth.
        Only used by ``encoder="unet3plus"``; ignored by the other encoders (fixed widths,
        depth 5; see models/encoders.py).
      skip_filters: channels of every full-scale skip conv; decoder stages have
        depth * skip_filters channels (320 by default).
      variant: "base" | "ds" (deep supervision) | "ds_cgm" (ds + classification-guided module).
      dropout: dropout rate in the CGM classifier (only used by "ds_cgm").
      name: model name (default ``unet3plus_<variant>``).
      cgm_gate_in_training: gate the segmentation with the CGM decision in training too (the
        paper's setting).  False gates only at inference/evaluation (``training=False``).
      bn_momentum: BatchNorm moving-statistics momentum (see models/blocks.py for why 0.9).
      encoder: "unet3plus" (the paper's UNet encoder, default) | "vgg16" | "vgg19" |
        "resnet50" (keras.applications topologies, trained from scratch; see
        models/encoders.py).
    """
    check_variant(variant)
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    check_encoder(encoder)
    filters = tuple(int(f) for f in filters)
    depth = encoder_depth(encoder, filters)
    _check_input_shape(input_shape, depth)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    enc = build_encoder(encoder, inputs, filters, bn_momentum=bn_momentum)
    dec = _full_scale_decoder(enc, skip_filters, bn_momentum)
    outputs = _heads(enc, dec, num_classes, variant, dropout, cgm_gate_in_training)
    default = f"unet3plus_{variant}" if encoder == "unet3plus" else f"unet3plus_{encoder}_{variant}"
    return keras.Model(inputs=inputs, outputs=outputs, name=name or default)


def _check_input_shape(input_shape: Sequence[int], depth: int) -> None:
    if depth < 2:
        raise ValueError("need at least two encoder stages")
    scale = 2 ** (depth - 1)
    for dim in input_shape[:2]:
        if dim is not None and dim % scale:
            raise ValueError(f"input height/width {tuple(input_shape[:2])} must be divisible by {scale}")


def _full_scale_decoder(enc: list, skip_filters: int, bn_momentum: float) -> dict:
    """{stage: decoder map}, stage 1 the finest. Every decoder stage fuses all scales: the finer
    encoder maps max-pooled down, the coarser decoder maps (and the bottleneck) bilinearly
    upsampled, each through a conv to `skip_filters` channels."""
    depth = len(enc)
    fused_channels = depth * skip_filters
    dec = {depth: enc[-1]}  # X_De^N = X_En^N
    for i in range(depth - 1, 0, -1):
        parts = []
        for k in range(1, depth + 1):
            if k <= i:   # finer (or same-scale) encoder map: max-pool down by 2^(i-k)
                src, factor, tag = enc[k - 1], 2 ** (i - k), f"en{k}"
            else:        # coarser decoder map (or bottleneck): bilinear upsample by 2^(k-i)
                src, factor, tag = dec[k], -(2 ** (k - i)), (f"de{k}" if k < depth else f"en{k}")
            y = resample(src, factor, name=f"dec{i}_{tag}")
            parts.append(conv_bn_relu(y, skip_filters, name=f"dec{i}_{tag}",
                                      bn_momentum=bn_momentum))
        x = layers.Concatenate(axis=-1, name=f"dec{i}_cat")(parts)
        dec[i] = conv_bn_relu(x, fused_channels, name=f"dec{i}_fuse", bn_momentum=bn_momentum)
    return dec


def _heads(enc: list, dec: dict, num_classes: int, variant: str, dropout: float,
           cgm_gate_in_training: bool) -> dict:
    """The variant's outputs: the mask, deep-supervision side masks (ds, ds_cgm), and the
    classification-guided module's organ score gating every mask (ds_cgm)."""
    depth = len(enc)
    activation = "sigmoid" if num_classes == 1 else "softmax"
    gated = variant == "ds_cgm"
    suffix = "_prob" if gated else ""
    outputs = {"mask": _seg_head(dec[1], num_classes, activation, 1, "mask" + suffix, "head1")}
    if variant in DEEP_SUPERVISED:
        for k in range(2, depth + 1):
            outputs[f"mask_ds{k}"] = _seg_head(dec[k], num_classes, activation, 2 ** (k - 1),
                                               f"mask_ds{k}" + suffix, f"head{k}")
    if gated:
        c = layers.Dropout(dropout, name="cgm_dropout")(enc[-1])
        c = layers.Conv2D(1, 1, name="cgm_conv")(c)
        c = layers.GlobalMaxPooling2D(name="cgm_pool")(c)
        organ = layers.Activation("sigmoid", dtype="float32", name="organ")(c)
        for key in list(outputs):
            outputs[key] = ClassificationGate(apply_in_training=cgm_gate_in_training,
                                              dtype="float32", name=key)([outputs[key], organ])
        outputs["organ"] = organ

    return {k: outputs[k] for k in model_output_names(variant, depth)}
