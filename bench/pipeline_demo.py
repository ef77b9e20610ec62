"""Times the whole pipeline (`make run`'s demo profile by default) from scratch: no cache, a fresh
output folder. Prints each component's seconds, the eval Dice, the full-volume Dice per class
(mean per case and global), for a tumour model the pooled lesion detection, and last the total
wall time (`--profile tumour`: make run-tumour's run).

    .venv/bin/python bench/pipeline_demo.py [--profile demo] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import local_runner  # noqa: E402
from pipeline.summary import collect_run_summary  # noqa: E402


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="demo")
    p.add_argument("--keep", help="output folder to keep (default: a temporary one, removed)")
    args, rest = p.parse_known_args()
    out = args.keep or tempfile.mkdtemp(prefix="unet3p_bench_")
    start = time.time()
    local_runner.main(["--profile", args.profile, "--output_dir", out, "--no_cache", *rest])
    total = time.time() - start
    summary = collect_run_summary(os.path.join(out, "metadata.sqlite"))
    for name, seconds in sorted(summary["component_seconds"].items(), key=lambda kv: -kv[1]):
        print(f"{name:32s} {seconds:8.1f} s")
    print(f"eval liver Dice {summary['eval_dice'].get('overall', float('nan')):.4f}, "
          f"blessed {summary.get('blessed')}, pushed {summary.get('pushed')}")
    full = summary.get("full_volume") or {}
    for name, pooled in (full.get("global") or {}).items():
        if pooled:
            print(f"full-volume {name} Dice: mean per case {_fmt(pooled['mean_dice'])}, "
                  f"global {_fmt(pooled['global_dice'])}")
    for role, pooled in sorted((full.get("lesions") or {}).items()):
        print(f"lesions ({role}): recall {pooled['lesion_recall']} of {pooled['lesion_ref']}, "
              f">= 10 mm {pooled['lesion_recall_ge10mm']}, precision "
              f"{pooled['lesion_precision']}")
    print(f"pipeline wall time ({args.profile}, incl. synthetic data on first use): {total:.0f} s")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
