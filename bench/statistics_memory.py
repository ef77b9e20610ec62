"""Peak memory and wall time of the pipeline's statistics step on large image examples.

Runs TFX's own StatisticsGen executor (the same Beam graph the pipeline runs: TFXIO read of the
gzip TFRecords -> tfdv.GenerateStatistics with the imported schema/schema.pbtxt -> stats file),
on the pipeline's Beam args (DirectRunner in_memory, one worker), once per example count, each
in its own subprocess so that the peak RSS is that run's alone. The examples are in the
ExampleGen format (preprocessing/examples.py: image = raw int16 bytes [H, W, K], label = raw
uint8 bytes) at the paper's 320x320x3 by default.

As a contrast, the smallest count is also run with the image stored as a float_list of H*W*K
values per example, which is what statistics over individual pixels would face.

    .venv/bin/python bench/statistics_memory.py                    # 200, 800, 3200 examples
    .venv/bin/python bench/statistics_memory.py --counts 100 400 --size 128 --no_float

Peak RSS is the child's VmHWM (and the kernel's ru_maxrss for it, from wait4); "base" is its RSS
after the imports, before the statistics run. A child whose RSS passes --max_rss_gb is killed and
reported as such, so the bench cannot take the machine down.

What it showed (TFDV 1.16.1, 2-core machine, 320x320x3): the statistics themselves are small;
the peak is set by the TFXIO read batches, which Beam's BatchElements sizes adaptively by timing
(1..1000 examples, regardless of their size), so it varies run to run and reached 1000 examples
(684 MB of records, ~3.3 GB RSS above base) at 3200 examples in one run and 110 at 6400 in another.
The largest count is also run with tfx_bsl's `--tfxio_use_byte_size_batching` (~20 MiB batches),
which keeps the peak flat.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

BEAM_ARGS = ["--runner=FnApiRunner", "--direct_running_mode=in_memory",
             "--direct_num_workers=1"]
PER_SHARD = 200
POOL = 16          # distinct slices; examples cycle through them


# --- data -----------------------------------------------------------------------------------

def _smooth_field(rng, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] of shape [size, size] (bilinear upsampling of noise)."""
    coarse = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def slice_pool(size: int, channels: int, seed: int = 0):
    """POOL (image int16 [size, size, channels] in -200..250 HU, label uint8 [size, size])
    pairs that look roughly like windowed CT: smooth tissue, noise, a blob of labels."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(POOL):
        base = _smooth_field(rng, size, 12)
        image = np.stack([base + 0.05 * _smooth_field(rng, size, 24) for _ in range(channels)],
                         axis=-1)
        image = -200 + 450 * image + rng.normal(0, 15, image.shape)
        image = np.clip(np.round(image), -200, 250).astype(np.int16)
        organ = _smooth_field(rng, size, 4)
        label = (organ > 0.6).astype(np.uint8) + (organ > 0.8).astype(np.uint8)
        pool.append((image, label))
    return pool


def _float_example(case_id: str, image: np.ndarray, label: np.ndarray, index: int) -> bytes:
    """The same example with the image as a float_list of H*W*K values."""
    from preprocessing import features as F
    import tensorflow as tf
    from preprocessing.examples import example_bytes
    example = tf.train.Example.FromString(
        example_bytes(case_id, (0.8, 0.8, 2.0), image, index, 1000, label))
    feature = example.features.feature[F.IMAGE]
    feature.Clear()
    feature.float_list.value.extend(image.astype(np.float32).ravel())
    return example.SerializeToString()


def write_shards(directory: str, count: int, size: int, channels: int, as_float: bool) -> dict:
    """`count` examples as gzip TFRecord shards of PER_SHARD under directory/Split-train, as
    ExampleGen lays them out. Returns {"serialized_mb", "disk_mb"}."""
    import tensorflow as tf
    from preprocessing.examples import example_bytes
    split_dir = os.path.join(directory, "Split-train")
    os.makedirs(split_dir, exist_ok=True)
    pool = slice_pool(size, channels)
    shards = -(-count // PER_SHARD)
    options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=1)
    serialized = 0
    for s in range(shards):
        path = os.path.join(split_dir, f"data_tfrecord-{s:05d}-of-{shards:05d}.gz")
        with tf.io.TFRecordWriter(path, options) as writer:
            for i in range(s * PER_SHARD, min(count, (s + 1) * PER_SHARD)):
                image, label = pool[i % POOL]
                case_id = f"volume-{i // 100}"
                if as_float:
                    record = _float_example(case_id, image, label, i % 100)
                else:
                    record = example_bytes(case_id, (0.8, 0.8, 2.0), image, i % 100, 1000,
                                           label)
                serialized += len(record)
                writer.write(record)
    disk = sum(os.path.getsize(os.path.join(split_dir, f)) for f in os.listdir(split_dir))
    return {"serialized_mb": serialized / 2**20, "disk_mb": disk / 2**20}


def write_schema(directory: str, size: int, channels: int, as_float: bool) -> str:
    """schema/schema.pbtxt in a folder of its own (the executor reads the only file there);
    for the float variant the image feature is FLOAT with H*W*K values."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from preprocessing import features as F
    from schema import SCHEMA_PATH
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "schema.pbtxt")
    if not as_float:
        shutil.copy(SCHEMA_PATH, path)
        return directory
    with open(SCHEMA_PATH) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    for feature in schema.feature:
        if feature.name == F.IMAGE:
            feature.type = schema_pb2.FLOAT
            feature.shape.dim[0].size = size * size * channels
    with open(path, "w") as f:
        f.write(text_format.MessageToString(schema))
    return directory


