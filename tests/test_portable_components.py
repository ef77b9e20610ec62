"""The components that make the graph the same under every runner: PackagedSchemaGen (the schema
from the installed package, not a compile-time path) and the byte-size batching executors of
StatisticsGen, Transform and Evaluator (the batching flag set inside their Do, not by a runner)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from tfx import v1 as tfx
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.types import standard_artifacts
from tfx_bsl.coders import batch_util

from components import byte_size_batching as bsb
from components import packaged_schema_gen
from components.anomalies_gate import validation_components
from preprocessing.examples import slice_example_bytes
from preprocessing.slices import SliceRecord
from schema import SCHEMA_FILE_NAME, SCHEMA_PATH, schema_sha256

SCHEMA_EXECUTOR = packaged_schema_gen.PackagedSchemaGen_Executor   # made by @component


def _run_schema_executor(uri: str, expected_sha256: str) -> None:
    schema = standard_artifacts.Schema()
    schema.uri = uri
    SCHEMA_EXECUTOR().Do({}, {"schema": [schema]}, {"expected_sha256": expected_sha256})


@pytest.mark.parametrize("where", ["local", "ram"])
def test_packaged_schema_is_copied_into_the_artifact(tmp_path, where):
    uri = str(tmp_path / "schema") if where == "local" else f"ram://schema-{os.getpid()}/out"
    _run_schema_executor(uri, schema_sha256())
    with tf.io.gfile.GFile(f"{uri}/{SCHEMA_FILE_NAME}", "rb") as f:
        copied = f.read()
    with open(SCHEMA_PATH, "rb") as f:
        assert copied == f.read()


def test_an_image_with_another_schema_fails_before_copying(tmp_path):
    with pytest.raises(RuntimeError, match="rebuild the image"):
        _run_schema_executor(str(tmp_path / "schema"), "0" * 64)
    assert not (tmp_path / "schema").exists()


def test_byte_size_batching_is_on_inside_and_restored_after():
    before = flags.FLAGS[bsb.FLAG].value if flags.FLAGS.is_parsed() else False
    with bsb.byte_size_batching():
        assert batch_util._UseByteSizeBatching()
        assert "element_size_fn" in batch_util.GetBatchElementsKwargs(None)
    assert getattr(flags.FLAGS, bsb.FLAG) == before


@pytest.mark.parametrize("ours", [bsb.StatisticsGenExecutor, bsb.TransformExecutor,
                                  bsb.EvaluatorExecutor])
def test_each_executor_runs_its_parent_with_byte_size_batching(monkeypatch, ours):
    seen = []
    parent = ours.__mro__[1]
    monkeypatch.setattr(parent, "Do", lambda self, *a: seen.append(
        batch_util._UseByteSizeBatching()))
    ours().Do({}, {}, {})
    assert seen == [True]
    assert not batch_util._UseByteSizeBatching()


def test_swap_keeps_beam_args_and_refuses_other_components():
    examples = tfx.dsl.Channel(type=standard_artifacts.Examples)
    statistics_gen = tfx.components.StatisticsGen(examples=examples)
    statistics_gen.executor_spec.beam_pipeline_args = ["--direct_num_workers=2"]
    bsb.with_byte_size_batching(statistics_gen)
    assert statistics_gen.executor_spec.executor_class is bsb.StatisticsGenExecutor
    assert statistics_gen.executor_spec.beam_pipeline_args == ["--direct_num_workers=2"]
    validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=tfx.dsl.Channel(type=standard_artifacts.Schema))
    with pytest.raises(ValueError, match="no byte-size batching executor"):
        bsb.with_byte_size_batching(validator)


def _write_examples(folder, n: int = 12) -> None:
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(folder / "examples.tfrecord.gz"), "GZIP") as writer:
        for i in range(n):
            record = SliceRecord(image=rng.integers(-200, 250, (16, 16, 3)).astype(np.int16),
                                 label=(rng.random((16, 16)) > 0.5).astype(np.uint8),
                                 slice_index=i, num_slices=n)
            writer.write(slice_example_bytes(f"volume-{i % 3}", (0.7, 0.7, 2.0), record))


@pytest.mark.pipeline
def test_local_runner_runs_the_packaged_schema_and_batching_statistics(tmp_path, monkeypatch):
    """Under the local orchestrator: PackagedSchemaGen feeds the checks, and StatisticsGen builds
    its Beam graph with byte-size batching though no runner set the flag."""
    seen = []
    original = batch_util.GetBatchElementsKwargs
    monkeypatch.setattr(batch_util, "GetBatchElementsKwargs", lambda *a, **k: (
        seen.append(batch_util._UseByteSizeBatching()), original(*a, **k))[1])
    data = tmp_path / "data"
    data.mkdir()
    _write_examples(data)
    example_gen = tfx.components.ImportExampleGen(input_base=str(data))
    schema_gen = packaged_schema_gen.PackagedSchemaGen(expected_sha256=schema_sha256())
    checks = validation_components(example_gen.outputs["examples"], schema_gen.outputs["schema"])
    bsb.with_byte_size_batching(checks[0])
    tfx.orchestration.LocalDagRunner().run(tfx_pipeline.Pipeline(
        pipeline_name="portable-components-test", pipeline_root=str(tmp_path / "root"),
        components=[example_gen, schema_gen, *checks], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(tmp_path / "metadata.sqlite")),
        beam_pipeline_args=["--runner=FnApiRunner", "--direct_running_mode=in_memory"]))
    assert seen and all(seen), seen
    schemas = list((tmp_path / "root" / "PackagedSchemaGen").rglob(SCHEMA_FILE_NAME))
    assert len(schemas) == 1 and schemas[0].read_bytes() == open(SCHEMA_PATH, "rb").read()
