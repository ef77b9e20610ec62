"""Inference throughput of an exported model: (a) slices/s of its `serving_default` signature
alone, (b) volumes/min of predict.py's folder path end to end (read, segment, write) on 512x512
synthetic volumes, (c) (a) divided by the Trainer's input rate (examples/s of trainer/inputs.py
over the same Transform's output), to see how serving compares with what feeds training.

    .venv/bin/python bench/inference_throughput.py [--profile demo] [--volumes 3 --in_plane 512
        --slices 40 60] [--serve_batches 20] [--paper [--paper_batch 16 --paper_batches 2]]
        [--train_examples_per_s N] [--precision fp32|mixed_bfloat16] [--work DIR]

The model is built and exported by the project's real code, untrained: a Transform graph from
preprocessing/transform.py's preprocessing_fn run by tf.Transform (Beam, in memory) over the
ExampleGen's own examples (preprocessing/case_conversion.py) of 2 synthetic 128x128 cases, the
profile's UNet 3+ from trainer/run.py build_and_compile, exported by trainer/export.py. Speed does
not depend on the weights. The profile sets the slice size, widths and batch: demo (64x64, filters
8..128, skip 8), paper (320x320, 64..1024, skip 64; --paper adds its serving rate, a slow model on
a CPU). The requests for (a) are the serialized examples predict.py sends for the first 512x512
volume (recorded from inference/segmenter.py predict_probabilities), prepared before the clock
starts; (b) runs predict.main on the folder and reads its predictions.csv; (c) calls
bench/input_throughput.py's measure() (the input the Trainer would pick: DALI when its plugin
imports, else tf.data; the profile's batch and augmentation), or takes --train_examples_per_s.
Everything runs in this one process, one thing at a time; host facts are printed first (the
figures depend on AVX-512 / bf16 support and on other jobs sharing the cores).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from common import storage  # noqa: E402
from pipeline.configs import PROFILES  # noqa: E402
from pipeline.settings_flags import add_settings_flags  # noqa: E402


def host_facts() -> str:
    from trainer.precision import cpu_flags
    flags = cpu_flags()
    listed = ", ".join(f"{f} {'yes' if f in flags else 'no'}"
                       for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"host: {platform.node()}, nproc {len(os.sched_getaffinity(0))} "
            f"(os.cpu_count {os.cpu_count()}); /proc/cpuinfo: {listed}; load average {load}")


# --- the model, built and exported by the project's own code ------------------------------------

def raw_examples(data_dir: str, slice_config) -> List[bytes]:
    """The ExampleGen's serialized examples (selected slices) of every case in a LiTS folder."""
    from preprocessing.case_conversion import case_examples
    from preprocessing.case_discovery import discover_lits_cases
    cases, _ = discover_lits_cases(data_dir)
    return [e for files in cases for e in case_examples(files, slice_config, "train")[0]]


