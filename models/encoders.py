"""Encoders (backbones) for UNet 3+, Keras 3, backend-neutral.

Every builder takes the model's input tensor and returns FIVE feature maps
``[X_En^1, ..., X_En^5]`` at scales 1, 1/2, 1/4, 1/8 and 1/16 of the input, so the full-scale
decoder in :mod:`models.unet3plus` is the same whatever the encoder.  The decoder's skip convs
take any channel count, so they adapt to each encoder's widths.

=============  =========================================================  ======================
encoder        maps taken (scale 1 .. 1/16)                               channels
=============  =========================================================  ======================
``unet3plus``  the paper's UNet backbone: 5 stages of 2 x (conv3x3, BN,   ``filters``
               ReLU), 2x2 max-pool between stages                         (64..1024 by default)
``vgg16``      block1_conv2, block2_conv2, block3_conv3, block4_conv3,    64, 128, 256, 512, 512
               block5_conv3
``vgg19``      block1_conv2, block2_conv2, block3_conv4, block4_conv4,    64, 128, 256, 512, 512
               block5_conv4
``resnet50``   stem (see below), conv1_relu, conv2_block3_out,            64, 64, 256, 512, 1024
               conv3_block4_out, conv4_block6_out
=============  =========================================================  ======================

* ``vgg16`` / ``vgg19`` / ``resnet50`` are ``keras.applications`` topologies built with
  ``weights=None`` (trained from scratch, nothing is downloaded) on the model's own input
  tensor, so their layers become ordinary layers of the UNet 3+ model (not a nested model) and
  any number of input channels works (e.g. 2.5D stacks of k slices).  For these encoders
  ``filters`` is ignored (their widths are fixed, as in the table) and the depth is always 5.
* The VGG topologies have no BatchNorm (as in keras.applications; the decoder still has BN).
  VGG's block5_pool (1/32) is not used.
* ResNet50: its first map (conv1, 7x7 stride 2) is already at 1/2, so the scale-1 map comes from
  an extra stem on the input: one paper encoder stage, 2 x (conv3x3 -> 64, BN, ReLU), layers
  ``enc1_1_*`` / ``enc1_2_*`` (38,976 trainable parameters for 3 input channels).  ResNet's
  conv5 stage (1/32, 2048 channels, ~15 M parameters) is not part of the model (it would be
  below the decoder's coarsest scale).  All ResNet BatchNorm layers get ``bn_momentum`` (0.9,
  see models/blocks.py) instead of Keras' default 0.99.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import keras
from keras import layers

from models.blocks import BN_MOMENTUM, encoder_block
from models.model_config import check_encoder

# keras.applications layer names of the feature maps at scales 1 .. 1/16 (None: built here).
_APP_FEATURES = {
    "vgg16": ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"),
    "vgg19": ("block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4"),
    "resnet50": (None, "conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
}
_APP_BUILDERS = {
    "vgg16": lambda: keras.applications.VGG16,
    "vgg19": lambda: keras.applications.VGG19,
    "resnet50": lambda: keras.applications.ResNet50,
}
RESNET_STEM_FILTERS = 64


def unet3plus_encoder(inputs, filters: Sequence[int] = (64, 128, 256, 512, 1024),
                      bn_momentum: float = BN_MOMENTUM) -> list:
    """The paper's plain UNet encoder: len(filters) stages, maps at scales 1 .. 1/2^(depth-1)."""
    enc, x = [], inputs
    for i, f in enumerate(filters, start=1):
        if i > 1:
            x = layers.MaxPooling2D(pool_size=2, strides=2, name=f"enc{i}_pool")(x)
        x = encoder_block(x, int(f), name=f"enc{i}", bn_momentum=bn_momentum)
        enc.append(x)
    return enc


def application_encoder(name: str, inputs, bn_momentum: float = BN_MOMENTUM) -> list:
    """A keras.applications backbone (weights=None) on ``inputs``; 5 maps at scales 1 .. 1/16."""
    if name not in _APP_FEATURES:
        raise ValueError(f"no keras.applications encoder {name!r}")
    shape = tuple(inputs.shape[1:])
    with warnings.catch_warnings():  # "usually expects 1 or 3 input channels": fine from scratch
        warnings.simplefilter("ignore", UserWarning)
        backbone = _APP_BUILDERS[name]()(include_top=False, weights=None, input_tensor=inputs,
                                         input_shape=shape)
    if name == "resnet50":
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    feats = []
    for layer_name in _APP_FEATURES[name]:
        if layer_name is None:  # ResNet50 scale-1 stem
            feats.append(encoder_block(inputs, RESNET_STEM_FILTERS, name="enc1",
                                       bn_momentum=bn_momentum))
        else:
            feats.append(backbone.get_layer(layer_name).output)
    return feats


def build_encoder(encoder: str, inputs, filters: Sequence[int] = (64, 128, 256, 512, 1024),
                  bn_momentum: float = BN_MOMENTUM) -> list:
    """Feature maps [X_En^1, ..., X_En^depth] of ``encoder`` on ``inputs`` (scale 1, 1/2, ...).

    ``filters`` is only used by ``unet3plus``.  Checks that map i is at scale 1/2^(i-1) whenever
    the input's height/width are known.
    """
    check_encoder(encoder)
    if encoder == "unet3plus":
        feats = unet3plus_encoder(inputs, filters, bn_momentum=bn_momentum)
    else:
        feats = application_encoder(encoder, inputs, bn_momentum=bn_momentum)
    h, w = inputs.shape[1], inputs.shape[2]
    for i, f in enumerate(feats):
        want = tuple(None if d is None else d // 2 ** i for d in (h, w))
        got = tuple(f.shape[1:3])
        if any(a is not None and b is not None and a != b for a, b in zip(want, got)):
            raise ValueError(f"{encoder}: feature map {i + 1} has spatial shape {got}, "
                             f"expected {want}")
    return feats
