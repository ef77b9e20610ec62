"""The Beam transform volumes -> tf.Examples, shared by the TFX ExampleGen executor and the
standalone converter. Memory is bounded by one volume per worker: each element is one case's file
paths, and a case's slices are streamed out as they are made.

Bad cases never disappear: each becomes a quarantine record (file, case id, reason), and every
case, good or bad, is counted, so that input cases == converted + quarantined.
"""
from __future__ import annotations

import json
import logging
from typing import Dict, Iterable, List, Tuple

import apache_beam as beam

from preprocessing.examples import slice_to_example
from preprocessing.nifti import CaseError, CaseFiles, load_case
from preprocessing.slices import SliceConfig, iter_slices

QUARANTINE_TAG = "quarantine"
SUMMARY_TAG = "case_summary"
COUNTER_NAMESPACE = "nifti_example_gen"


def quarantine_record(error: CaseError, case_id: str = None) -> str:
    return json.dumps({"file": error.path, "case_id": error.case_id or case_id,
                       "reason": error.reason})


class ConvertCaseFn(beam.DoFn):
    """(CaseFiles, split) -> examples tagged with the split name, plus one summary (or one
    quarantine record) per case."""

    def __init__(self, slice_config: dict):
        self._config_dict = slice_config
        self._config = None

    def setup(self):
        self._config = SliceConfig.from_dict(self._config_dict)
        self._cases = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "cases_converted")
        self._bad = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "cases_quarantined")
        self._slices = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "slices_written")

    def process(self, element: Tuple[CaseFiles, str]):
        files, split = element
        try:
            case = load_case(files)
        except CaseError as e:
            self._bad.inc()
            logging.warning("Quarantined %s: %s", files.case_id, e)
            yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, quarantine_record(e, files.case_id))
            return
        written = with_liver = with_tumor = 0
        for record in iter_slices(case, self._config):
            example = slice_to_example(case.case_id, case.spacing, record)
            written += 1
            with_liver += int((record.label > 0).any())
            with_tumor += int((record.label == 2).any())
            yield beam.pvalue.TaggedOutput(split, example)
        self._cases.inc()
        self._slices.inc(written)
        yield beam.pvalue.TaggedOutput(SUMMARY_TAG, json.dumps({
            "case_id": case.case_id, "split": split, "num_slices": int(case.hu.shape[2]),
            "slices_written": written, "slices_with_liver": with_liver,
            "slices_with_tumor": with_tumor, "spacing": list(case.spacing)}))


def convert_cases(pipeline: beam.Pipeline, cases: List[Tuple[CaseFiles, str]],
                  discovery_errors: Iterable[CaseError], split_names: List[str],
                  slice_config: SliceConfig
                  ) -> Tuple[Dict[str, beam.PCollection], beam.PCollection, beam.PCollection]:
    """Adds the conversion to `pipeline`. Returns (examples by split, quarantine JSON lines,
    per-case summary JSON lines)."""
    outputs = (
        pipeline
        | "ListCases" >> beam.Create(cases)
        # Spread cases over workers: each worker then holds one volume at a time.
        | "SpreadCases" >> beam.Reshuffle()
        | "ConvertCases" >> beam.ParDo(ConvertCaseFn(slice_config.to_dict())).with_outputs(
            QUARANTINE_TAG, SUMMARY_TAG, *split_names))
    discovery_quarantine = (
        pipeline | "PairingErrors" >> beam.Create(
            [quarantine_record(e) for e in discovery_errors], reshuffle=False))
    quarantine = ((outputs[QUARANTINE_TAG], discovery_quarantine)
                  | "AllQuarantine" >> beam.Flatten())
    return {s: outputs[s] for s in split_names}, quarantine, outputs[SUMMARY_TAG]


def write_lines(pcoll: beam.PCollection, path: str, label: str):
    """Writes a PCollection of strings to one text file (empty file if nothing)."""
    return pcoll | f"Write{label}" >> beam.io.WriteToText(path, shard_name_template="",
                                                          num_shards=1)
