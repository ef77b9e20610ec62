"""UNet 3+ training-step throughput with the repo's Keras 3 model code on the JAX backend.

Meant for a GPU machine that has JAX but no TensorFlow (and no network); bench/gpu_keras_jax.sh
installs Keras from bench/wheels/ and starts this script with KERAS_BACKEND=jax.  Run from the
repository root (it imports models/):

    KERAS_BACKEND=jax python bench/gpu_keras_jax.py [--size 320] [--batch 16] [--steps 30]
        [--warmup 3] [--precision mixed_bfloat16|float32|mixed_float16]
        [--variant base|ds|ds_cgm] [--widths paper|demo] [--metrics none|dice]
        [--loop fit|train_on_batch]

Default: the paper's model (filters 64..1024, skip 64, 26.97 M parameters), base variant,
hybrid loss (focal + MS-SSIM + IoU), Adam 1e-3, jit_compile=True, mixed_bfloat16 policy,
batch 16 of 320x320x3 (deep-supervision variants: hybrid loss on every mask output, BCE on
"organ", all weights 1, as trainer/run.py).  One random batch (x float32 in [0, 1), its
thresholded first channel as mask) is put on the device once and every step trains on it, so
the figure is the model's speed alone.  --loop fit (default) times ``model.fit`` over that
batch, as the trainer runs; --loop train_on_batch calls ``model.train_on_batch`` per step
(adds per-step times, and Keras' per-call state sync).  The warm-up steps (trace + XLA
compile) are not timed.

Prints the JAX device, the warm-up (compile) time, the timed steps and, LAST, a line

    RESULT images/s=<float> device=<device_kind> batch=16 size=320 precision=mixed_bfloat16

If $OUT is set, the same figures go to $OUT/result.json.  TensorFlow is never imported: any
attempt is turned into an ImportError (--allow-tf lifts that), and the script fails if
``tensorflow`` ends up in sys.modules.
"""
from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from models.model_config import VARIANTS  # noqa: E402  (a plain module: no Keras, no TF)

WIDTHS = {"paper": ((64, 128, 256, 512, 1024), 64), "demo": ((16, 32, 64, 128, 256), 16)}
REFERENCE = ("reference: original Keras UNet 3+ implementation 26 images/s on one A100 (fp32); "
             "~53 images/s per A100 with DALI + AMP + XLA; target 150 images/s on one H100")


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """Makes ``import tensorflow`` / ``import tf_keras`` fail with ModuleNotFoundError."""

    BLOCKED = ("tensorflow", "tf_keras")

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"{fullname} is blocked by bench/gpu_keras_jax.py "
                                      "(JAX-only run)")
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps, the first compiles")
    p.add_argument("--precision", default="mixed_bfloat16",
                   choices=("mixed_bfloat16", "float32", "mixed_float16"))
    p.add_argument("--variant", default="base", choices=VARIANTS)
    p.add_argument("--widths", default="paper", choices=tuple(WIDTHS))
    p.add_argument("--metrics", default="none", choices=("none", "dice"),
                   help="dice: also update the trainer's Dice metric every step")
    p.add_argument("--loop", default="fit", choices=("fit", "train_on_batch"),
                   help="fit: model.fit over the on-device batch (default); train_on_batch: "
                        "one call per step, adds per-step times")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-tf", action="store_true", help="do not block TensorFlow imports")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be >= 1")
    return args


