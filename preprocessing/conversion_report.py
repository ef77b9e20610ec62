"""The conversion's reports and checks: JSON lines written from the pipeline (`write_lines`), the
summary counted from them once the run is done (`summarize_conversion`) and the checks on it
(`check_conversion`).

The JSON lines are written by Beam's sink (Beam's filesystems: local, gs://, s3:// with
apache-beam[aws]); the summary reads and writes them through preprocessing/storage.py like every
other file the pipeline touches outside a Beam sink."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Sequence

import apache_beam as beam

from preprocessing import storage
from preprocessing.splits import EVAL, TRAIN
from schema.contract import CASES_FILE, CONVERSION_SUMMARY_FILE, QUARANTINE_FILE


def write_lines(pcoll: beam.PCollection, path: str, label: str):
    """Writes a PCollection of strings to one text file (empty file if nothing)."""
    return pcoll | f"Write{label}" >> beam.io.WriteToText(path, shard_name_template="",
                                                          num_shards=1)


def _read_jsonl(path: str) -> List[dict]:
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


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
