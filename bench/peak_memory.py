"""Peak memory of one conversion worker and of one predict.py process, against the size of the
volume: each runs as its own process (the converter with Beam's in-memory runner, so the process
is the worker; predict.py on one volume), and its peak RSS is the kernel's ru_maxrss of that
child (with a 512x512x4 case for the eval split). Three LiTS-width volumes, 512x512 with 8, 247 and 987 slices (987: the largest LiTS
volume), give the fixed cost (imports, the model) and the cost per stored byte of the volume, so
the bound is a line: peak ~= fixed + k x volume bytes.

    .venv/bin/python bench/peak_memory.py [--slices 8 247 987] [--size 128] [--work DIR]
        [--profile demo]

The volumes are a plain int16 phantom (body, liver, noise; gzip level 1, as nibabel writes it);
the model is the profile's untrained UNet 3+, built and exported as bench/inference_throughput.py
does (the weights do not change memory). Host facts are printed first.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

# Runs argv[1:] as a child and prints the child's peak RSS in KiB (Linux ru_maxrss).
_MEASURE = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def write_volume(folder: str, slices: int, case: int = 0) -> int:
    """volume-N / segmentation-N in `folder`: 512x512x`slices` int16 HU and its labels. Returns
    the stored bytes of the volume."""
    import nibabel as nib
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(slices)
    y, x = np.mgrid[-256:256, -256:256].astype(np.float32)
    body = (x / 220) ** 2 + (y / 170) ** 2 < 1
    volume = np.full((512, 512, slices), -1000, np.int16)
    labels = np.zeros((512, 512, slices), np.uint8)
    for z in range(slices):
        t = (z - slices / 2) / max(slices / 2, 1)
        liver = ((x + 60) / 110) ** 2 + ((y - 10) / 80) ** 2 < 1 - t * t
        hu = np.where(body, 40, -1000) + rng.normal(0, 12, (512, 512))
        volume[..., z] = np.where(liver, 60 + rng.normal(0, 12, (512, 512)), hu).astype(np.int16)
        labels[..., z] = liver
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), os.path.join(folder, f"volume-{case}.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), os.path.join(folder, f"segmentation-{case}.nii.gz"))
    return volume.nbytes


def peak_rss_mib(argv) -> float:
    """Peak RSS of `argv` run as a process of its own, in MiB."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, *argv], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def fit(sizes, peaks):
    """(fixed MiB, MiB per MiB of volume) of the least-squares line."""
    slope, fixed = np.polyfit(np.asarray(sizes, float) / 2 ** 20, peaks, 1)
    return fixed, slope


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, nargs="+", default=[8, 247, 987])
    p.add_argument("--size", type=int, default=128, help="conversion example size")
    p.add_argument("--profile", default="demo", help="the model predict.py runs")
    p.add_argument("--work", help="working folder (default: a new temp dir)")
    return p.parse_args()


def main() -> int:
    from inference_throughput import build_model, host_facts
    from preprocessing.synthetic_ct import write_dataset
    args = parse_args()
    print(host_facts(), flush=True)
    work = args.work or tempfile.mkdtemp(prefix="peak_memory_")
    train = os.path.join(work, "train_data")
    write_dataset(train, num_cases=2, in_plane=128, progress=False)
    _, model_dir, _, _ = build_model(args.profile, argparse.Namespace(config=[], overrides=[]),
                                     train, os.path.join(work, "model_build"), "fp32")
    sizes, convert_peaks, predict_peaks = [], [], []
    for slices in args.slices:
        folder = os.path.join(work, f"ct_{slices}")
        start = time.perf_counter()
        sizes.append(write_volume(folder, slices))
        write_volume(folder, 4, case=1)   # the eval split's case (a split may not be empty)
        made = time.perf_counter() - start
        convert_peaks.append(peak_rss_mib([
            "-m", "preprocessing.convert", "--data_root", folder, "--output",
            os.path.join(work, f"records_{slices}"), "--size", str(args.size),
            "--eval_cases", "volume-1", "--overwrite", "--compress_threads", "1"]))
        predict_peaks.append(peak_rss_mib([
            "predict.py", "--model", model_dir, "--input",
            os.path.join(folder, "volume-0.nii.gz"), "--output",
            os.path.join(work, f"mask_{slices}.nii.gz")]))
        print(f"512x512x{slices} ({sizes[-1] / 2 ** 20:.0f} MiB int16, made in {made:.0f} s): "
              f"conversion worker peak {convert_peaks[-1]:.0f} MiB, predict.py peak "
              f"{predict_peaks[-1]:.0f} MiB", flush=True)
    for name, peaks in (("conversion worker", convert_peaks), ("predict.py", predict_peaks)):
        fixed, slope = fit(sizes, peaks)
        print(f"{name}: peak ~= {fixed:.0f} MiB + {slope:.2f} x volume (fit over "
              f"{len(sizes)} volumes)", flush=True)
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
