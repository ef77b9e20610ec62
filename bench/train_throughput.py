"""Training throughput of UNet 3+ (images/s of full train steps: forward, hybrid loss, backward,
optimizer), for a precision / XLA setting, compared in the same run with fp32 without XLA.

    .venv/bin/python bench/train_throughput.py --size 128 --batch 4 --steps 10 \\
        --variant base --precision auto --xla auto [--widths paper|demo] [--input synthetic]

--input synthetic feeds one random batch held in memory (model speed alone); --input tfdata
or dali reads Transform output (--examples DIR with Split-train/) through trainer/inputs.py
(--augment on: with the default training augmentation). Prints,
last, the images/s of the chosen setting and of the fp32 baseline, and their ratio. Each
setting runs in its own process (precision policies are global).

Against the limit: each setting also reports the GFLOP/s its training steps reach (3x the
forward FLOPs of bench/model_flops.py per image: forward, and a backward pass of twice that)
and their fraction of this machine's matmul rate in the same dtype, measured in the same
process (a 2048x2048 matmul: the most a dense kernel gets out of these cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# The choice lists only: plain modules (no Keras or TensorFlow in this parent process).
from models.model_config import VARIANTS  # noqa: E402
from pipeline.settings_checks import SettingsError  # noqa: E402
from pipeline.settings_flags import add_settings_flags  # noqa: E402
from trainer.train_config import INPUTS  # noqa: E402

WIDTHS = {"paper": ((64, 128, 256, 512, 1024), 64), "demo": ((16, 32, 64, 128, 256), 16),
          "narrow": ((8, 16, 32, 64, 128), 8)}


def measure(args) -> dict:
    """Runs in a child process: one setting."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer.device import resolve_device_settings
    from trainer.run import build_and_compile

    model_cfg = model_settings(args)
    device = resolve_device_settings(args.precision, args.xla, filters=model_cfg.filters,
                                     skip_filters=model_cfg.skip_filters)
    device.apply()
    train_cfg = {"learning_rate": 1e-3, "optimizer": "adam", "lr_schedule": "constant",
                 "warmup_steps": 0, "weight_decay": 0.0}
    num_classes = 1
    if args.input != "synthetic":   # as many output channels as the Transform's mask has
        import tensorflow_transform as tft

        from trainer.run import num_classes_from_spec
        spec = tft.TFTransformOutput(args.transform_graph).transformed_feature_spec()
        num_classes = num_classes_from_spec(spec)
    model = build_and_compile(model_cfg, train_cfg, (args.size, args.size, args.channels),
                              device.jit_compile, args.steps + args.warmup, num_classes)
    names = list(model.output_shape.keys()) if isinstance(model.output_shape, dict) else ["mask"]
    if args.input == "synthetic":
        rng = np.random.default_rng(0)
        x = rng.random((args.batch, args.size, args.size, args.channels), np.float32)
        mask = (x[..., :1] > 0.5).astype(np.float32)
        y = {n: (mask.max(axis=(1, 2)) if n == "organ" else mask) for n in names}
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
    else:
        from trainer.inputs import TEMP_CACHE_DIR, make_dali_input, make_dataset
        files = [os.path.join(args.examples, "Split-train", "*")]
        augment = {"enabled": args.augment == "on"}
        if args.input == "dali":
            data = make_dali_input(files, spec, names, args.batch, shuffle=True, augment=augment,
                                   cache_dir=TEMP_CACHE_DIR)
        else:
            data = make_dataset(files, spec, names, args.batch, shuffle=True, augment=augment)
    model.fit(data, steps_per_epoch=args.warmup, epochs=1, verbose=0)   # trace + warm up
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
    elapsed = time.perf_counter() - start
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import model_flops
    train_flops = 3 * model_flops.count(model)["flops"]   # per image
    images_per_s = args.steps * args.batch / elapsed
    return {"policy": device.policy, "xla": device.jit_compile, "reason": device.reason,
            "images_per_s": images_per_s, "gflops_per_s": images_per_s * train_flops / 1e9,
            "train_gflops_per_image": train_flops / 1e9,
            "matmul_gflops_per_s": matmul_rate(device.policy) / 1e9}


