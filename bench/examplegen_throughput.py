"""Throughput of the NIfTI -> tf.Example conversion (the ExampleGen's Beam transform, the same code
the pipeline and preprocessing/convert.py run), next to the read floor measured in the same run.

    .venv/bin/python bench/examplegen_throughput.py [--num_volumes 24 --size 512 --out_size 320
        --slices 60,100 --beam_mode in_memory|multi_processing --workers 2
        --selection liver_margin|all --compression_level 1 --compress_threads 2
        --data_dir DIR (keep the volumes between runs)]

Steps: writes N synthetic volumes (preprocessing.synthetic_ct), measures the read floor (nibabel
load + gunzip of every volume and segmentation, serially, nothing else), runs the same stages
serially on a few volumes for the per-stage breakdown (read, canonicalize, resample, serialize,
compress), runs the conversion on Beam (wall and CPU time, peak RSS of all its processes, and its
stage counters), and times TFX WriteSplit's compression (zlib level 6) on a sample of the examples
written. Slices/s counts input slices (every slice of every volume read); examples/s counts the
examples written (the selected slices). Prints, last, slices/s next to the read floor.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import apache_beam as beam  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from preprocessing import conversion_stages  # noqa: E402
from preprocessing.beam_convert import add_conversion  # noqa: E402
from preprocessing.case_conversion import case_examples  # noqa: E402
from preprocessing.case_discovery import discover_lits_cases  # noqa: E402
from preprocessing.conversion_plan import ConversionPlan  # noqa: E402
from preprocessing.conversion_settings import (DEFAULT_COMPRESS_THREADS,  # noqa: E402
                                               DEFAULT_COMPRESSION_LEVEL)
from preprocessing.shard_writer import compress_record, remove_temp_dir  # noqa: E402
from preprocessing.nifti import _load_nifti  # noqa: E402
from preprocessing.slices import SliceConfig  # noqa: E402
from preprocessing.splits import assign_splits  # noqa: E402


class PeakMemory:
    """Peak RSS of this process plus its children (Beam workers), sampled every 0.1 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        try:
            import psutil
            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self._proc] + self._proc.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except Exception:   # a worker that just exited
                pass
            self._stop.wait(0.1)

    def __enter__(self):
        if self._proc is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._thread.join()


def make_volumes(data_dir: str, num: int, size: int, slices) -> None:
    from preprocessing.synthetic_ct import write_dataset
    start = time.time()
    write_dataset(data_dir, num, in_plane=size, slices_range=slices, progress=False)
    print(f"synthetic volumes ready in {data_dir} ({time.time() - start:.0f} s)")


def read_floor(cases) -> dict:
    """nibabel read + gunzip of every file (volume and segmentation), serially; and the raw
    floor: the file read and one zlib inflate of the whole stream."""
    slices = nib_s = raw_s = 0.0
    for c in cases:
        for path in (c.image_path, c.label_path):
            t = time.perf_counter()
            img = nib.load(path)
            np.asanyarray(img.dataobj)
            nib_s += time.perf_counter() - t
            t = time.perf_counter()
            _load_nifti(path)   # the converter's own bounded read
            raw_s += time.perf_counter() - t
        img = nib.load(c.image_path)   # slices along the canonical z axis
        slices += img.shape[int(np.flatnonzero(nib.io_orientation(img.affine)[:, 0] == 2)[0])]
    return {"slices": slices, "nibabel_s": nib_s, "raw_s": raw_s}