def build(args):
    import keras

    from models.losses import get_loss
    from models.metrics import DiceCoefficient
    from models.unet3plus import build_unet3plus, model_output_names

    keras.mixed_precision.set_dtype_policy(args.precision)
    keras.utils.set_random_seed(args.seed)
    filters, skip = WIDTHS[args.widths]
    model = build_unet3plus(input_shape=(args.size, args.size, args.channels), num_classes=1,
                            filters=filters, skip_filters=skip, variant=args.variant)
    # Same losses and weights as trainer/run.py build_and_compile (hybrid loss, weights 1).
    losses, weights = {}, {}
    for name in model_output_names(args.variant):
        losses[name] = get_loss("bce") if name == "organ" else get_loss("hybrid")
        weights[name] = 1.0
    metrics = {"mask": [DiceCoefficient(name="dice")]} if args.metrics == "dice" else None
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=args.lr), loss=losses,
                  loss_weights=weights, metrics=metrics, jit_compile=True)
    return model, model_output_names(args.variant)


def make_batch(args, names):
    import jax
    import numpy as np

    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, args.size, args.size, args.channels), dtype=np.float32)
    mask = (x[..., :1] > 0.5).astype(np.float32)
    y = {n: (mask.max(axis=(1, 2)) if n == "organ" else mask) for n in names}
    dev = jax.devices()[0]
    x, y = jax.device_put(x, dev), jax.device_put(y, dev)
    jax.block_until_ready((x, y))
    return x, y


def commit_state(model, x, y, device) -> int:
    """Build the optimizer / loss trackers now and place every state variable on ``device``.

    Freshly created JAX arrays are *uncommitted*; after the first step Keras gets committed
    ones back, and jax.jit compiles the train step a second time for that new argument
    placement (measured on CPU: two full XLA compiles of train_step).  Committing the state
    up front makes the first step's compile the only one.  Uses Keras' private
    ``_symbolic_build`` (what train_on_batch calls first); skipped if it is missing.
    """
    import jax

    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return 0
    build(data_batch=(x, y, None))
    variables = (list(model.trainable_variables) + list(model.non_trainable_variables)
                 + list(model.optimizer.variables) + list(model.metrics_variables))
    for v in variables:
        v.assign(jax.device_put(v.value, device))
    return len(variables)