def run_transform(examples: List[bytes], custom_config: Dict, work: str):
    """tf.Transform over the examples, as the Transform component runs it: (transform graph
    dir, transformed examples dir with Split-train/ gzip TFRecords)."""
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from preprocessing.transform import preprocessing_fn
    from schema import SCHEMA_PATH
    schema = text_format.Parse(storage.read_text(SCHEMA_PATH), schema_pb2.Schema())
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    parsed = tf.io.parse_example(examples, spec)
    instances = [{k: v[i].numpy() for k, v in parsed.items()} for i in range(len(examples))]
    graph_dir = os.path.join(work, "transform_graph")
    out_dir = os.path.join(work, "transformed_examples", "Split-train")
    with tft_beam.Context(temp_dir=os.path.join(work, "tft_tmp"), force_tf_compat_v1=False):
        with beam.Pipeline(argv=["--runner=FnApiRunner",
                                 "--direct_running_mode=in_memory"]) as p:
            data = p | beam.Create(instances, reshuffle=False)
            (transformed, metadata), transform_fn = (
                (data, dataset_metadata.DatasetMetadata(schema))
                | tft_beam.AnalyzeAndTransformDataset(
                    lambda inputs: preprocessing_fn(inputs, custom_config),
                    output_record_batches=False))
            _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
            _ = (transformed | beam.Map(tft.coders.ExampleProtoCoder(metadata.schema).encode)
                 | beam.io.WriteToTFRecord(os.path.join(out_dir, "data"), file_name_suffix=".gz",
                                           compression_type=beam.io.filesystem
                                           .CompressionTypes.GZIP))
    # The raw schema beside the graph, as the Transform component writes it (the export's
    # serving signature parses raw examples by it).
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                               os.path.join(graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return graph_dir, os.path.dirname(out_dir)


def export_untrained(config, graph_dir: str, export_dir: str, precision: str) -> str:
    """The profile's UNet 3+ (untrained), exported with the Transform graph like run_fn does."""
    import keras
    import tensorflow_transform as tft

    from trainer.export import export_serving_model
    from trainer.run import build_and_compile, num_classes_from_spec
    keras.mixed_precision.set_global_policy(
        "float32" if precision == "fp32" else precision)
    output = tft.TFTransformOutput(graph_dir)
    slices = config.example_gen.slices
    model = build_and_compile(config.model, config.train,
                              (slices.size[0], slices.size[1], slices.channels),
                              jit_compile=False, total_steps=1,
                              num_classes=num_classes_from_spec(
                                  output.transformed_feature_spec()))
    export_serving_model(model, output, export_dir, slices.to_dict())
    keras.mixed_precision.set_global_policy("float32")
    return export_dir


def build_model(profile: str, args, train_data: str, work: str, precision: str):
    """(the profile's settings with args' --config files and --set overrides, exported model dir,
    transform graph dir, transformed examples dir)."""
    from pipeline.component_configs import transform_custom_config
    from pipeline.configs import make_config
    config = make_config(profile, config_files=args.config, overrides=args.overrides)
    slices = config.example_gen.slices
    custom = transform_custom_config(config)
    start = time.perf_counter()
    if storage.exists(work):   # a rerun in the same --work: the model is rebuilt, data kept
        storage.remove_tree(work)
    examples = raw_examples(train_data, slices)
    graph_dir, examples_dir = run_transform(examples, custom, work)
    model_dir = export_untrained(config, graph_dir, os.path.join(work, "model"), precision)
    print(f"[{profile}] model: {slices.size[0]}x{slices.size[1]}x{slices.channels}, filters "
          f"{tuple(config.model.filters)}, skip {config.model.skip_filters}, {precision}; "
          f"Transform over {len(examples)} examples + export in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return config, model_dir, graph_dir, examples_dir


# --- (a) the serving signature alone --------------------------------------------------------------

def predict_requests(volume_path: str, slice_config, batch_size: int) -> List[List[bytes]]:
    """The batches of serialized examples predict.py sends for this volume (recorded)."""
    from inference.cases import load_input
    from inference.segmenter import predict_probabilities
    batches = []

    def record(batch):
        batches.append(list(batch))
        return np.zeros((len(batch), *slice_config.size, 1), np.float32)
    predict_probabilities(record, load_input(volume_path), slice_config, batch_size)
    return batches


def serving_rate(model_dir: str, requests: List[List[bytes]], batches: int,
                 warmup: int = 2) -> float:
    """Slices/s of serving_default over `batches` full batches (cycling the requests)."""
    from inference.model import load_model
    serve, _ = load_model(model_dir)
    full = [b for b in requests if len(b) == len(requests[0])]
    for i in range(warmup):
        serve(full[i % len(full)])
    start = time.perf_counter()
    for i in range(batches):
        serve(full[i % len(full)])
    return batches * len(full[0]) / (time.perf_counter() - start)


# --- (b) predict.py end to end ------------------------------------------------------------------

def end_to_end(model_dir: str, folder: str, out: str) -> Dict[str, float]:
    """predict.main over the folder: wall seconds (model load included), the per-volume seconds
    of predictions.csv (read + segment + write), slices."""
    import nibabel as nib

    import predict
    from inference.writers import PREDICTIONS_CSV
    start = time.perf_counter()
    code = predict.main(["--model", model_dir, "--input", folder, "--output", out])
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"predict.py failed on {folder} ({code})")
    rows = list(csv.DictReader(io.StringIO(storage.read_text(storage.join(out,
                                                                          PREDICTIONS_CSV)))))
    slices = sum(nib.load(os.path.join(folder, f"{r['case']}.nii.gz")).shape[2] for r in rows)
    return {"wall": wall, "volumes": len(rows), "slices": slices,
            "seconds": sum(float(r["seconds"]) for r in rows),
            "each": [float(r["seconds"]) for r in rows]}


# --- (c) the Trainer's input --------------------------------------------------------------------

def training_input_rate(config, graph_dir: str, examples_dir: str, steps: int) -> Dict:
    """bench/input_throughput.py's measure() on the Transform output, with the input the
    Trainer would pick and the profile's batch and augmentation."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import input_throughput

    from trainer.inputs import TEMP_CACHE_DIR, resolve_input
    kind, why = resolve_input(config.train.input)
    augment = config.train.augment.enabled
    args = argparse.Namespace(transform_graph=graph_dir, examples=examples_dir, input=kind,
                              augment="on" if augment else "off", augment_config="{}",
                              batch=config.train.batch_size, steps=steps, warmup=5,
                              cache_dir=TEMP_CACHE_DIR)
    result = input_throughput.measure(args)
    return {"images_per_s": result["images_per_s"], "kind": kind, "why": why,
            "augment": augment, "batch": config.train.batch_size}


# --- the run --------------------------------------------------------------------------------------

def make_data(work: str, args) -> Dict[str, str]:
    from preprocessing.synthetic_ct import write_dataset
    start = time.perf_counter()
    folders = {"train": os.path.join(work, "train_data"), "volumes": os.path.join(work, "ct")}
    write_dataset(folders["train"], num_cases=2, in_plane=128, progress=False)
    write_dataset(folders["volumes"], num_cases=args.volumes, in_plane=args.in_plane,
                  slices_range=tuple(args.slices), progress=False)
    print(f"data: 2 training cases 128x128, {args.volumes} volumes {args.in_plane}x"
          f"{args.in_plane} with {args.slices[0]}-{args.slices[1]} slices, made in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return folders


def paper_serving(args, folders, work: str) -> None:
    config, model_dir, _, _ = build_model("paper", args, folders["train"],
                                          os.path.join(work, "paper"), args.precision)
    requests = predict_requests(os.path.join(folders["volumes"], "volume-0.nii.gz"),
                                config.example_gen.slices, args.paper_batch)
    rate = serving_rate(model_dir, requests, args.paper_batches, warmup=1)
    print(f"(a) serving_default, paper widths 320x320, batch {args.paper_batch}: "
          f"{rate:.2f} slices/s ({args.paper_batches} batches)", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo", choices=PROFILES,
                   help="slice size and widths (pipeline/configs.py); --set changes any of it")
    p.add_argument("--precision", default="fp32", choices=("fp32", "mixed_bfloat16"))
    p.add_argument("--batch", type=int, default=16, help="serving batch (predict.py's default)")
    p.add_argument("--serve_batches", type=int, default=20)
    p.add_argument("--volumes", type=int, default=3)
    p.add_argument("--in_plane", type=int, default=512)
    p.add_argument("--slices", type=int, nargs=2, default=(40, 60))
    p.add_argument("--train_steps", type=int, default=100, help="input batches to time")
    p.add_argument("--train_examples_per_s", type=float,
                   help="the Trainer's input rate, measured elsewhere (skips measuring it)")
    p.add_argument("--paper", action="store_true", help="also paper widths at 320x320")
    p.add_argument("--paper_batch", type=int, default=16)
    p.add_argument("--paper_batches", type=int, default=2)
    p.add_argument("--work", help="working folder (default: a new temp dir)")
    add_settings_flags(p, shortcuts=(), from_env=False, print_config=False)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    print(host_facts(), flush=True)
    work = args.work or tempfile.mkdtemp(prefix="inference_bench_")
    folders = make_data(work, args)
    config, model_dir, graph_dir, examples_dir = build_model(
        args.profile, args, folders["train"], os.path.join(work, args.profile), args.precision)
    slices = config.example_gen.slices
    requests = predict_requests(os.path.join(folders["volumes"], "volume-0.nii.gz"), slices,
                                args.batch)
    serve = serving_rate(model_dir, requests, args.serve_batches)
    print(f"(a) serving_default, {args.profile} {slices.size[0]}x{slices.size[1]}, batch "
          f"{args.batch}: {serve:.1f} slices/s ({args.serve_batches} batches)", flush=True)
    e2e = end_to_end(model_dir, folders["volumes"], os.path.join(work, "masks"))
    per_min = e2e["volumes"] / e2e["seconds"] * 60
    print(f"(b) predict.py folder, {e2e['volumes']} volumes {args.in_plane}x{args.in_plane} "
          f"({e2e['slices']} slices): {per_min:.1f} volumes/min, "
          f"{e2e['slices'] / e2e['seconds']:.1f} slices/s (read + segment + write, "
          f"{e2e['seconds']:.1f} s); {e2e['wall']:.1f} s wall with the model load; the "
          f"serving signature's share ~{e2e['slices'] / serve / e2e['seconds']:.0%}; per volume "
          f"{', '.join(f'{x:.1f}' for x in e2e['each'])} s (the first traces the signature)",
          flush=True)
    if args.train_examples_per_s:
        train = {"images_per_s": args.train_examples_per_s, "source": "--train_examples_per_s"}
    else:
        train = training_input_rate(config, graph_dir, examples_dir, args.train_steps)
        train["source"] = (f"{train['kind']} ({train['why']}), batch {train['batch']}, "
                           f"augmentation {'on' if train['augment'] else 'off'}")
    print(f"(c) Trainer input {train['images_per_s']:.1f} examples/s [{train['source']}]; "
          f"serving / training input = {serve / train['images_per_s']:.3f}", flush=True)
    if args.paper:
        paper_serving(args, folders, work)
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