def run_conversion(cases, config, out_dir, args) -> dict:
    split_of = assign_splits([c.case_id for c in cases], 0.2)
    plan = ConversionPlan([(c, split_of[c.case_id]) for c in cases], [])
    beam_args = ["--runner=FnApiRunner", f"--direct_running_mode={args.beam_mode}"]
    if args.beam_mode == "multi_processing":
        beam_args.append(f"--direct_num_workers={args.workers}")
    dirs = {s: os.path.join(out_dir, s) for s in ("train", "eval")}
    temp = os.path.join(out_dir, "tmp")
    with PeakMemory() as memory:
        cpu0 = os.times()
        start = time.perf_counter()
        p = beam.Pipeline(options=PipelineOptions(beam_args))
        add_conversion(p, plan, config, dirs, out_dir, temp,
                       compression_level=args.compression_level,
                       compress_threads=args.compress_threads,
                       prefetch=not args.no_prefetch)
        result = p.run()
        result.wait_until_finish()
        wall = time.perf_counter() - start
        cpu1 = os.times()
    cpu = sum(cpu1[i] - cpu0[i] for i in range(4))   # user + system, this process + children
    remove_temp_dir(temp)
    counters = {}   # summed over steps (one spill step per split)
    for c in result.metrics().query(
            MetricsFilter().with_namespace(conversion_stages.COUNTER_NAMESPACE))["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    files = glob.glob(os.path.join(out_dir, "*", "data_tfrecord-*.gz"))
    return {"wall_s": wall, "cpu_s": cpu, "counters": counters, "peak_rss": memory.peak,
            "files": files,
            "bytes": sum(os.path.getsize(f) for f in files)}


def serial_breakdown(cases, config, level: int) -> dict:
    """The same stages run serially in this process (one thread, no Beam): seconds per stage
    and the slices and examples done. With nothing running concurrently, wall = CPU here."""
    timings, n_in, n_out = {}, 0, 0
    for c in cases:
        examples, summary = case_examples(c, config, "train", timings)
        for data in examples:
            t = time.perf_counter()
            compress_record(data, level)
            timings["compress"] = timings.get("compress", 0.0) + time.perf_counter() - t
        n_in, n_out = n_in + summary["num_slices"], n_out + summary["slices_written"]
    return {"timings": timings, "slices": n_in, "examples": n_out}


def level6_cost(files, sample: int = 40) -> dict:
    """Compression of a sample of written examples at level 1 (ours) and 6 (TFX WriteSplit's:
    Beam's gzip uses zlib.Z_DEFAULT_COMPRESSION)."""
    import tensorflow as tf
    records = []
    for r in tf.data.TFRecordDataset(sorted(files), "GZIP").take(sample):
        records.append(r.numpy())
    out = {"n": len(records), "raw": sum(map(len, records))}
    for level in (1, 6):
        t = time.perf_counter()
        size = sum(len(zlib.compress(r, level)) for r in records)
        out[level] = ((time.perf_counter() - t) / max(1, len(records)), size / max(1, out["raw"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_volumes", type=int, default=24)
    p.add_argument("--size", type=int, default=512, help="in-plane voxels of the volumes")
    p.add_argument("--out_size", type=int, default=320, help="example H = W")
    p.add_argument("--slices", default="60,100", help="slices per volume: N or MIN,MAX")
    p.add_argument("--beam_mode", choices=("in_memory", "multi_processing"),
                   default="in_memory")
    p.add_argument("--workers", type=int, default=2, help="multi_processing workers")
    p.add_argument("--selection", choices=("liver_margin", "all"), default="liver_margin")
    p.add_argument("--compression_level", type=int, default=DEFAULT_COMPRESSION_LEVEL)
    p.add_argument("--compress_threads", type=int, default=DEFAULT_COMPRESS_THREADS)
    p.add_argument("--serial_volumes", type=int, default=4,
                   help="volumes for the serial per-stage breakdown")
    p.add_argument("--no_prefetch", action="store_true",
                   help="do not read the next case while converting one")
    p.add_argument("--data_dir", help="keep the synthetic volumes here (default: a temp dir)")
    args = p.parse_args(argv)
    lo, _, hi = args.slices.partition(",")
    slices = (int(lo), int(hi or lo))

    tmp = tempfile.mkdtemp(prefix="examplegen_bench_")
    try:
        data_dir = args.data_dir or os.path.join(tmp, "data")
        make_volumes(data_dir, args.num_volumes, args.size, slices)
        cases, errors = discover_lits_cases(data_dir)
        cases = cases[:args.num_volumes]
        assert cases and not errors, errors
        config = SliceConfig(size=(args.out_size, args.out_size), context=1,
                             selection=args.selection)

        floor = read_floor(cases)
        serial = serial_breakdown(cases[:args.serial_volumes], config, args.compression_level)
        run = run_conversion(cases, config, os.path.join(tmp, "out"), args)
        cost = level6_cost(run["files"])
        c = run["counters"]
        n_in, n_out = c.get("input_slices", 0), c.get("slices_written", 0)
        assert n_in == floor["slices"], (n_in, floor["slices"])

        print(f"\n{len(cases)} volumes {args.size}x{args.size}, {n_in} slices -> {n_out} "
              f"examples {args.out_size}x{args.out_size}x{config.channels} "
              f"(selection {args.selection}); Beam {args.beam_mode}"
              + (f", {args.workers} workers" if args.beam_mode == "multi_processing" else "")
              + f", gzip level {args.compression_level}, {args.compress_threads} compress "
                f"threads/worker, prefetch {'off' if args.no_prefetch else 'on'}; "
                f"{os.cpu_count()} CPUs")
        print(f"wall {run['wall_s']:.1f} s, CPU {run['cpu_s']:.1f} s "
              f"({run['cpu_s'] / run['wall_s']:.2f} cores busy); peak RSS (all processes) "
              f"{run['peak_rss'] / 2**20:.0f} MiB; output {run['bytes'] / 2**20:.1f} MiB")
        labels = {"compress": "compress (gzip)", "write": "write (temp)",
                  "merge": "merge (shuffle+write)", "serialize": "serialize (tf.Example)",
                  "resample": "resample+window"}
        st, sn = serial["timings"], serial["slices"]
        s_total = sum(st.values())
        print(f"where the time goes, serially on {min(len(cases), args.serial_volumes)} "
              f"volumes ({sn} slices -> {serial['examples']} examples, one thread, no Beam): "
              f"{1e3 * s_total / sn:.2f} ms per input slice = {sn / s_total:.0f} slices/s "
              f"on one core")
        for s in conversion_stages.STAGES[:5]:
            v = st.get(s, 0.0)
            print(f"  {labels.get(s, s):24s} {1e3 * v / sn:6.2f} ms/slice "
                  f"{100 * v / max(s_total, 1e-9):5.1f} %")
        print("in the Beam run (seconds inside each stage summed over threads/workers; more "
              "than CPU when threads wait for a core):")
        stages = [(s, c.get(f"{s}_us", 0) / 1e6) for s in conversion_stages.STAGES]
        total = sum(v for _, v in stages)
        print("  " + ", ".join(f"{labels.get(s, s)} {v:.1f} s" for s, v in stages)
              + f"; total {total:.1f} s")
        print(f"gzip of {cost['n']} written examples: level 1 {1e3 * cost[1][0]:.2f} ms/example "
              f"(ratio {cost[1][1]:.3f}), level 6 (TFX WriteSplit) {1e3 * cost[6][0]:.2f} "
              f"ms/example (ratio {cost[6][1]:.3f}): level 6 would add "
              f"{(cost[6][0] - cost[1][0]) * n_out:.1f} CPU s here")
        nib_rate = floor["slices"] / floor["nibabel_s"]
        raw_rate = floor["slices"] / floor["raw_s"]
        rate = n_in / run["wall_s"]
        print(f"read floor, serial: nibabel read+gunzip {nib_rate:.0f} slices/s; "
              f"raw file read+zlib inflate {raw_rate:.0f} slices/s")
        print(f"conversion: {rate:.0f} slices/s ({n_out / run['wall_s']:.0f} examples/s) | "
              f"read floor (nibabel): {nib_rate:.0f} slices/s | ratio {rate / nib_rate:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
