"""NiftiExampleGen: a FileBasedExampleGen whose Beam executor turns NIfTI CT volumes (LiTS layout)
into 2.5D slice tf.Examples with a patient-level split.

The executor is a thin adapter: it discovers the cases, assigns splits, and calls the Beam
transform in preprocessing/beam_convert.py. Beside the split folders it writes
`quarantine.jsonl` (one line per rejected case: file, case id, reason), `cases.jsonl` (one line
per converted case) and `conversion_summary.json`, and fails the run, naming the cases, when the
bad fraction exceeds `max_bad_fraction` or nothing is left.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List

import apache_beam as beam
from google.protobuf import any_pb2, json_format, struct_pb2
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from preprocessing.beam_convert import convert_cases, write_lines
from preprocessing.nifti import discover_lits_cases
from preprocessing.slices import SliceConfig
from preprocessing.splits import EVAL, TRAIN, assign_splits

QUARANTINE_FILE = "quarantine.jsonl"
CASES_FILE = "cases.jsonl"
SUMMARY_FILE = "conversion_summary.json"


def make_custom_config(settings: Dict[str, Any]) -> example_gen_pb2.CustomConfig:
    """Packs the conversion settings (a JSON-able dict) into ExampleGen's CustomConfig."""
    struct = struct_pb2.Struct()
    struct.update(json.loads(json.dumps(settings)))   # tuples -> lists: Struct takes lists only
    packed = any_pb2.Any()
    packed.Pack(struct)
    return example_gen_pb2.CustomConfig(custom_config=packed)


def read_custom_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    custom = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties["custom_config"], custom)
    struct = struct_pb2.Struct()
    custom.custom_config.Unpack(struct)
    return json_format.MessageToDict(struct)


def split_output_config(eval_fraction: float) -> example_gen_pb2.Output:
    """Names the output splits. The buckets only document the ratio: the executor splits by
    case itself, so a small data set always gets both splits."""
    eval_buckets = max(1, round(100 * eval_fraction))
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=TRAIN, hash_buckets=100 - eval_buckets),
        example_gen_pb2.SplitConfig.Split(name=EVAL, hash_buckets=eval_buckets),
    ]))


class Executor(BaseExampleGenExecutor):
    """Beam executor for NiftiExampleGen."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        raise NotImplementedError("NiftiExampleGen splits by case in GenerateExamplesByBeam")

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline, exec_properties: Dict[str, Any]
                               ) -> Dict[str, beam.PCollection]:
        settings = read_custom_config(exec_properties)
        slice_config = SliceConfig.from_dict(settings["slice"])
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        cases, pairing_errors = discover_lits_cases(input_base)
        split_of = assign_splits([c.case_id for c in cases],
                                 eval_fraction=float(settings.get("eval_fraction", 0.2)),
                                 seed=int(settings.get("split_seed", 0)),
                                 eval_cases=settings.get("eval_cases"))
        self._input_case_count = len(cases) + len(pairing_errors)
        logging.info("NiftiExampleGen: %d cases in %s (%d train, %d eval), %d pairing errors; "
                     "slices %s", self._input_case_count, input_base,
                     sum(s == TRAIN for s in split_of.values()),
                     sum(s == EVAL for s in split_of.values()), len(pairing_errors),
                     slice_config)
        examples, quarantine, summaries = convert_cases(
            pipeline, [(c, split_of[c.case_id]) for c in cases], pairing_errors,
            [TRAIN, EVAL], slice_config)
        write_lines(quarantine, os.path.join(self._report_dir, QUARANTINE_FILE), "Quarantine")
        write_lines(summaries, os.path.join(self._report_dir, CASES_FILE), "CaseSummaries")
        return examples

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        examples_artifact = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        self._report_dir = examples_artifact.uri
        super().Do(input_dict, output_dict, exec_properties)
        summary = summarize_conversion(self._report_dir, self._input_case_count)
        examples_artifact.set_int_custom_property("cases_converted", summary["cases_converted"])
        examples_artifact.set_int_custom_property("cases_quarantined",
                                                  summary["cases_quarantined"])
        settings = read_custom_config(exec_properties)
        check_conversion(summary, float(settings.get("max_bad_fraction", 0.1)))


def _read_jsonl(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize_conversion(report_dir: str, input_cases: int) -> Dict[str, Any]:
    """Counts what the Beam run wrote and checks that no case was lost."""
    cases = _read_jsonl(os.path.join(report_dir, CASES_FILE))
    quarantined = _read_jsonl(os.path.join(report_dir, QUARANTINE_FILE))
    summary = {
        "input_cases": input_cases,
        "cases_converted": len(cases),
        "cases_quarantined": len(quarantined),
        "examples_per_split": {s: sum(c["slices_written"] for c in cases if c["split"] == s)
                               for s in (TRAIN, EVAL)},
        "cases_per_split": {s: sorted(c["case_id"] for c in cases if c["split"] == s)
                            for s in (TRAIN, EVAL)},
        "quarantined": quarantined,
    }
    with open(os.path.join(report_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    logging.info("NiftiExampleGen: %d input cases = %d converted + %d quarantined; examples %s",
                 input_cases, len(cases), len(quarantined), summary["examples_per_split"])
    for q in quarantined:
        logging.warning("NiftiExampleGen quarantined %s (%s): %s", q["case_id"], q["file"],
                        q["reason"])
    return summary


def check_conversion(summary: Dict[str, Any], max_bad_fraction: float) -> None:
    """Fails the run when cases went missing, too many were bad, or nothing is left."""
    converted, bad, total = (summary["cases_converted"], summary["cases_quarantined"],
                             summary["input_cases"])
    if converted + bad != total:
        raise RuntimeError(f"NiftiExampleGen lost cases: {total} in, {converted} converted, "
                           f"{bad} quarantined")
    names = ", ".join(f"{q['case_id']} ({q['reason']})" for q in summary["quarantined"])
    if converted == 0:
        raise RuntimeError(f"NiftiExampleGen: no case could be converted. Quarantined: {names}")
    if total and bad / total > max_bad_fraction:
        raise RuntimeError(f"NiftiExampleGen: {bad}/{total} cases are bad, more than the "
                           f"allowed {max_bad_fraction:.0%}: {names}")
    empty = [s for s, n in summary["examples_per_split"].items() if n == 0]
    if empty:
        raise RuntimeError(f"NiftiExampleGen: split(s) {empty} have no examples; cases per "
                           f"split: {summary['cases_per_split']}")


class NiftiExampleGen(FileBasedExampleGen):
    """ExampleGen for NIfTI CT volumes in LiTS layout (volume-N / segmentation-N)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: str, settings: Dict[str, Any]):
        """settings: {"slice": SliceConfig.to_dict(), "eval_fraction", "split_seed",
        "eval_cases" (optional list), "max_bad_fraction"}."""
        super().__init__(
            input_base=input_base,
            # The driver fingerprints these files for caching; the executor pairs them itself.
            input_config=example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name="all", pattern="*.nii*")]),
            output_config=split_output_config(float(settings.get("eval_fraction", 0.2))),
            custom_config=make_custom_config(settings),
        )