def model_settings(args):
    """The ModelConfig measured: the paper profile's, the --config files and --set overrides
    (any model.* key, e.g. --set model.encoder=vgg19), then this bench's own --widths, --variant
    and --loss; checked like a pipeline run's settings."""
    from pipeline.configs import make_config
    filters, skip = WIDTHS[args.widths]
    fixed = [("model.filters", filters), ("model.skip_filters", skip),
             ("model.variant", args.variant), ("model.loss", args.loss),
             ("example_gen.slices.size", (args.size, args.size))]
    return make_config("paper", config_files=args.config,
                       overrides=[*args.overrides, *fixed]).model


def matmul_rate(policy: str, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul in the policy's compute dtype: best of `repeats`."""
    import tensorflow as tf
    dtype = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}.get(policy, tf.float32)
    a = tf.cast(tf.random.stateless_uniform((n, n), (1, 2)), dtype)
    b = tf.cast(tf.random.stateless_uniform((n, n), (3, 4)), dtype)
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variant", default="base", choices=VARIANTS)
    p.add_argument("--loss", default="hybrid", help="models/losses.py name: hybrid, bce_dice...")
    p.add_argument("--widths", default="paper", choices=tuple(WIDTHS))
    p.add_argument("--precision", default="auto")
    p.add_argument("--xla", default="auto")
    p.add_argument("--input", default="synthetic",
                   choices=("synthetic",) + tuple(i for i in INPUTS if i != "auto"))
    p.add_argument("--augment", default="off", choices=("on", "off"),
                   help="training augmentation (tfdata, dali)")
    p.add_argument("--examples", help="Transform's transformed_examples/<id> dir (tfdata, dali)")
    p.add_argument("--transform_graph", help="Transform's transform_graph/<id> dir (tfdata, dali)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_settings_flags(p, shortcuts=(), from_env=False, print_config=False)
    args = p.parse_args()
    try:
        model_settings(args)   # a setting that cannot work fails here, before any child starts
    except SettingsError as e:
        print(f"train_throughput.py: error: {e}", file=sys.stderr)
        return 2
    if args.child:
        print("RESULT " + json.dumps(measure(args)))
        return 0
    results = {}
    for label, precision, xla in (("chosen", args.precision, args.xla),
                                  ("fp32 baseline", "fp32", "off")):
        # The same flags, this setting's precision and XLA last (argparse keeps the last).
        cmd = [sys.executable, __file__, *sys.argv[1:], "--precision", precision, "--xla", xla,
               "--child"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(out.stderr[-3000:])
            return 1
        results[label] = json.loads(lines[-1][len("RESULT "):])
        r = results[label]
        print(f"{label:14s} policy {r['policy']:15s} XLA {str(r['xla']):5s} "
              f"{r['images_per_s']:.2f} images/s, {r['gflops_per_s']:.1f} GFLOP/s = "
              f"{r['gflops_per_s'] / r['matmul_gflops_per_s']:.0%} of the "
              f"{r['matmul_gflops_per_s']:.0f} GFLOP/s matmul rate in that dtype "
              f"({r['train_gflops_per_image']:.1f} GFLOP per training image)")
        if label == "chosen":
            print(f"{'':14s} why: {r['reason']}")
    chosen, base = results["chosen"], results["fp32 baseline"]
    print(f"UNet 3+ {args.variant} {args.widths} widths {args.size}x{args.size} batch "
          f"{args.batch}: {chosen['images_per_s']:.2f} images/s ({chosen['policy']}, XLA "
          f"{chosen['xla']}) vs fp32 {base['images_per_s']:.2f} images/s: "
          f"{chosen['images_per_s'] / base['images_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
