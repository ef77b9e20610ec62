"""The Beam transform volumes -> tf.Examples -> gzip TFRecords, shared by the TFX ExampleGen
executor and the standalone converter (preprocessing/convert.py). It only composes the parts:

  conversion_plan.py    which cases, in which split (plan_conversion, ConversionPlan)
  case_conversion.py    one case -> serialized examples; the Beam DoFn over cases
  shard_writer.py       examples -> shuffled gzip TFRecord shards (write_examples)
  conversion_report.py  quarantine / case summary files, the summary and its checks
  conversion_stages.py  the Beam counters and timed stages shared by the above

Memory is bounded by max_volumes_in_flight volumes per worker process (volume_slots.py).
Bad cases never disappear: each becomes a quarantine record (file, case id, reason), and every
case, good or bad, is counted, so that input cases == converted + quarantined.

The same pipeline runs on every Beam runner, Beam 2.74's DaskRunner included, which executes
fewer of Beam's semantics than the others: it computes only the pipeline's last transform and
what that depends on (add_conversion ends in one step fed by every sink), it hands every consumer
of a multi-output ParDo all the outputs (the case DoFn tags elements itself), and it drops what a
DoFn emits from finish_bundle (no output is emitted there; prefetch is off on it).
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from preprocessing.case_conversion import (QUARANTINE_TAG, SUMMARY_TAG, ConvertCaseFn,
                                           SelectTag, quarantine_record)
from preprocessing.conversion_plan import ConversionPlan
from preprocessing.conversion_report import write_lines
from preprocessing.conversion_settings import DEFAULT_COMPRESS_THREADS, DEFAULT_COMPRESSION_LEVEL
from preprocessing.nifti import CaseError, CaseFiles
from preprocessing.read_limits import DEFAULT_LIMITS, ReadLimits
from preprocessing.shard_writer import write_examples
from preprocessing.slices import SliceConfig
from preprocessing.volume_slots import DEFAULT_VOLUMES_IN_FLIGHT
from schema.contract import CASES_FILE, QUARANTINE_FILE


def drops_bundle_end_outputs(pipeline: beam.Pipeline) -> bool:
    """Whether the pipeline's runner loses what a DoFn emits from finish_bundle: Beam 2.74's
    DaskRunner collects a bundle's outputs before calling it."""
    return type(pipeline.runner).__name__ == "DaskRunner"


def convert_cases(pipeline: beam.Pipeline, cases: List[Tuple[CaseFiles, str]],
                  discovery_errors: Iterable[CaseError], split_names: List[str],
                  slice_config: SliceConfig, prefetch: bool = True,
                  read_limits: ReadLimits = DEFAULT_LIMITS,
                  volumes_in_flight: int = DEFAULT_VOLUMES_IN_FLIGHT
                  ) -> Tuple[Dict[str, beam.PCollection], beam.PCollection, beam.PCollection]:
    """Adds the conversion to `pipeline`. Returns (serialized tf.Examples by split, quarantine
    JSON lines, per-case summary JSON lines). A volume over `read_limits` is quarantined
    unread; a worker process holds at most `volumes_in_flight` volumes (volume_slots.py)."""
    if prefetch and drops_bundle_end_outputs(pipeline):
        # The prefetching DoFn emits a bundle's last case from finish_bundle.
        logging.info("Case prefetch off: the %s drops outputs of finish_bundle",
                     type(pipeline.runner).__name__)
        prefetch = False
    tagged = (
        pipeline
        | "ListCases" >> beam.Create(cases)
        # Spread cases over workers; each worker process then holds at most volumes_in_flight.
        | "SpreadCases" >> beam.Reshuffle()
        | "ConvertCases" >> beam.ParDo(ConvertCaseFn(slice_config.to_dict(), prefetch,
                                                    total_cases=len(cases),
                                                    read_limits=read_limits.to_dict(),
                                                    volumes_in_flight=volumes_in_flight)))
    outputs = {tag: tagged | f"Select[{tag}]" >> beam.ParDo(SelectTag(tag))
               for tag in (QUARANTINE_TAG, SUMMARY_TAG, *split_names)}
    discovery_quarantine = (
        pipeline | "PairingErrors" >> beam.Create(
            [quarantine_record(e) for e in discovery_errors], reshuffle=False))
    quarantine = ((outputs[QUARANTINE_TAG], discovery_quarantine)
                  | "AllQuarantine" >> beam.Flatten())
    return {s: outputs[s] for s in split_names}, quarantine, outputs[SUMMARY_TAG]


def close_runner_client(pipeline: beam.Pipeline):
    """Closes the distributed.Client the DaskRunner opened and leaves connected (Beam 2.74), so
    that a long-lived process (an orchestrator, a test) does not keep one per run."""
    client = getattr(getattr(pipeline, "result", None), "client", None)
    if client is not None:
        client.close()


def _written(element):
    logging.debug("Conversion wrote %s", element)
    return element


def add_conversion(pipeline: beam.Pipeline, plan: ConversionPlan, slice_config: SliceConfig,
                   split_dirs: Dict[str, str], report_dir: str, temp_dir: str,
                   compression_level: int = DEFAULT_COMPRESSION_LEVEL,
                   compress_threads: int = DEFAULT_COMPRESS_THREADS,
                   prefix: str = "data_tfrecord", suffix: str = ".gz", seed: int = 0,
                   prefetch: bool = True, read_limits: ReadLimits = DEFAULT_LIMITS,
                   volumes_in_flight: int = DEFAULT_VOLUMES_IN_FLIGHT) -> beam.PCollection:
    """The whole conversion on `pipeline`: examples written per split, the quarantine report and
    the per-case summaries written to `report_dir` (QUARANTINE_FILE, CASES_FILE). Add nothing to
    the pipeline after it: the returned step, fed by every sink, must be the pipeline's last
    (all the DaskRunner runs)."""
    splits = list(split_dirs)
    examples, quarantine, summaries = convert_cases(pipeline, plan.cases, plan.errors, splits,
                                                    slice_config, prefetch, read_limits,
                                                    volumes_in_flight)
    shards = write_examples(examples, split_dirs, temp_dir,
                            {s: max(1, plan.cases_in(s)) for s in splits}, compression_level,
                            compress_threads, prefix, suffix, seed)
    reports = [write_lines(quarantine, FileSystems.join(report_dir, QUARANTINE_FILE),
                           "Quarantine"),
               write_lines(summaries, FileSystems.join(report_dir, CASES_FILE), "CaseSummaries")]
    return ((shards, *reports) | "AllWritten" >> beam.Flatten()
            | "ConversionDone" >> beam.Map(_written))
