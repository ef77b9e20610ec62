"""Examples that break the curated schema stop the pipeline before Transform, with a message
that names the problem: real ImportExampleGen, StatisticsGen, ExampleValidator and the gate
under the local orchestrator."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.types import artifact_utils

from components.anomalies_gate import ANOMALIES_FILE, describe_anomalies, validation_components
from preprocessing import features as F
from preprocessing.slices import SliceRecord
from slice_helpers import slice_to_example
from schema import SCHEMA_PATH

pytestmark = pytest.mark.pipeline


def _examples(n: int, break_it: bool):
    rng = np.random.default_rng(0)
    for i in range(n):
        label = (rng.random((16, 16)) > 0.5).astype(np.uint8)
        record = SliceRecord(image=rng.integers(-200, 250, (16, 16, 3)).astype(np.int16),
                             label=label, slice_index=i, num_slices=n)
        example = slice_to_example(f"volume-{i % 3}", (0.7, 0.7, 2.0), record)
        if break_it:
            # A label domain violation and a missing required feature.
            example.features.feature[F.HAS_LIVER].int64_list.value[:] = [7]
            del example.features.feature[F.IMAGE_SHAPE]
        yield example.SerializeToString()


def _run(tmp_path, break_it: bool):
    data = tmp_path / "data"
    data.mkdir()
    with tf.io.TFRecordWriter(str(data / "examples.tfrecord.gz"), "GZIP") as writer:
        for record in _examples(24, break_it):
            writer.write(record)
    example_gen = tfx.components.ImportExampleGen(input_base=str(data))
    schema_gen = tfx.components.ImportSchemaGen(schema_file=SCHEMA_PATH)
    checks = validation_components(example_gen.outputs["examples"], schema_gen.outputs["schema"])
    pipeline = tfx_pipeline.Pipeline(
        pipeline_name="validation-gate-test", pipeline_root=str(tmp_path / "root"),
        components=[example_gen, schema_gen, *checks], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(tmp_path / "metadata.sqlite")),
        beam_pipeline_args=["--runner=FnApiRunner", "--direct_running_mode=in_memory"])
    tfx.orchestration.LocalDagRunner().run(pipeline)


def _executions(metadata_path: str) -> dict:
    """{component id: [(state name, {input key: [artifact]}, {output key: [artifact]})]} for
    every execution recorded in the ML Metadata store."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    event = metadata_store_pb2.Event
    out = {}
    for node in store.get_contexts_by_type("node"):
        for execution in store.get_executions_by_context(node.id):
            inputs, outputs = {}, {}
            for e in store.get_events_by_execution_ids([execution.id]):
                side = inputs if e.type == event.INPUT else outputs if e.type == event.OUTPUT \
                    else None
                if side is not None:
                    key = e.path.steps[0].key if e.path.steps else ""
                    side.setdefault(key, []).extend(store.get_artifacts_by_id([e.artifact_id]))
            out.setdefault(node.name.split(".", 1)[-1], []).append(
                (metadata_store_pb2.Execution.State.Name(execution.last_known_state),
                 inputs, outputs))
    return out


def test_good_examples_pass_the_gate(tmp_path):
    _run(tmp_path, break_it=False)
    executions = _executions(str(tmp_path / "metadata.sqlite"))
    # The validator ran and found nothing: its anomalies artifact holds an (empty) report
    # for each split.
    assert [state for state, _, _ in executions.get("ExampleValidator", [])] == ["COMPLETE"], \
        executions.keys()
    _, _, validator_outputs = executions["ExampleValidator"][0]
    [anomalies] = validator_outputs["anomalies"]
    splits = sorted(artifact_utils.decode_split_names(
        anomalies.properties["split_names"].string_value))
    assert splits == ["eval", "train"], splits
    for split in splits:
        assert os.path.exists(os.path.join(anomalies.uri, f"Split-{split}", ANOMALIES_FILE))
    assert describe_anomalies(anomalies.uri, splits) == []
    # The gate ran to completion on exactly that artifact (it is not bypassed or fed another).
    assert [state for state, _, _ in executions.get("AnomaliesGate", [])] == ["COMPLETE"], \
        executions.keys()
    _, gate_inputs, _ = executions["AnomaliesGate"][0]
    assert [a.id for a in gate_inputs["anomalies"]] == [anomalies.id]


def test_schema_violations_stop_the_pipeline_with_a_message(tmp_path):
    with pytest.raises(Exception) as info:
        _run(tmp_path, break_it=True)
    message = str(info.value)
    for cause in (info.value.__cause__, info.value.__context__):
        message += str(cause)
    assert "has_liver" in message and "image_shape" in message, message
    assert "stops before Transform" in message, message
