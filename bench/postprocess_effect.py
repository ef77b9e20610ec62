"""What 3-D post-processing and test-time mirroring do to a trained model's full-volume figures,
and what they cost: the volume evaluation (evaluation/volume_eval.py, which scores every case
on the model's own labels and post-processed) once with --mirror none and once with flips.

    .venv/bin/python bench/postprocess_effect.py --model SERVING_DIR --data_root DIR \\
        [--split eval|all] [--eval_fraction F --split_seed N] [--label NAME] [--output DIR]

Give the run's eval_fraction and split_seed for its eval split (`make run`: the defaults).
Printed: the host line, then per mirror mode the seconds per volume and, per class, the mean
and global Dice on the raw and the post-processed labels, and for a tumour model the pooled
lesion recall; then the gains: post-processing (mean per-case Dice, post minus raw) and
mirroring (flips minus none, on the post-processed labels) with its time ratio. A setting is
worth its default where its mean per-case Dice gain is positive on the evaluation data
(inference/inference_config.py says which is on).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.postprocess_speed import host_line  # noqa: E402


def evaluate(args, mirror: str, out: str) -> dict:
    from evaluation import volume_eval
    argv = ["--model", args.model, "--data_root", args.data_root, "--split", args.split,
            "--output", out, "--mirror", mirror, "--worst_volumes", "0"]
    for flag in ("eval_fraction", "split_seed"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    start = time.perf_counter()
    code = volume_eval.main(argv)
    seconds = time.perf_counter() - start
    if code not in (0, 1):
        raise SystemExit(f"volume_eval exited {code}")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    metrics["wall_seconds"] = seconds
    return metrics


def figures(metrics: dict, role: str) -> dict:
    out = {}
    for cls, pooled in (metrics["global"].get(role) or {}).items():
        if pooled:
            out[f"{cls} mean Dice"] = pooled["mean_dice"]
            out[f"{cls} global Dice"] = pooled["global_dice"]
    lesions = (metrics.get("lesions") or {}).get(role) or {}
    if lesions:
        out["lesion recall"] = lesions.get("lesion_recall")
        out["lesion recall >10 mm"] = _recall_over_10mm(lesions)
    return out


def _recall_over_10mm(lesions: dict):
    bands = ("10to20mm", "gt20mm")
    ref = {b: lesions.get(f"lesion_ref_{b}") or 0 for b in bands}
    tp = sum((lesions.get(f"lesion_recall_{b}") or 0.0) * ref[b] for b in bands)
    return tp / sum(ref.values()) if sum(ref.values()) else None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def report(label: str, runs: dict) -> None:
    print(f"\n== {label}: {len(runs['none']['cases'])} volumes")
    for mirror, metrics in runs.items():
        print(f"mirror {mirror}: {metrics['seconds_per_volume']:.2f} s/volume "
              f"(wall {metrics['wall_seconds']:.1f} s)")
        for role in ("candidate", "candidate_postprocessed"):
            row = figures(metrics, role)
            print(f"  {role:<24} " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
    none, flips = runs["none"], runs["flips"]
    for cls in none["classes"]:
        raw = none["global"]["candidate"][cls]["mean_dice"]
        post = none["global"]["candidate_postprocessed"][cls]["mean_dice"]
        mirrored = flips["global"]["candidate_postprocessed"][cls]["mean_dice"]
        print(f"gain {cls}: post-processing {post - raw:+.4f} mean Dice; mirroring "
              f"{mirrored - post:+.4f} (post-processed), at "
              f"{flips['seconds_per_volume'] / none['seconds_per_volume']:.2f}x the time")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data_root", required=True)
    p.add_argument("--split", default="eval", choices=("eval", "all"))
    p.add_argument("--eval_fraction", type=float)
    p.add_argument("--split_seed", type=int)
    p.add_argument("--label", default="data")
    p.add_argument("--output", help="keep the metrics here (default: a temp folder)")
    args = p.parse_args(argv)
    print(host_line(), flush=True)
    out = args.output or tempfile.mkdtemp(prefix="postprocess_effect_")
    runs = {m: evaluate(args, m, os.path.join(out, m)) for m in ("none", "flips")}
    report(args.label, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
