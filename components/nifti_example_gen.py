"""NiftiExampleGen: a FileBasedExampleGen whose Beam executor turns NIfTI CT volumes (LiTS layout,
or any files listed in a CSV manifest) into 2.5D slice tf.Examples with a patient-level split.

The executor is a thin adapter around preprocessing/beam_convert.py (which the standalone
converter, preprocessing/convert.py, runs too): it discovers the cases, assigns splits, runs the
conversion and writes each split as shuffled gzip TFRecord shards itself (two passes, memory
bounded by about one case per worker; see shard_writer.write_examples) instead of TFX's WriteSplit,
which reshuffles every example through the runner and compresses at level 6. Beside the split
folders it writes `quarantine.jsonl` (one line per rejected case: file, case id, reason),
`cases.jsonl` (one line per converted case) and `conversion_summary.json`, and fails the run,
naming the cases, when the bad fraction exceeds `max_bad_fraction` or nothing is left.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Dict, Optional, Union

import apache_beam as beam
from google.protobuf import any_pb2, json_format, struct_pb2
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen import write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from common import storage
from preprocessing.beam_convert import add_conversion, close_runner_client, convert_cases
from preprocessing.conversion_plan import ConversionPlan, plan_conversion
from preprocessing.conversion_report import check_conversion, summarize_conversion
from preprocessing.conversion_settings import ConversionSettings, conversion_beam_args
from preprocessing.shard_writer import remove_temp_dir
from preprocessing.splits import EVAL, TRAIN

# Under the output artifact, removed when the executor ends.
TEMP_DIR_NAME = ".nifti_example_gen_tmp"


def make_custom_config(settings: ConversionSettings) -> example_gen_pb2.CustomConfig:
    """Packs the conversion settings into ExampleGen's CustomConfig."""
    struct = struct_pb2.Struct()
    # tuples -> lists (Struct takes lists only); None values stay, so from_dict sees them.
    struct.update(json.loads(json.dumps(settings.to_dict())))
    packed = any_pb2.Any()
    packed.Pack(struct)
    return example_gen_pb2.CustomConfig(custom_config=packed)


def read_custom_config(exec_properties: Dict[str, Any]) -> ConversionSettings:
    custom = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties["custom_config"], custom)
    struct = struct_pb2.Struct()
    custom.custom_config.Unpack(struct)
    return ConversionSettings.from_dict(json_format.MessageToDict(struct))


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
        """Serialized tf.Examples per split (TFX's hook; Do writes them and the reports through
        add_conversion instead)."""
        settings = read_custom_config(exec_properties)
        plan = self._plan(settings, exec_properties)
        examples, _, _ = convert_cases(pipeline, plan.cases, plan.errors, [TRAIN, EVAL],
                                       settings.slices, prefetch=settings.prefetch,
                                       read_limits=settings.read_limits(),
                                       volumes_in_flight=settings.max_volumes_in_flight)
        return examples

    @staticmethod
    def _plan(settings: ConversionSettings, exec_properties: Dict[str, Any]) -> ConversionPlan:
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        plan = plan_conversion(settings, input_base)
        logging.info("NiftiExampleGen: %d cases from %s (%d train, %d eval), %d rejected before "
                     "reading; slices %s", plan.input_cases,
                     settings.manifest_path(input_base) or input_base,
                     plan.cases_in(TRAIN), plan.cases_in(EVAL), len(plan.errors),
                     settings.slices)
        return plan

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples_artifacts = output_dict[standard_component_specs.EXAMPLES_KEY]
        examples_artifact = artifact_utils.get_single_instance(examples_artifacts)
        report_dir = examples_artifact.uri
        settings = read_custom_config(exec_properties)
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                  input_config)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
                                  output_config)
        split_names = example_gen_utils.generate_output_split_names(input_config, output_config)
        examples_artifact.split_names = artifact_utils.encode_split_names(split_names)

        plan = self._plan(settings, exec_properties)
        temp_dir = storage.join(examples_artifact.uri, TEMP_DIR_NAME)
        # The same partitioning defaults as the converter CLI (one case per Dask task).
        self._beam_pipeline_args = conversion_beam_args(self._beam_pipeline_args or [])
        split_dirs = {s: artifact_utils.get_split_uri(examples_artifacts, s)
                      for s in (TRAIN, EVAL)}
        pipeline = self._make_beam_pipeline()
        try:
            with pipeline:
                add_conversion(
                    pipeline, plan, settings.slices, split_dirs, report_dir, temp_dir,
                    compression_level=settings.compression_level,
                    compress_threads=settings.compress_threads, seed=settings.split_seed,
                    prefetch=settings.prefetch, read_limits=settings.read_limits(),
                    volumes_in_flight=settings.max_volumes_in_flight)
        finally:
            close_runner_client(pipeline)
            remove_temp_dir(temp_dir)

        payload_format = exec_properties.get(standard_component_specs.OUTPUT_DATA_FORMAT_KEY)
        if payload_format:
            examples_utils.set_payload_format(examples_artifact, payload_format)
        examples_utils.set_file_format(examples_artifact, write_split.to_file_format_str(
            example_gen_pb2.FILE_FORMAT_UNSPECIFIED))

        summary = summarize_conversion(report_dir, plan.input_cases)
        examples_artifact.set_int_custom_property("cases_converted", summary["cases_converted"])
        examples_artifact.set_int_custom_property("cases_quarantined",
                                                  summary["cases_quarantined"])
        check_conversion(summary, settings.max_bad_fraction)


class NiftiExampleGen(FileBasedExampleGen):
    """ExampleGen for NIfTI CT volumes in LiTS layout (volume-N / segmentation-N) or listed in a
    CSV manifest."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: Optional[str],
                 settings: Union[ConversionSettings, Dict[str, Any]]):
        """`settings`: ConversionSettings, or its to_dict() form.

        With a manifest, input_base becomes the manifest's folder and the manifest file is what
        the driver fingerprints for caching (edit the manifest, or disable the cache, when
        listed files change in place)."""
        if not isinstance(settings, ConversionSettings):
            settings = ConversionSettings.from_dict(settings)
        pattern = "*.nii*"
        manifest = settings.manifest_path(input_base)
        if manifest:
            manifest = storage.absolute(manifest)   # a URI (gs://...) stays as it is
            settings = dataclasses.replace(settings, manifest=manifest)
            input_base, pattern = storage.dirname(manifest), storage.basename(manifest)
        super().__init__(
            input_base=input_base,
            # The driver fingerprints these files for caching; the executor pairs them itself.
            input_config=example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name="all", pattern=pattern)]),
            output_config=split_output_config(settings.eval_fraction),
            custom_config=make_custom_config(settings),
        )
