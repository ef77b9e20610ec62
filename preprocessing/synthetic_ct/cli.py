"""The command line of the synthetic data set: `python -m preprocessing.synthetic_ct --output DIR
--num_cases N ...` (and the `unet3plus-synth` entry point)."""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import List, Optional, Sequence, Tuple

from preprocessing.synthetic_ct.case import DEFAULT_SLICES_RANGE
from preprocessing.synthetic_ct.writer import LOG, read_manifest, write_dataset

DESCRIPTION = "Deterministic synthetic abdominal CT data set in the LiTS layout."


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--output", required=True, help="directory for volume-N / segmentation-N")
    parser.add_argument("--num_cases", type=int, default=12)
    parser.add_argument("--size", type=int, default=128, help="in-plane size in voxels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min_slices", type=int, default=DEFAULT_SLICES_RANGE[0])
    parser.add_argument("--max_slices", type=int, default=DEFAULT_SLICES_RANGE[1])
    parser.add_argument("--start_index", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even unchanged cases")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    t0 = time.perf_counter()
    pairs = write_dataset(args.output, args.num_cases, seed=args.seed, in_plane=args.size,
                          slices_range=(args.min_slices, args.max_slices), start_index=args.start_index,
                          overwrite=args.overwrite, progress=not args.no_progress)
    cases = (read_manifest(args.output) or {}).get("cases", [])
    total = sum(int(e.get("num_slices") or 0) for e in cases)
    liver = sum(int(e.get("slices_with_liver") or 0) for e in cases)
    LOG.info("done: %d cases, %d slices, %d slices with liver, %.1f s -> %s", len(pairs), total, liver,
             time.perf_counter() - t0, os.path.abspath(args.output))
    return pairs

