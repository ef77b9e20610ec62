"""How the NIfTI -> examples conversion (python -m preprocessing.convert, the ExampleGen's Beam
transform) scales with Beam workers: 1, 2 and 4 workers on Beam's DaskRunner (a Dask LocalCluster
of N single-threaded worker processes) and on the FnApiRunner's multi-processing mode
(--direct_running_mode=multi_processing --direct_num_workers=N), over the same 512x512 synthetic
volumes, generated once into a cache folder.

    .venv/bin/python bench/scaling.py [--num_volumes 8 --slices 36,44 --workers 1,2,4
        --runners dask,multi_processing --repeats 2 --cache_dir outputs/bench_scaling]

Prints, per runner and worker count, the conversion's wall time (best of --repeats), input
slices/s (every slice of every volume read), the efficiency against one worker of the same
runner (rate_N / (N x rate_1)), the CPU seconds all its processes spent (this one, the Dask
workers, the Beam worker processes) and slices per CPU-second, and the host's load average over
the runs (other jobs on the host slow the wall rate; the CPU cost per slice is what they change
least); then the host (cores, CPU model, avx512_bf16 present or not) and a projection to the LiTS
training set at the one-worker rate times N workers and at the CPU cost per slice on N cores.
Each run is checked (every case converted, none lost) and the shards of all runs must be
byte-identical.
The Dask clusters are started (and their workers made to import the project) before the timed
runs, as a long-lived cluster would be; the multi-processing runner starts its workers inside
each run, so its times include that start.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from preprocessing.conversion_settings import DASK_RUNNER  # noqa: E402
from preprocessing.convert import main as convert_main  # noqa: E402

# LiTS training set: 131 CT volumes at 512x512, 58,638 axial slices in all (about 448 per
# volume; from 42 to 987), the figure the projection uses.
LITS_VOLUMES, LITS_SLICES = 131, 58_638


def host_facts() -> Dict[str, object]:
    flags, model = set(), platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    return {"cores": len(os.sched_getaffinity(0)), "cpu": model,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512f": "avx512f" in flags}


class ProcessTreeCpu:
    """CPU seconds (user + system) of this process and its descendants over a `with` block: the
    live ones through psutil, those that exited (and were waited for) through os.times."""

    def __enter__(self):
        self._start, self._waited = self._live(), self._waited_children()
        return self

    def __exit__(self, *exc):
        end = self._live()
        self.seconds = (sum(t - self._start.get(pid, 0.0) for pid, t in end.items())
                        + self._waited_children() - self._waited)

    @staticmethod
    def _waited_children() -> float:
        t = os.times()
        return t.children_user + t.children_system

    @staticmethod
    def _live() -> Dict[int, float]:
        import psutil
        me = psutil.Process()
        times = {}
        for proc in [me] + me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cpu = proc.cpu_times()
                times[proc.pid] = cpu.user + cpu.system
        return times


def make_volumes(cache_dir: str, num: int, slices) -> str:
    """The synthetic volumes (generated on first use; write_dataset keeps matching ones)."""
    from preprocessing.synthetic_ct import write_dataset
    data = os.path.join(cache_dir, f"volumes_n{num}_s512_{slices[0]}-{slices[1]}")
    start = time.time()
    write_dataset(data, num, in_plane=512, slices_range=tuple(slices), progress=False)
    print(f"volumes: {num} x 512x512, {slices[0]}-{slices[1]} slices, in {data} "
          f"(ready in {time.time() - start:.0f} s)")
    return data


@contextlib.contextmanager
def dask_cluster(workers: int):
    """A LocalCluster of `workers` single-threaded processes, its workers warmed up (the project
    and Beam imported) so that the timed runs do not pay for their start."""
    import distributed
    logging.getLogger("distributed").setLevel(logging.WARNING)   # set to INFO on import
    start = time.perf_counter()
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                  silence_logs=logging.WARNING
                                  ) as cluster, distributed.Client(cluster) as client:
        client.run(exec, "import preprocessing.beam_convert")
        print(f"  dask cluster of {workers}: started and warmed in "
              f"{time.perf_counter() - start:.1f} s")
        yield cluster.scheduler_address


def beam_args(runner: str, workers: int, address: Optional[str]) -> List[str]:
    if runner == "dask":
        return [f"--runner={DASK_RUNNER}", f"--dask_client_address={address}"]
    return ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}"]


def shards_digest(out: str) -> str:
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(out, "*", "data-*.tfrecord.gz"))):
        with open(path, "rb") as f:
            h.update(os.path.relpath(path, out).encode() + f.read())
    return h.hexdigest()[:16]


def timed_conversion(data: str, args: List[str], work_dir: str) -> Dict[str, object]:
    """One converter run (the CLI, in this process): wall seconds, input slices, shard digest."""
    out = tempfile.mkdtemp(dir=work_dir)
    start = time.perf_counter()
    with ProcessTreeCpu() as cpu:
        code = convert_main(["--data_root", data, "--output", out, "--eval_fraction", "0.25",
                             *[f"--beam_arg={a}" for a in args]])
    wall = time.perf_counter() - start
    with open(os.path.join(out, "conversion_summary.json")) as f:
        summary = json.load(f)
    if code != 0 or summary["cases_converted"] != summary["input_cases"]:
        raise RuntimeError(f"conversion failed or lost cases (exit {code}): {summary}")
    result = {"wall_s": wall, "cpu_s": cpu.seconds, "slices": summary["input_slices"],
              "digest": shards_digest(out)}
    shutil.rmtree(out)
    return result


def measure(runner: str, workers: int, data: str, repeats: int, work_dir: str
            ) -> Dict[str, object]:
    with (dask_cluster(workers) if runner == "dask" else contextlib.nullcontext()) as address:
        load = os.getloadavg()[0]
        runs = [timed_conversion(data, beam_args(runner, workers, address), work_dir)
                for _ in range(repeats)]
        load = (load + os.getloadavg()[0]) / 2
    best = min(runs, key=lambda r: r["wall_s"])
    walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
    print(f"  {runner} x{workers}: {walls} s -> best {best['slices'] / best['wall_s']:.1f} "
          f"input slices/s (load average {load:.1f})")
    return {"runner": runner, "workers": workers, "wall_s": best["wall_s"],
            "slices": best["slices"], "rate": best["slices"] / best["wall_s"],
            "cpu_s": best["cpu_s"], "load": load, "digests": {r["digest"] for r in runs}}


def report(results: List[Dict[str, object]], host: Dict[str, object]) -> None:
    print("\nrunner            workers  wall s  slices/s  efficiency  CPU s  slices/CPU-s  load")
    one = {r["runner"]: r for r in results if r["workers"] == 1}
    for r in results:
        base = one.get(r["runner"])
        eff = f"{r['rate'] / (r['workers'] * base['rate']):.2f}" if base else "-"
        print(f"{r['runner']:<17} {r['workers']:>7} {r['wall_s']:>7.1f} {r['rate']:>9.1f} "
              f"{eff:>11} {r['cpu_s']:>6.1f} {r['slices'] / r['cpu_s']:>13.1f} {r['load']:>5.1f}")
    digests = set().union(*(r["digests"] for r in results))
    print(f"shards identical across all runs: {'yes' if len(digests) == 1 else 'NO'} "
          f"({', '.join(sorted(digests))})")
    print(f"host: {host['cores']} cores, {host['cpu']}; avx512_bf16 "
          f"{'present' if host['avx512_bf16'] else 'absent'}, avx512f "
          f"{'present' if host['avx512f'] else 'absent'}, amx_bf16 "
          f"{'present' if host['amx_bf16'] else 'absent'}")
    per_volume = LITS_SLICES / LITS_VOLUMES
    print(f"\nLiTS projection: {LITS_VOLUMES} volumes x ~{per_volume:.0f} slices = "
          f"{LITS_SLICES} input slices at 512x512, at the one-worker rate times N (one core "
          "per worker, perfect scaling):")
    for runner, r in one.items():
        for label, rate in ((f"{r['rate']:.1f} slices/s per worker", r["rate"]),
                            (f"{r['slices'] / r['cpu_s']:.1f} slices per CPU-second",
                             r["slices"] / r["cpu_s"])):
            hours = ", ".join(f"{n}: {LITS_SLICES / (rate * n) / 3600:.2f} h"
                              for n in (1, 2, 4, 8, 32))
            print(f"  {runner}, {label}, N workers/cores -> {hours}")
    for r in results:
        print(f"  measured here, {r['runner']} x{r['workers']}: "
              f"{LITS_SLICES / r['rate'] / 3600:.2f} h")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_volumes", type=int, default=8)
    p.add_argument("--slices", default="36,44", help="min,max slices per volume")
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--runners", default="dask,multi_processing")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting; the best counts")
    p.add_argument("--cache_dir", default="outputs/bench_scaling",
                   help="where the volumes are kept between runs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)   # the converter's own INFO lines
    data = make_volumes(args.cache_dir, args.num_volumes,
                        [int(s) for s in args.slices.split(",")])
    work_dir = tempfile.mkdtemp(prefix="scaling_", dir=args.cache_dir)
    results = []
    try:
        for runner in args.runners.split(","):
            for workers in (int(n) for n in args.workers.split(",")):
                results.append(measure(runner, workers, data, args.repeats, work_dir))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    report(results, host_facts())
    return 0


if __name__ == "__main__":
    sys.exit(main())
