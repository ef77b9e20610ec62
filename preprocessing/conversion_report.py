"""The conversion's reports and checks: JSON lines written from the pipeline (`write_lines`), the
summary counted from them once the run is done (`summarize_conversion`) and the checks on it
(`check_conversion`).

The JSON lines are written from the pipeline through Beam's filesystems (local, gs://, s3:// with
apache-beam[aws]), uncompressed and sorted, by a DoFn of ours rather than Beam's WriteToText
(whose writer emits its files from finish_bundle, which Beam 2.74's DaskRunner drops); the
summary reads and writes them through common/storage.py like every other file the pipeline
touches outside a Beam step."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from common import storage
from preprocessing.splits import EVAL, TRAIN
from schema.contract import CASES_FILE, CONVERSION_SUMMARY_FILE, QUARANTINE_FILE


def _keyed(line):   # unannotated: Beam would log each string annotation it cannot read
    return 0, line


class WriteLinesFn(beam.DoFn):
    """(key, lines) -> one uncompressed text file of the sorted lines (empty lines dropped: the
    marker that makes the file exist when there are none). Yields the path.

    With no lines the file holds one newline, not zero bytes: Beam's s3:// filesystem uploads a
    file in parts, and S3 (and moto, MinIO) refuses to complete an upload of no part. Readers
    skip blank lines."""

    def __init__(self, path: str):
        self._path = path

    def process(self, element):
        lines = sorted(line for line in element[1] if line)
        with FileSystems.create(self._path, mime_type="text/plain",
                                compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write("".join(line + "\n" for line in lines).encode("utf-8") or b"\n")
        yield self._path


def write_lines(pcoll: beam.PCollection, path: str, label: str) -> beam.PCollection:
    """Writes a PCollection of strings to one text file, sorted (an empty file if there are
    none). Returns a PCollection of the path, once written."""
    marker = pcoll.pipeline | f"{label}Marker" >> beam.Create([(0, "")], reshuffle=False)
    return ((pcoll | f"{label}Key" >> beam.Map(_keyed), marker)
            | f"{label}Lines" >> beam.Flatten()
            | f"{label}Group" >> beam.GroupByKey()
            | f"Write{label}" >> beam.ParDo(WriteLinesFn(path)))


def _read_jsonl(path: str) -> List[dict]:
    data = storage.read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not JSON lines (it begins {data[:16].hex()}): not written "
                         "by this conversion, or the runner mixed other outputs into it") from e
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summarize_conversion(report_dir: str, input_cases: int,
                         splits: Sequence[str] = (TRAIN, EVAL)) -> Dict[str, Any]:
    """Counts what the Beam run wrote, writes CONVERSION_SUMMARY_FILE and logs it."""
    cases = _read_jsonl(storage.join(report_dir, CASES_FILE))
    quarantined = _read_jsonl(storage.join(report_dir, QUARANTINE_FILE))
    summary = {
        "input_cases": input_cases,
        "cases_converted": len(cases),
        "cases_quarantined": len(quarantined),
        "input_slices": sum(c["num_slices"] for c in cases),
        "examples_per_split": {s: sum(c["slices_written"] for c in cases if c["split"] == s)
                               for s in splits},
        "cases_per_split": {s: sorted(c["case_id"] for c in cases if c["split"] == s)
                            for s in splits},
        "unlabelled_cases": sorted(c["case_id"] for c in cases if not c.get("labelled", True)),
        "quarantined": quarantined,
    }
    storage.write_text(storage.join(report_dir, CONVERSION_SUMMARY_FILE),
                       json.dumps(summary, indent=2))
    logging.info("Conversion: %d input cases = %d converted + %d quarantined; examples %s",
                 input_cases, len(cases), len(quarantined), summary["examples_per_split"])
    for q in quarantined:
        logging.warning("Quarantined %s (%s): %s", q["case_id"], q["file"], q["reason"])
    return summary


def check_conversion(summary: Dict[str, Any], max_bad_fraction: float) -> None:
    """Raises RuntimeError, naming the cases, when cases went missing, too many were bad, or
    nothing is left."""
    converted, bad, total = (summary["cases_converted"], summary["cases_quarantined"],
                             summary["input_cases"])
    if converted + bad != total:
        raise RuntimeError(f"Conversion lost cases: {total} in, {converted} converted, "
                           f"{bad} quarantined")
    names = ", ".join(f"{q['case_id']} ({q['reason']})" for q in summary["quarantined"])
    if converted == 0:
        raise RuntimeError(f"Conversion: no case could be converted. Quarantined: {names}")
    if total and bad / total > max_bad_fraction:
        raise RuntimeError(f"Conversion: {bad}/{total} cases are bad, more than the "
                           f"allowed {max_bad_fraction:.0%}: {names}")
    empty = [s for s, n in summary["examples_per_split"].items() if n == 0]
    if empty:
        raise RuntimeError(f"Conversion: split(s) {empty} have no examples; cases per "
                           f"split: {summary['cases_per_split']}")
