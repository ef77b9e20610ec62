"""Standalone NIfTI -> tf.Example converter: the ExampleGen's Beam transform without TFX.

    python -m preprocessing.convert --data_root DIR | --manifest CSV --output DIR
        [--size 320 --context 1 --window -200 250 --selection liver_margin --margin 2
         --keep_fraction 0.1 --target_spacing MM --eval_fraction 0.2 --eval_cases volume-0,...
         --max_bad_fraction 0.1 --allow_unlabeled --compression_level 1 --beam_arg=...]

Writes OUTPUT/train/ and OUTPUT/eval/ (shuffled gzip TFRecord shards data-*.tfrecord.gz, the
example format of preprocessing/features.py), OUTPUT/quarantine.jsonl (one line per rejected
case: file, case id, reason), OUTPUT/cases.jsonl (one line per converted case),
OUTPUT/conversion_summary.json and OUTPUT/slice_config.json. Exits 1, naming the cases, when more
than --max_bad_fraction of the cases are bad (or none is left); the outputs are written anyway so
the quarantine report can be read. Beam runs in-process (`--direct_running_mode=in_memory`)
unless --beam_arg says otherwise, e.g. --beam_arg=--direct_running_mode=multi_processing
--beam_arg=--direct_num_workers=4, or a cluster's runner: Dask with
--beam_arg=--runner=apache_beam.runners.dask.dask_runner.DaskRunner
--beam_arg=--dask_client_address=tcp://SCHEDULER:8786 (one case per Dask task unless
--dask_partition_size / --dask_npartitions say otherwise; the workers must be able to import this
project, see docs/scaling.md), Dataflow, Flink or Spark. Input and output may be URIs (gs://,
s3://): the inputs are read through common/storage.py, the shards and reports written by
Beam's filesystems.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
import warnings
from typing import List, Optional, Sequence

# google-api-core warns, once per google package Beam imports, that Python 3.10 gets no more of
# its updates: a notice about its future releases, not about this run (the pinned stack needs
# 3.10). Filtered by its message before Beam is imported; any other FutureWarning still shows.
warnings.filterwarnings("ignore", message="You are using a non-supported Python version",
                        category=FutureWarning)
import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions

from common import storage
from common.interrupts import EXIT_INTERRUPTED, signal_name, terminate_as_interrupt
from common.process_exit import exit_process
from common.run_lock import RunLockHeld, locked_outputs
from preprocessing.beam_convert import add_conversion, close_runner_client
from preprocessing.conversion_plan import plan_conversion
from preprocessing.conversion_report import check_conversion, summarize_conversion
from preprocessing.conversion_settings import (ConversionSettings, conversion_beam_args,
                                               with_local_runner)
from preprocessing.read_limits import add_read_limit_flags
from preprocessing.shard_writer import remove_temp_dir
from preprocessing.slices import SliceConfig
from preprocessing.splits import EVAL, TRAIN
from schema.contract import QUARANTINE_FILE, RECORDS_SLICE_CONFIG_FILE

SPLITS = (TRAIN, EVAL)
SHARD_PREFIX, SHARD_SUFFIX = "data", ".tfrecord.gz"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    d, c = SliceConfig(), ConversionSettings()   # the defaults, written once there
    p = argparse.ArgumentParser(prog="python -m preprocessing.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data_root", help="folder of volume-N.nii[.gz] + segmentation-N.nii[.gz]")
    src.add_argument("--manifest", help="CSV with columns image (NIfTI, or a DICOM series "
                                        "folder), label (NIfTI or DICOM SEG; may be empty), "
                                        "optional case_id and series_uid; paths relative to "
                                        "the CSV's folder")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--allow_unlabeled", action="store_true",
                   help="manifest rows without a label become inference-only cases")
    p.add_argument("--size", type=int, nargs="+", default=list(d.size), metavar="N",
                   help="example height and width (one value: square)")
    p.add_argument("--context", type=int, default=d.context)
    p.add_argument("--window", type=float, nargs=2, default=list(d.window), metavar=("LO", "HI"))
    p.add_argument("--selection", choices=("liver_margin", "all"), default=d.selection)
    p.add_argument("--margin", type=int, default=d.margin)
    p.add_argument("--keep_fraction", type=float, default=d.keep_fraction)
    p.add_argument("--seed", type=int, default=d.seed, help="slice selection seed")
    p.add_argument("--target_spacing", type=float, default=None,
                   help="in-plane mm per pixel (default: resize the field of view to --size)")
    p.add_argument("--eval_fraction", type=float, default=c.eval_fraction)
    p.add_argument("--split_seed", type=int, default=c.split_seed)
    p.add_argument("--eval_cases", default=None,
                   help="comma-separated case ids for eval (overrides --eval_fraction)")
    p.add_argument("--max_bad_fraction", type=float, default=c.max_bad_fraction)
    p.add_argument("--compression_level", type=int, default=c.compression_level,
                   choices=range(10), metavar="0-9")
    p.add_argument("--compress_threads", type=int, default=c.compress_threads)
    p.add_argument("--no_prefetch", action="store_true",
                   help="do not read the next case while converting one (less memory)")
    p.add_argument("--max_volumes_in_flight", type=int, default=c.max_volumes_in_flight,
                   help="volumes one worker process holds at once, over all its threads "
                        "(default %(default)s: one converted, one read ahead)")
    add_read_limit_flags(p, c.read_limits())   # over them a case is quarantined
    p.add_argument("--overwrite", action="store_true",
                   help="replace shards of an earlier run in --output")
    p.add_argument("--beam_arg", action="append", default=[],
                   help="a Beam pipeline option, repeatable (e.g. "
                        "--beam_arg=--direct_running_mode=multi_processing)")
    args = p.parse_args(argv)
    if len(args.size) not in (1, 2):
        p.error("--size takes one or two values")
    if args.max_volumes_in_flight < 1:
        p.error("--max_volumes_in_flight must be at least 1")
    return args


def settings_from_args(args: argparse.Namespace) -> ConversionSettings:
    """The same settings NiftiExampleGen takes."""
    size = args.size * 2 if len(args.size) == 1 else args.size
    slice_config = SliceConfig(size=tuple(size), context=args.context, window=tuple(args.window),
                               selection=args.selection, margin=args.margin,
                               keep_fraction=args.keep_fraction, seed=args.seed,
                               target_spacing=args.target_spacing)
    eval_cases = ([c.strip() for c in args.eval_cases.split(",") if c.strip()]
                  if args.eval_cases else None)
    return ConversionSettings(
        slices=slice_config, eval_fraction=args.eval_fraction, split_seed=args.split_seed,
        eval_cases=eval_cases, max_bad_fraction=args.max_bad_fraction,
        manifest=storage.absolute(args.manifest) if args.manifest else None,
        allow_unlabeled=args.allow_unlabeled, compression_level=args.compression_level,
        compress_threads=args.compress_threads, prefetch=not args.no_prefetch,
        max_voxels=args.max_voxels, max_inflated_bytes=args.max_inflated_bytes,
        max_volumes_in_flight=args.max_volumes_in_flight)


def beam_options(beam_args: List[str]) -> PipelineOptions:
    args = with_local_runner(conversion_beam_args(beam_args))
    if not any(a.startswith("--direct_running_mode") for a in args):
        args.append("--direct_running_mode=in_memory")
    return PipelineOptions(args)


def earlier_outputs(split_dirs: List[str]) -> List[str]:
    """Files an earlier run left in the split folders (hidden names aside, as a shell glob)."""
    return [storage.join(d, name) for d in split_dirs if storage.isdir(d)
            for name in sorted(storage.listdir(d)) if not name.startswith(".")]


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    slice_config = settings.slices
    output = storage.absolute(args.output)   # a local folder or a URI (gs://, s3://)
    split_dirs = {s: storage.join(output, s) for s in SPLITS}
    old = earlier_outputs(list(split_dirs.values()))
    if old and not args.overwrite:
        logging.error("%s already holds %d files from an earlier run; pass --overwrite",
                      output, len(old))
        return 2
    for f in old:
        storage.remove_tree(f)
    storage.makedirs(output)

    try:
        plan = plan_conversion(settings,
                               storage.absolute(args.data_root) if args.data_root else None)
    except (OSError, ValueError) as e:
        logging.error("Cannot read the input: %s", e)
        return 2
    logging.info("Converting %d cases (%d train, %d eval, %d rejected before reading) to %s; "
                 "slices %s", plan.input_cases, plan.cases_in(TRAIN), plan.cases_in(EVAL),
                 len(plan.errors), output, slice_config)
    temp_dir = storage.join(output, ".tmp")
    start = time.time()
    pipeline = beam.Pipeline(options=beam_options(args.beam_arg))
    try:
        with _failure_named(), pipeline:
            add_conversion(pipeline, plan, slice_config, split_dirs, output, temp_dir,
                           compression_level=settings.compression_level,
                           compress_threads=settings.compress_threads,
                           prefix=SHARD_PREFIX, suffix=SHARD_SUFFIX,
                           seed=settings.split_seed, prefetch=settings.prefetch,
                           read_limits=settings.read_limits(),
                           volumes_in_flight=settings.max_volumes_in_flight)
    finally:
        close_runner_client(pipeline)
        remove_temp_dir(temp_dir)
    storage.write_text(storage.join(output, RECORDS_SLICE_CONFIG_FILE),
                       json.dumps(slice_config.to_dict(), indent=2))
    summary = summarize_conversion(output, plan.input_cases, SPLITS)
    logging.info("Converted %d/%d cases, %d input slices -> examples %s in %.1f s",
                 summary["cases_converted"], summary["input_cases"], summary["input_slices"],
                 summary["examples_per_split"], time.time() - start)
    try:
        check_conversion(summary, settings.max_bad_fraction)
    except RuntimeError as e:
        logging.error("%s (report: %s)", e, storage.join(output, QUARANTINE_FILE))
        return 1
    return 0


@contextlib.contextmanager
def _failure_named():
    """A failed Beam pipeline (it wraps the worker's error in its own) as one error naming what
    failed: "cannot write <file> ([Errno 28] No space left on device)"."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - Beam raises its own wrappers of the worker's error
        lines = [line for line in str(e).splitlines() if "cannot write" in line]
        raise ConversionFailed(lines[-1].strip() if lines else f"{type(e).__name__}: {e}") from e


class ConversionFailed(RuntimeError):
    """The pipeline failed: str() is the one line that says why."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    output = storage.absolute(args.output)
    try:
        with terminate_as_interrupt(), locked_outputs((output, True, "the output folder")):
            return run(args)
    except RunLockHeld as e:
        logging.error("Not started: %s", e)
        return 2
    except ConversionFailed as e:
        logging.error("Conversion failed, no shard published for it: %s. Free the space or fix "
                      "the cause, then run the same command with --overwrite.", e)
        return 1
    except KeyboardInterrupt as e:
        logging.error("Interrupted by %s: no complete output. Shards are written under "
                      "temporary names and renamed when whole, so none of them is taken for a "
                      "result; run the same command with --overwrite to convert again.",
                      signal_name(e))
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    exit_process(main())
