"""Where a UNet 3+ training step spends its time: timed sub-graphs of one step, each compiled as
its own tf.function and timed on the same in-memory batch, in fp32 and in bf16 (mixed_bfloat16)
in separate processes (the precision policy is global).

    .venv/bin/python bench/train_step_profile.py [--widths paper|demo|narrow] [--size 128]
        [--batch 4] [--steps 5] [--variant base] [--precision float32 mixed_bfloat16]

Parts (ms per step, and their share of the full step):
  forward            model(x, training=True)
  loss terms         each term of the hybrid loss alone, on the forward's output: focal, IoU,
                     MS-SSIM (5 scales, as trained) and single-scale SSIM (for comparison)
  forward + loss     the hybrid loss of the forward
  + backward         the gradients of that loss (backward = this - forward + loss)
  optimizer          Adam's update alone, with fixed gradients
  full step          Keras' own compiled train step (model.train_on_batch)
and the forward's FLOP share: a step is ~3x the forward FLOPs (bench/model_flops.py), so a
backward over its 2/3 of the FLOPs is slower than the convolutions' rate. Host facts first.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WIDTHS = {"paper": ((64, 128, 256, 512, 1024), 64), "demo": ((16, 32, 64, 128, 256), 16),
          "narrow": ((8, 16, 32, 64, 128), 8)}


def _timed(fn, steps: int) -> float:
    """Median seconds of fn() over `steps` calls after two warm-up calls."""
    import numpy as np
    for _ in range(2):
        _block(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _block(out):
    import tensorflow as tf
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()


def measure(args) -> dict:
    """In a child process: every part at one precision."""
    import keras
    import numpy as np
    import tensorflow as tf

    from models import losses as L
    from trainer.run import build_and_compile

    keras.mixed_precision.set_global_policy(args.child)
    filters, skip = WIDTHS[args.widths]
    model = build_and_compile({"filters": list(filters), "skip_filters": skip,
                               "variant": args.variant},
                              {"learning_rate": 1e-3, "optimizer": "adam",
                               "lr_schedule": "constant", "warmup_steps": 0,
                               "weight_decay": 0.0},
                              (args.size, args.size, 3), jit_compile=False, total_steps=1000)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((args.batch, args.size, args.size, 3), dtype=np.float32))
    y = tf.constant((rng.random((args.batch, args.size, args.size, 1)) > 0.7).astype("float32"))
    targets = {name: y for name in model.output_names}
    hybrid = L.get_loss("hybrid")

    def main_output(out):
        return out[0] if isinstance(out, (list, tuple)) else (
            out["mask"] if isinstance(out, dict) else out)

    @tf.function
    def forward():
        return model(x, training=True)

    pred = tf.cast(main_output(forward()), tf.float32)

    @tf.function
    def forward_loss():
        return hybrid(y, main_output(model(x, training=True)))

    @tf.function
    def forward_loss_grad():
        with tf.GradientTape() as tape:
            loss = hybrid(y, main_output(model(x, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    grads = [tf.zeros_like(v) for v in model.trainable_variables]

    @tf.function
    def optimizer_step():
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return tf.constant(0)

    terms = {"focal": lambda: L.focal_loss(y, pred), "iou": lambda: L.iou_loss(y, pred),
             "ms_ssim (5 scales)": lambda: L.ms_ssim_loss(y, pred),
             "ssim (1 scale)": lambda: 1.0 - tf.image.ssim(y, pred, 1.0)}
    parts = {"forward": _timed(forward, args.steps)}
    for name, fn in terms.items():
        parts[f"loss: {name}"] = _timed(tf.function(fn), args.steps)
    parts["forward + loss"] = _timed(forward_loss, args.steps)
    parts["forward + loss + backward"] = _timed(forward_loss_grad, args.steps)
    parts["optimizer (Adam)"] = _timed(optimizer_step, args.steps)
    parts["full step (train_on_batch)"] = _timed(
        lambda: model.train_on_batch(x, targets, return_dict=True), args.steps)
    return {"policy": args.child, "parts_s": parts, "batch": args.batch}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", choices=sorted(WIDTHS), default="paper")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--variant", default="base")
    p.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0
    from inference_throughput import host_facts
    print(host_facts(), flush=True)
    results = []
    for policy in args.precision:
        forwarded = list(sys.argv[1:] if argv is None else argv)
        out = subprocess.run([sys.executable, __file__, *forwarded, "--child", policy],
                             capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            print(out.stderr[-3000:])
            return 1
        results.append(json.loads(lines[-1][7:]))
    print(f"\nUNet 3+ {args.variant}, {args.widths} widths, {args.size}x{args.size}, "
          f"batch {args.batch}: ms per step (share of the full step)")
    names = list(results[0]["parts_s"])
    print(f"{'part':32}" + "".join(f"{r['policy']:>24}" for r in results))
    for name in names:
        cells = []
        for r in results:
            s, full = r["parts_s"][name], r["parts_s"]["full step (train_on_batch)"]
            cells.append(f"{s * 1e3:12.1f} ({s / full:5.1%})")
        print(f"{name:32}" + "".join(f"{c:>24}" for c in cells))
    for r in results:
        parts = r["parts_s"]
        backward = parts["forward + loss + backward"] - parts["forward + loss"]
        print(f"{r['policy']}: backward {backward * 1e3:.1f} ms = "
              f"{backward / parts['forward']:.2f}x the forward (its FLOPs: ~2x); full step "
              f"{args.batch / parts['full step (train_on_batch)']:.3f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
