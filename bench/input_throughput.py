"""Throughput of the Trainer's input pipeline alone (images/s), DALI and tf.data, with the
default augmentation and without, on Transform's output of the synthetic CT set.

    .venv/bin/python bench/input_throughput.py --examples .../Transform/transformed_examples/<id> \\
        --transform_graph .../Transform/transform_graph/<id> [--batch 8 --steps 100] \\
        [--model_images_per_s 9]

Without --examples the demo pipeline (128x128x3 slices) runs first, with 2 training steps,
into --output_dir (default: a temp dir), and its Transform output is used. Each setting runs in
its own process. With --model_images_per_s (what the model consumes, e.g. from
bench/train_throughput.py or the Trainer log) it prints each input's ratio to it; the inputs
should be >= 10x.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args) -> dict:
    """Runs in a child process: one input, augmentation on or off."""
    sys.path.insert(0, REPO)
    import tensorflow_transform as tft

    from trainer import inputs

    spec = tft.TFTransformOutput(args.transform_graph).transformed_feature_spec()
    files = [os.path.join(args.examples, "Split-train", "*")]
    augment = dict(json.loads(args.augment_config or "{}"), enabled=args.augment == "on")
    if args.input == "dali":
        ds = inputs.make_dali_input(files, spec, ["mask"], args.batch, shuffle=True,
                                    cache_dir=args.cache_dir, augment=augment)
    else:
        ds = inputs.make_dataset(files, spec, ["mask"], args.batch, shuffle=True,
                                 augment=augment)
    it = iter(ds)
    for _ in range(args.warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(args.steps):
        images, targets = next(it)
    images.numpy(), targets["mask"].numpy()
    elapsed = time.perf_counter() - start
    return {"images_per_s": args.steps * args.batch / elapsed,
            "shape": list(images.shape)}


def build_examples(output_dir: str):
    """Runs the demo pipeline (2 training steps) and returns its Transform output dirs."""
    sys.path.insert(0, REPO)
    import local_runner

    code = local_runner.main(["--profile", "demo", "--output_dir", output_dir,
                              "--train_steps", "2"])
    if code != 0:
        raise SystemExit(f"demo pipeline failed ({code})")

    def latest(output):
        paths = glob.glob(os.path.join(output_dir, "pipeline", "Transform", output, "*"))
        return max(paths, key=lambda p: int(os.path.basename(p)))
    return latest("transformed_examples"), latest("transform_graph")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", help="Transform's transformed_examples/<id> (with Split-train/)")
    p.add_argument("--transform_graph", help="Transform's transform_graph/<id>")
    p.add_argument("--output_dir", help="where to run the demo pipeline without --examples")
    p.add_argument("--cache_dir", help="DALI's shard cache (default: <tmp>/unet3plus_dali_cache)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--inputs", default="dali,tfdata")
    p.add_argument("--augment_settings", default="on,off")
    p.add_argument("--augment_config", help='AugmentConfig overrides as JSON, e.g. '
                   '\'{"elastic_alpha": 0}\' (default: the defaults)')
    p.add_argument("--model_images_per_s", type=float,
                   help="what the model consumes; prints each input's ratio to it")
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--augment", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args)))
        return 0
    if not args.examples:
        args.examples, args.transform_graph = build_examples(
            args.output_dir or tempfile.mkdtemp(prefix="input_bench_"))
    if not args.transform_graph:
        p.error("--transform_graph is needed with --examples")
    # trainer.inputs.TEMP_CACHE_DIR (not imported: the parent stays free of TensorFlow).
    args.cache_dir = args.cache_dir or os.path.join(tempfile.gettempdir(), "unet3plus_dali_cache")
    print(f"Transform output {args.examples}; batch {args.batch}, {args.steps} steps after "
          f"{args.warmup} warm-up steps")
    for name in args.inputs.split(","):
        for augment in args.augment_settings.split(","):
            cmd = [sys.executable, __file__, "--child", f"--input={name}",
                   f"--augment={augment}", f"--examples={args.examples}",
                   f"--transform_graph={args.transform_graph}", f"--cache_dir={args.cache_dir}",
                   f"--batch={args.batch}", f"--steps={args.steps}", f"--warmup={args.warmup}",
                   f"--augment_config={args.augment_config or '{}'}"]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                print(out.stderr[-3000:])
                return 1
            r = json.loads(lines[-1][len("RESULT "):])
            ratio = (f"  {r['images_per_s'] / args.model_images_per_s:6.1f}x the model's "
                     f"{args.model_images_per_s:g} images/s" if args.model_images_per_s else "")
            print(f"{name:7s} augmentation {augment:3s} {'x'.join(map(str, r['shape'][1:]))} "
                  f"{r['images_per_s']:8.1f} images/s{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
