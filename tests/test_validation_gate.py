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

from pipeline.validation import validation_components
from preprocessing import features as F
from preprocessing.examples import slice_to_example
from preprocessing.slices import SliceRecord
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


def test_good_examples_pass_the_gate(tmp_path):
    _run(tmp_path, break_it=False)


def test_schema_violations_stop_the_pipeline_with_a_message(tmp_path):
    with pytest.raises(Exception) as info:
        _run(tmp_path, break_it=True)
    message = str(info.value)
    for cause in (info.value.__cause__, info.value.__context__):
        message += str(cause)
    assert "has_liver" in message and "image_shape" in message, message
    assert "stops before Transform" in message, message