def time_fit(model, x, y, args):
    """``model.fit`` on a generator that yields the on-device batch (the trainer's path: state
    stays in the jitted loop, synced once per fit call).  Returns warm-up s, timed s, None, loss.

    fit resets the metric (loss tracker) variables to fresh, uncommitted arrays at every epoch
    start, which would give the second step another argument placement than the first and a
    second XLA compile of the train step; the callback commits them again before the first
    step reads the state (fit calls reset_metrics, then on_epoch_begin, then reads it).
    """
    import jax
    import keras

    device = jax.devices()[0]

    class CommitMetricState(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            for v in self.model.metrics_variables:
                v.assign(jax.device_put(v.value, device))

    def batches():
        while True:
            yield x, y

    callbacks = [CommitMetricState()]
    t0 = time.perf_counter()
    model.fit(batches(), steps_per_epoch=1, epochs=1, verbose=0, callbacks=callbacks)
    first_s = time.perf_counter() - t0
    if args.warmup > 1:
        model.fit(batches(), steps_per_epoch=args.warmup - 1, epochs=1, verbose=0,
                  callbacks=callbacks)
    warmup_s = time.perf_counter() - t0
    print(f"warm-up: {args.warmup} steps in {warmup_s:.1f} s, the first (trace + XLA compile) "
          f"{first_s:.1f} s", flush=True)
    start = time.perf_counter()
    history = model.fit(batches(), steps_per_epoch=args.steps, epochs=1, verbose=0,
                        callbacks=callbacks)
    jax.block_until_ready([v.value for v in model.trainable_variables])
    return warmup_s, time.perf_counter() - start, None, float(history.history["loss"][-1])


def time_train_on_batch(model, x, y, args):
    """One ``model.train_on_batch`` per step (same jitted train step; each call syncs the state
    and returns host values, so per-step times are exact but include that overhead).  Returns
    warm-up s, timed s, per-step s, loss."""
    import jax

    t0 = time.perf_counter()
    logs = model.train_on_batch(x, y, return_dict=True)   # trace + XLA compile + one step
    first_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        logs = model.train_on_batch(x, y, return_dict=True)
    warmup_s = time.perf_counter() - t0
    print(f"warm-up: {args.warmup} steps in {warmup_s:.1f} s, the first (trace + XLA compile) "
          f"{first_s:.1f} s", flush=True)
    times = []
    start = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        times.append(time.perf_counter() - t)
    jax.block_until_ready([v.value for v in model.trainable_variables])
    return warmup_s, time.perf_counter() - start, times, float(logs["loss"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.allow_tf:
        sys.meta_path.insert(0, _NoTensorFlow())
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        print(f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}: this benchmark is for jax",
              file=sys.stderr)
        return 2
    os.environ["KERAS_BACKEND"] = "jax"

    import jax
    import keras
    import numpy as np

    if keras.backend.backend() != "jax":
        print(f"keras backend is {keras.backend.backend()}, expected jax", file=sys.stderr)
        return 2
    devices = jax.devices()
    device_kind = devices[0].device_kind
    print(f"python {platform.python_version()}, jax {jax.__version__}, keras {keras.__version__}, "
          f"numpy {np.__version__}", flush=True)
    print(f"JAX devices: {len(devices)} x {device_kind} ({devices[0].platform}); "
          f"using {devices[0]}", flush=True)

    t0 = time.perf_counter()
    model, names = build(args)
    x, y = make_batch(args, names)
    filters, skip = WIDTHS[args.widths]
    print(f"UNet 3+ {args.variant}, filters {filters}, skip {skip}: "
          f"{model.count_params():,} parameters, policy {keras.config.dtype_policy().name}, "
          f"hybrid loss, Adam, jit_compile=True; built in {time.perf_counter() - t0:.1f} s",
          flush=True)

    commit_state(model, x, y, devices[0])
    if args.loop == "fit":
        warmup_s, elapsed, times, loss = time_fit(model, x, y, args)
    else:
        warmup_s, elapsed, times, loss = time_train_on_batch(model, x, y, args)
    if not np.isfinite(loss):
        print(f"non-finite loss {loss}", file=sys.stderr)
        return 1
    if "tensorflow" in sys.modules:
        print("tensorflow was imported", file=sys.stderr)
        return 1

    images_per_s = args.steps * args.batch / elapsed
    line = (f"timed ({args.loop}): {args.steps} steps in {elapsed:.2f} s, "
            f"{elapsed / args.steps * 1e3:.1f} ms/step")
    if times:
        median = statistics.median(times)
        line += (f"; step median {median * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms, "
                 f"max {max(times) * 1e3:.1f} ms")
    print(f"{line}; loss {loss:.4f}")
    stats = getattr(devices[0], "memory_stats", lambda: None)() or {}
    peak = stats.get("peak_bytes_in_use")
    if peak:
        print(f"device memory: peak {peak / 2**30:.1f} GiB in use"
              + (f" of {stats['bytes_limit'] / 2**30:.1f} GiB" if "bytes_limit" in stats else ""))
    print("tensorflow imported: no")
    print(REFERENCE)
    result = {"images_per_s": images_per_s, "loop": args.loop,
              "device": device_kind, "platform": devices[0].platform, "n_devices": len(devices),
              "batch": args.batch, "size": args.size, "precision": args.precision,
              "variant": args.variant, "widths": args.widths, "metrics": args.metrics,
              "params": int(model.count_params()), "steps": args.steps, "warmup": args.warmup,
              "warmup_s": warmup_s, "elapsed_s": elapsed, "peak_device_bytes": peak,
              "step_ms": [round(t * 1e3, 3) for t in times] if times else None,
              "final_loss": loss, "jax": jax.__version__, "keras": keras.__version__,
              "python": platform.python_version(), "reference": REFERENCE}
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
    print(f"RESULT images/s={images_per_s:.2f} device={device_kind.replace(' ', '_')} "
          f"batch={args.batch} size={args.size} precision={args.precision}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