# --- one measured run (child process) ---------------------------------------------------------

def _proc_status_kb(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(examples_dir: str, schema_dir: str, output_dir: str, byte_batching: str) -> None:
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from tfx.components.statistics_gen.executor import Executor
    from tfx.types import artifact_utils, standard_artifacts
    from tensorflow_metadata.proto.v0 import statistics_pb2
    if byte_batching == "1":
        # tfx_bsl's switch from Beam's adaptive batch size (1..1000 records per batch, whatever
        # their size) to ~20 MiB batches. Read when the read transform is built, so setting it
        # in the launching process is enough, whatever the runner.
        from absl import flags
        from tfx_bsl.coders import batch_util  # noqa: F401  (defines the flag)
        flags.FLAGS(["statistics_memory", "--tfxio_use_byte_size_batching"], known_only=True)
    base_kb = _proc_status_kb("VmRSS")
    examples = standard_artifacts.Examples()
    examples.uri = examples_dir
    examples.split_names = artifact_utils.encode_split_names(["train"])
    schema = standard_artifacts.Schema()
    schema.uri = schema_dir
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = output_dir
    pipelines = []

    def make_pipeline():   # what the executor would build, kept to read its metrics after
        pipelines.append(beam.Pipeline(argv=BEAM_ARGS))
        return pipelines[-1]

    executor = Executor(Executor.Context(beam_pipeline_args=BEAM_ARGS,
                                         tmp_dir=os.path.join(output_dir, ".tmp"),
                                         make_beam_pipeline_fn=make_pipeline))
    start = time.time()
    executor.Do({"examples": [examples], "schema": [schema]}, {"statistics": [statistics]},
                {"exclude_splits": "[]"})
    seconds = time.time() - start
    with open(os.path.join(output_dir, "Split-train", "FeatureStats.pb"), "rb") as f:
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
    batch = {}
    try:
        query = pipelines[-1].result.metrics().query(MetricsFilter().with_name("batch_size"))
        for d in query["distributions"]:
            if d.key.metric.namespace == "BatchElements":
                batch = {"read_batches": d.committed.count, "read_batch_max": d.committed.max,
                         "read_batch_mean": d.committed.mean}
    except Exception:   # metrics are a nicety; the measurement stands without them
        pass
    print(json.dumps({"base_mb": base_kb / 1024, "hwm_mb": _proc_status_kb("VmHWM") / 1024,
                      "stats_seconds": seconds,
                      "num_examples": int(stats.datasets[0].num_examples), **batch}), flush=True)


def _tree_rss_kb(pid: int) -> int:
    """RSS of a process and its descendants."""
    import psutil
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total // 1024


def measure(examples_dir: str, schema_dir: str, byte_batching: bool, max_rss_gb: float,
            timeout_s: float) -> dict:
    output_dir = tempfile.mkdtemp(prefix="stats_out_")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    log = tempfile.TemporaryFile(mode="w+")
    out = tempfile.TemporaryFile(mode="w+")
    start = time.time()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", examples_dir,
                             schema_dir, output_dir, "1" if byte_batching else "0"], stdout=out, stderr=log, text=True,
                            env=env)
    killed, tree_peak_kb = None, 0
    while True:
        # wait4, not Popen.poll: it hands back this child's own rusage (ru_maxrss).
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        tree_peak_kb = max(tree_peak_kb, _tree_rss_kb(proc.pid))
        if not killed and tree_peak_kb > max_rss_gb * 2**20:
            killed = f"killed at {tree_peak_kb / 2**20:.1f} GB RSS (> --max_rss_gb)"
        elif not killed and time.time() - start > timeout_s:
            killed = f"killed after {timeout_s:.0f} s (> --timeout_s)"
        if killed:
            proc.kill()
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss_kb = usage.ru_maxrss
    wall = time.time() - start
    shutil.rmtree(output_dir, ignore_errors=True)
    result = {"wall_s": wall, "maxrss_mb": maxrss_kb / 1024, "tree_peak_mb": tree_peak_kb / 1024}
    out.seek(0)
    lines = [l for l in out.read().splitlines() if l.startswith("{")]
    if killed or not lines:
        log.seek(0)
        result["error"] = killed or ("child failed:\n" + log.read()[-3000:])
    else:
        result.update(json.loads(lines[-1]))
    return result


# --- main -------------------------------------------------------------------------------------

