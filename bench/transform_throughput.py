"""Transform throughput: examples/s of the pipeline's preprocessing_fn under tf.Transform on
Beam (analyze + transform + encode + write gzip TFRecords, as the Transform component does),
on synthetic raw examples of the ExampleGen's format.

    .venv/bin/python bench/transform_throughput.py [--num 2000 --size 128 --normalization window]

Prints, last, examples/s (and MB/s of raw image bytes).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform.beam as tft_beam  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow_metadata.proto.v0 import schema_pb2  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from pipeline.component_configs import transform_custom_config  # noqa: E402
from pipeline.configs import PROFILES, profile_config  # noqa: E402
from preprocessing.examples import slice_example_bytes  # noqa: E402
from preprocessing.slices import SliceRecord  # noqa: E402
from preprocessing.transform_config import NORMALIZATIONS  # noqa: E402
from preprocessing.transform import preprocessing_fn  # noqa: E402
from schema import SCHEMA_PATH  # noqa: E402


def write_raw_examples(path: str, num: int, size: int, channels: int) -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((size, size), np.uint8)
    label[size // 4:size // 2, size // 4:size // 2] = 1
    images = rng.integers(-200, 250, (16, size, size, channels)).astype(np.int16)
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for i in range(num):
            record = SliceRecord(images[i % 16], label, i % 50, 50)
            writer.write(slice_example_bytes(f"volume-{i // 50}", (0.7, 0.7, 2.0), record))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--profile", default="demo", choices=PROFILES,
                   help="the profile whose Transform settings (HU window, classes) are run")
    p.add_argument("--normalization", default="window", choices=NORMALIZATIONS)
    p.add_argument("--beam_mode", default="in_memory", choices=("in_memory", "multi_processing"))
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="transform_bench_")
    raw_path = os.path.join(tmp, "raw.tfrecord.gz")
    write_raw_examples(raw_path, args.num, args.size, args.channels)
    schema = text_format.Parse(open(SCHEMA_PATH).read(), schema_pb2.Schema())
    source = tfxio.TFExampleRecord(file_pattern=raw_path, schema=schema)
    pipeline_config = profile_config(args.profile)
    pipeline_config.example_gen.slices.size = (args.size, args.size)
    pipeline_config.example_gen.slices.context = (args.channels - 1) // 2
    pipeline_config.transform.normalization = args.normalization
    config = transform_custom_config(pipeline_config)
    start = time.time()
    with tft_beam.Context(temp_dir=os.path.join(tmp, "tft")):
        with beam.Pipeline(argv=["--runner=FnApiRunner",
                                 f"--direct_running_mode={args.beam_mode}"]) as pipeline:
            raw = pipeline | source.BeamSource()
            (transformed, metadata), transform_fn = (
                (raw, source.TensorAdapterConfig())
                | tft_beam.AnalyzeAndTransformDataset(
                    lambda inputs: preprocessing_fn(inputs, config),
                    output_record_batches=True))
            _ = ((transformed, metadata)
                 | tft_beam.EncodeTransformedDataset()
                 | beam.io.WriteToTFRecord(os.path.join(tmp, "out", "data"),
                                           file_name_suffix=".gz"))
            _ = transform_fn | tft_beam.WriteTransformFn(os.path.join(tmp, "transform_fn"))
    elapsed = time.time() - start
    mb = args.num * args.size * args.size * args.channels * 2 / 1e6
    print(f"{args.num} examples {args.size}x{args.size}x{args.channels}, {args.normalization}, "
          f"Beam {args.beam_mode}: {elapsed:.1f} s (incl. ~pipeline start-up)")
    print(f"Transform throughput: {args.num / elapsed:.0f} examples/s ({mb / elapsed:.1f} MB/s "
          f"of raw int16 image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
