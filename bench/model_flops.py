"""Parameters and forward FLOPs per image of UNet 3+ for each variant and encoder.

    .venv/bin/python bench/model_flops.py [--sizes 128 256 320 512] [--variants base ds ds_cgm]
                                          [--encoders unet3plus vgg16 vgg19 resnet50]
                                          [--channels 3] [--classes 1]

Paper widths (filters 64..1024, skip_filters 64), one image.  FLOPs are counted analytically by
walking the built Keras model's layers (nothing is run, so it is fast on a CPU):

* "GFLOPs" = 2 x multiply-adds of every Conv2D / Dense layer: 2 * kh * kw * (Cin / groups) * Cout
  * Hout * Wout (bias adds not included).  This is the number usually quoted as "FLOPs".
* "other GFLOPs" (approximate, NOT included in "GFLOPs"): conv bias adds (1 per output element),
  BatchNorm at inference (2: folded scale + shift), ReLU (1; sigmoid/softmax 4), max-pool
  (kh*kw - 1 comparisons per output element), bilinear upsampling (6 per output element),
  residual Add (1 per input beyond the first), global max-pool (1 per input element), CGM gate
  (1 per element).  Concatenate, padding and dropout count 0.

"params (M)" is ``model.count_params()`` (incl. BatchNorm moving statistics); "trainable (M)"
only the trainable weights (the paper's 26.97 M is this one for the default model).
Cross-check: tf.compat.v1.profiler (ProfileOptionBuilder.float_operation) on the frozen traced
model at 128x128x3 gives exactly these Conv2D FLOPs, layer by layer; its total adds only bias adds
and BatchNorm mul/add (+0.06%; it does not count ReLU, pooling or resizing).
Every configuration is built (symbolically, nothing runs): ~1 s each on a 2-core CPU, ~1 min for
the default 48.
Prints a markdown table and, last, one summary line.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from models.model_config import ENCODERS, VARIANTS  # noqa: E402
from models.unet3plus import build_unet3plus  # noqa: E402

PAPER = dict(filters=(64, 128, 256, 512, 1024), skip_filters=64)


def _numel(shape) -> int:
    """Elements of one image's tensor (shape without the batch axis)."""
    return int(math.prod(int(d) for d in shape[1:]))


def layer_flops(layer) -> tuple[int, int, str | None]:
    """(main FLOPs = 2 x MACs, approximate other FLOPs, unknown-layer class name or None)."""
    kind = type(layer).__name__
    if kind == "InputLayer":
        return 0, 0, None
    out = layer.output
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    n_out = _numel(out.shape)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        # kernel (kh, kw, Cin/groups, Cout) or depthwise (kh, kw, Cin, multiplier): every kernel
        # weight is one multiply-add per output pixel.
        kernel = tuple(int(d) for d in layer.kernel.shape)
        spatial = n_out // int(out.shape[-1])
        return 2 * math.prod(kernel) * spatial, (n_out if layer.use_bias else 0), None
    if isinstance(layer, keras.layers.Dense):
        kernel = tuple(int(d) for d in layer.kernel.shape)
        rows = n_out // kernel[-1]
        return 2 * math.prod(kernel) * rows, (n_out if layer.use_bias else 0), None
    if isinstance(layer, keras.layers.BatchNormalization):
        return 0, 2 * n_out, None
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", "")
        return 0, (1 if name == "relu" else 4) * n_out, None
    if isinstance(layer, keras.layers.ReLU):
        return 0, n_out, None
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        ph, pw = layer.pool_size
        return 0, (ph * pw - 1) * n_out, None
    if isinstance(layer, keras.layers.UpSampling2D):
        return 0, (6 if layer.interpolation == "bilinear" else 0) * n_out, None
    if isinstance(layer, keras.layers.Add):
        return 0, (len(layer.input) - 1) * n_out, None
    if isinstance(layer, (keras.layers.GlobalMaxPooling2D, keras.layers.GlobalAveragePooling2D)):
        return 0, _numel(layer.input.shape), None
    if kind == "ClassificationGate":
        return 0, n_out, None
    if isinstance(layer, (keras.layers.Concatenate, keras.layers.ZeroPadding2D,
                          keras.layers.Dropout)):
        return 0, 0, None
    return 0, 0, kind


def count(model) -> dict:
    main = other = 0
    unknown = set()
    for layer in model.layers:
        m, o, u = layer_flops(layer)
        main += m
        other += o
        if u:
            unknown.add(u)
    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
    return {"params": model.count_params(), "trainable": trainable, "flops": main,
            "other": other, "unknown": sorted(unknown)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 320, 512])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=1)
    args = p.parse_args(argv)

    start = time.time()
    rows, unknown = [], set()
    for enc in args.encoders:
        for variant in args.variants:
            for size in args.sizes:
                keras.backend.clear_session()
                model = build_unet3plus((size, size, args.channels), num_classes=args.classes,
                                        variant=variant, encoder=enc, **PAPER)
                r = count(model)
                unknown.update(r["unknown"])
                rows.append((enc, variant, size, r))
    elapsed = time.time() - start

    print(f"UNet 3+ forward cost per image: {args.channels} input channel(s), {args.classes} "
          f"class(es), paper widths (filters 64..1024, skip 64).")
    print("GFLOPs = 2 x multiply-adds of Conv2D/Dense layers; 'other' = approximate BN, "
          "activation, pooling, upsampling, bias and add FLOPs (not included in GFLOPs).\n")
    print("| encoder | variant | input | params (M) | trainable (M) | GFLOPs "
          "| other GFLOPs (approx) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for enc, variant, size, r in rows:
        print(f"| {enc} | {variant} | {size}x{size} | {r['params'] / 1e6:.3f} | "
              f"{r['trainable'] / 1e6:.3f} | {r['flops'] / 1e9:.2f} | {r['other'] / 1e9:.2f} |")
    if unknown:
        print(f"\n(layers counted as 0 FLOPs, unknown type: {', '.join(sorted(unknown))})")

    ref = next((r for r in rows if r[0] == "unet3plus" and r[1] == "base" and r[2] == 320), None)
    ref = ref or rows[0]
    enc, variant, size, r = ref
    print(f"\nSUMMARY: {len(rows)} configurations in {elapsed:.1f} s; {enc}/{variant} at "
          f"{size}x{size}x{args.channels}: {r['trainable'] / 1e6:.2f} M trainable params, "
          f"{r['flops'] / 1e9:.1f} GFLOPs/image (2 x MACs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
