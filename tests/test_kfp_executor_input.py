"""components/kfp_executor_input.py against TFX's own parser: an ExecutorInput as open-source
KFP 2.x sends it (built as tests/kfp_backend.py builds it, from the backend's source) fails in
TFX 1.16's entrypoint code, and reads once adapted. The full pipeline in that mode runs in
tests/test_kubeflow_execute.py."""
from __future__ import annotations

import copy
import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as tfx_utils

from components import kfp_executor_input as kei
from components import task_entrypoint
from kfp_backend import KfpBackend

EXAMPLES_TYPE = {"instanceSchema": "title: tfx.Examples\ntype: object\nproperties:\n  span:\n"
                                   "    type: integer\n  split_names:\n    type: string\n"}
STATISTICS_TYPE = {"instanceSchema": "title: tfx.ExampleStatistics\ntype: object\n"}
INPUTS_SPEC = {"artifacts": {"examples": {"artifactType": EXAMPLES_TYPE}}}


def _kfp_executor_input() -> dict:
    """StatisticsGen's input as KFP feeds it: the upstream Examples recorded in (our stand-in
    for) KFP's ML Metadata and read back, and the provisioned outputs with `executor-logs`."""
    backend = KfpBackend("python", "p", "s3://b/root/p/run-1", local_root=None)
    produced = {"name": "examples", "uri": "s3://b/root/p/run-1/Gen/u1/examples",
                "type": EXAMPLES_TYPE,
                "metadata": {"span": 0, "split_names": '["train", "eval"]', "is_external": False,
                             "tags": ["a", "b"], "extra": {"k": 1}}}
    record_id = backend.record("examples", produced)
    outputs = {"statistics": {"artifacts": [{"name": "statistics", "type": STATISTICS_TYPE,
                                             "uri": "s3://b/root/p/run-1/Stats/u2/statistics"}]},
               "executor-logs": {"artifacts": [{"name": "executor-logs",
                                                "type": {"schemaTitle": "system.Artifact"},
                                                "uri": "s3://b/root/p/run-1/Stats/u2/logs"}]}}
    return {"inputs": {"artifacts": {"examples": {"artifacts": [backend.as_input(record_id)]}}},
            "outputs": {"artifacts": outputs, "outputFile": "/s3/b/x/output_metadata.json"}}


def _tfx_parse(executor_input: dict):
    """What TFX's entrypoint does first with the ExecutorInput (kubeflow_v2_run_executor.py)."""
    message = json_format.Parse(json.dumps(executor_input), pipeline_spec_pb2.ExecutorInput(),
                                ignore_unknown_fields=True)
    names = {}
    return (tfx_utils.parse_raw_artifact_dict(message.inputs.artifacts, names),
            tfx_utils.parse_raw_artifact_dict(message.outputs.artifacts, names))


def test_tfx_cannot_read_what_kfp_sends():
    raw = _kfp_executor_input()
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'get'"):
        _tfx_parse(raw)                                  # the untyped upstream Examples
    typed = copy.deepcopy(raw)
    typed["inputs"]["artifacts"]["examples"]["artifacts"][0]["type"] = EXAMPLES_TYPE
    with pytest.raises(ImportError, match="system.Artifact"):
        _tfx_parse(typed)                                # the executor-logs output


def test_adapted_input_reads_as_the_producer_wrote_it():
    adapted, changes = kei.readable_executor_input(_kfp_executor_input(), INPUTS_SPEC,
                                                   declared_outputs=["statistics"])
    inputs, outputs = _tfx_parse(adapted)
    assert sorted(outputs) == ["statistics"]
    examples = inputs["examples"][0]
    assert type(examples).__name__ == "Examples"
    assert examples.span == 0 and examples.split_names == '["train", "eval"]'
    assert examples.get_json_value_custom_property("tags") == ["a", "b"]
    assert examples.get_json_value_custom_property("extra") == {"k": 1}
    assert not examples.has_custom_property("display_name")
    assert not examples.has_custom_property("store_session_info")
    assert any("executor-logs" in c and "system.Artifact" in c for c in changes), changes
    assert any("type tfx.Examples" in c for c in changes), changes


def test_an_input_vertex_sends_is_left_alone():
    vertex_like = {"inputs": {"artifacts": {"examples": {"artifacts": [
        {"name": "projects/1/artifacts/7", "uri": "gs://b/e", "type": EXAMPLES_TYPE,
         "metadata": {"span": 0}}]}}},
        "outputs": {"artifacts": {"statistics": {"artifacts": [
            {"name": "s", "uri": "gs://b/s", "type": STATISTICS_TYPE}]}}, "outputFile": "/x"}}
    args = ["--executor_class_path", "m.E", kei.INVOCATION_FLAG, json.dumps(vertex_like),
            kei.INPUTS_SPEC_FLAG, json.dumps(INPUTS_SPEC), "--runner=DirectRunner"]
    assert kei.readable_args(args, ["statistics"]) == (args, [])


def test_entrypoint_rewrites_the_invocation_argument_in_either_form():
    raw = json.dumps(_kfp_executor_input())
    spec = json.dumps(INPUTS_SPEC)
    for args in (["--executor_class_path", "m.E", kei.INVOCATION_FLAG, raw,
                  kei.INPUTS_SPEC_FLAG, spec, "--runner=DirectRunner"],
                 ["--executor_class_path=m.E", f"{kei.INVOCATION_FLAG}={raw}",
                  f"{kei.INPUTS_SPEC_FLAG}={spec}"]):
        declared, module, rest = task_entrypoint.parse_command(
            [kei.outputs_flag(["statistics"]), "tfx.x.run_executor", *args])
        assert (declared, module) == (["statistics"], "tfx.x.run_executor")
        adapted, changes = kei.readable_args(rest, declared)
        assert len(adapted) == len(args) and changes
        _, text = kei.flag_value(adapted, kei.INVOCATION_FLAG)
        _tfx_parse(json.loads(text))                      # reads
        assert adapted[-1] == args[-1]                    # other arguments as they were


def test_an_untyped_input_without_a_declared_type_is_a_clear_error():
    with pytest.raises(kei.ExecutorInputError, match="'examples'.*without a type.*--target kfp"):
        kei.readable_executor_input(_kfp_executor_input(), inputs_spec=None)


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "m"], "unknown option"),
    ([], "usage"),
    (["--outputs=a"], "usage"),
])
def test_entrypoint_usage_errors(argv, message):
    with pytest.raises(kei.ExecutorInputError, match=message):
        task_entrypoint.parse_command(argv)