def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[200, 800, 3200])
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--no_float", action="store_true", help="skip the float_list contrast")
    p.add_argument("--float_count", type=int, default=None,
                   help="examples for the float_list contrast (default: the smallest count)")
    p.add_argument("--no_byte_batching", action="store_true",
                   help="skip the run of the largest count with tfx_bsl's byte-size batching")
    p.add_argument("--max_rss_gb", type=float, default=8.0)
    p.add_argument("--timeout_s", type=float, default=600.0)
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed after")
    args = p.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="stats_bench_")
    counts = sorted(args.counts)
    # (image kind, examples, byte-size batching); runs on the same data are adjacent.
    runs = [("bytes", n, False) for n in counts]
    if not args.no_byte_batching:
        runs.append(("bytes", counts[-1], True))
    if not args.no_float:
        runs.append(("float_list", args.float_count or counts[0], False))
    rows, data = [], {}
    try:
        for i, (kind, count, byte_batching) in enumerate(runs):
            as_float = kind == "float_list"
            data_dir = os.path.join(workdir, f"{kind}_{count}")
            if data_dir not in data:
                t = time.time()
                data[data_dir] = dict(write_shards(data_dir, count, args.size, args.channels,
                                                   as_float), write_s=time.time() - t)
            schema_dir = write_schema(os.path.join(workdir, f"schema_{kind}"), args.size,
                                      args.channels, as_float)
            result = measure(data_dir, schema_dir, byte_batching, args.max_rss_gb,
                             args.timeout_s)
            result.update(kind=kind, examples=count, byte_batching=byte_batching,
                          **data[data_dir])
            rows.append(result)
            print(json.dumps(result), flush=True)
            if all(os.path.join(workdir, f"{k}_{n}") != data_dir for k, n, _ in runs[i + 1:]):
                shutil.rmtree(data_dir, ignore_errors=True)   # one data set on disk at a time
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nTFX StatisticsGen executor (TFDV {_tfdv_version()}), {args.size}x{args.size}x"
          f"{args.channels} examples, Beam {' '.join(BEAM_ARGS)}")
    header = (f"{'image as':<11}{'batching':<10}{'examples':>9}{'data MB':>9}{'disk MB':>9}"
              f"{'base MB':>9}{'peak RSS MB':>12}{'peak-base':>10}{'max read batch':>18}"
              f"{'stats s':>9}{'child s':>9}  note")
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = max(r.get("hwm_mb", 0.0), r["maxrss_mb"])
        base = r.get("base_mb", float("nan"))
        note = r.get("error", "").splitlines()[0] if "error" in r else ""
        print(f"{r['kind']:<11}{'20 MiB' if r['byte_batching'] else 'adaptive':<10}"
              f"{r['examples']:>9}{r['serialized_mb']:>9.0f}{r['disk_mb']:>9.0f}"
              f"{base:>9.0f}{peak:>12.0f}{peak - base:>10.0f}{_batch_text(r):>18}"
              f"{r.get('stats_seconds', float('nan')):>9.1f}{r['wall_s']:>9.1f}  {note}")
    print("(data MB: serialized tf.Examples; disk MB: gzip shards; base: child RSS after imports;"
          "\n max read batch: largest TFXIO read batch, from Beam's BatchElements metrics)")
    adaptive = [r for r in rows if r["kind"] == "bytes" and not r["byte_batching"]
                and "error" not in r]
    for a, b in zip(adaptive, adaptive[1:]):
        grow = (b["hwm_mb"] - b["base_mb"]) - (a["hwm_mb"] - a["base_mb"])
        data_grow = b["serialized_mb"] - a["serialized_mb"]
        verdict = "grows" if grow > max(50.0, 0.25 * data_grow) else "flat"
        print(f"Peak RSS above base, {a['examples']} -> {b['examples']} examples: {grow:+.0f} MB "
              f"for {data_grow:+.0f} MB more data ({verdict}); largest read batch "
              f"{a.get('read_batch_max', '?')} -> {b.get('read_batch_max', '?')} examples")
    print("Beam's adaptive batching sizes the read batches by timing (1..1000 examples, whatever "
          "their bytes),\nso the peak follows the largest batch it happened to reach, not the "
          "count as such;\ntfx_bsl's byte-size batching (--tfxio_use_byte_size_batching) caps "
          "batches at ~20 MiB.")


def _batch_text(r: dict) -> str:
    """The largest read batch in examples and MB. BatchElements reports examples when it tunes
    the batch size, bytes when it batches by byte size."""
    if "read_batch_max" not in r:
        return "?"
    example_mb = r["serialized_mb"] / r["examples"]
    if r["byte_batching"]:
        mb = r["read_batch_max"] / 2**20
        return f"~{mb / example_mb:.0f} ex, {mb:.0f} MB"
    n = r["read_batch_max"]
    return f"{n} ex, {n * example_mb:.0f} MB"


def _tfdv_version() -> str:
    try:
        from importlib.metadata import version
        return version("tensorflow-data-validation")
    except Exception:   # pragma: no cover
        return "?"


if __name__ == "__main__":
    main()
