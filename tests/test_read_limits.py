"""Hostile inputs that must not take the machine down (preprocessing/read_limits.py): a small
.nii.gz whose header declares 1024x1024x3000 int16 (6.3 GB) is refused from its header, before
any voxel is inflated; one that declares 16x16x4 but inflates to 200 MB is stopped as soon as it
passes the declared size, with a small, measured peak. The converter quarantines both by name
and reason while the good cases convert (counts conserved); predict.py gives each one line and
segments the rest; a DICOM series over the limits is refused before its pixels are decoded."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

import predict
from dicom_helpers import write_series
from preprocessing.convert import main as convert_main
from preprocessing.nifti import CaseError, CaseFiles, read_case
from preprocessing.read_limits import DEFAULT_LIMITS, GzipStream, ReadLimits
from preprocessing.synthetic_ct import write_dataset
from test_volume_eval import export_model

LITS_LARGEST = 512 * 512 * 987          # voxels of the largest LiTS volume
LYING_PAYLOAD = 200 << 20               # bytes the lying file inflates to


def _nifti_gz(path, shape, payload: bytes, dtype=np.int16):
    """A .nii.gz whose header declares `shape` x `dtype` and whose data is `payload`."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_zooms((1.0,) * len(shape))
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(raw)
        for start in range(0, len(payload), 16 << 20):
            f.write(payload[start:start + (16 << 20)])
    return str(path)


def _bomb(path):
    return _nifti_gz(path, (1024, 1024, 3000), b"\0" * 4096)


def _lying(path):
    return _nifti_gz(path, (16, 16, 4), bytes(LYING_PAYLOAD))


def test_the_defaults_let_every_lits_volume_through_with_a_wide_margin():
    assert DEFAULT_LIMITS.max_voxels >= 4 * LITS_LARGEST
    assert DEFAULT_LIMITS.max_inflated_bytes >= 4 * LITS_LARGEST * 2
    assert DEFAULT_LIMITS.max_voxels < 1024 * 1024 * 3000
    with pytest.raises(ValueError):
        ReadLimits(max_voxels=0)


def test_a_header_over_the_voxel_limit_is_refused_before_inflating(tmp_path):
    path = _bomb(tmp_path / "bomb.nii.gz")
    assert os.path.getsize(path) < 64 << 10
    tracemalloc.start()
    with pytest.raises(CaseError) as e:
        read_case(CaseFiles("bomb", path, None))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert e.value.path == path
    assert "1024x1024x3000" in e.value.reason and "max_voxels" in e.value.reason
    assert peak < 8 << 20


def test_the_byte_limit_counts_the_declared_bytes(tmp_path):
    path = _nifti_gz(tmp_path / "wide.nii.gz", (64, 64, 8), bytes(64 * 64 * 8 * 2))
    with pytest.raises(CaseError, match="max_inflated_bytes"):
        read_case(CaseFiles("wide", path, None), limits=ReadLimits(10 ** 9, 40_000))
    assert read_case(CaseFiles("wide", path, None)).image.shape == (64, 64, 8)


def test_a_file_inflating_past_its_header_is_stopped_there(tmp_path):
    path = _lying(tmp_path / "liar.nii.gz")
    tracemalloc.start()
    with pytest.raises(CaseError) as e:
        read_case(CaseFiles("liar", path, None))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "inflates to more than the 2,400 bytes its header declares" in e.value.reason
    # Bounded by the compressed file, the header read and one zlib feed: not by the 200 MB.
    assert peak < os.path.getsize(path) + (8 << 20)


def test_a_truncated_stream_is_reported_as_truncated(tmp_path):
    path = _nifti_gz(tmp_path / "short.nii.gz", (16, 16, 4), bytes(16 * 16 * 4 * 2))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-12])
    with pytest.raises(CaseError, match="truncated or corrupt"):
        read_case(CaseFiles("short", path, None))


def test_multi_member_gzip_reads_like_gzip():
    data = gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 70_000)
    stream = GzipStream(data)
    got = stream.read(500) + stream.read(1 << 20)
    assert got == gzip.decompress(data) and stream.finished


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    """Two good LiTS cases, a bomb (volume-7) and a liar (volume-8)."""
    root = tmp_path_factory.mktemp("hostile")
    write_dataset(str(root), num_cases=2, in_plane=24, slices_range=(8, 9), progress=False)
    good = nib.load(root / "segmentation-0.nii.gz")
    for n, make in ((7, _bomb), (8, _lying)):
        make(root / f"volume-{n}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros(good.shape, np.uint8), good.affine),
                 root / f"segmentation-{n}.nii.gz")
    return root


def test_the_converter_quarantines_hostile_files_and_converts_the_rest(hostile_folder, tmp_path):
    out = tmp_path / "out"
    code = convert_main(["--data_root", str(hostile_folder), "--output", str(out),
                         "--max_bad_fraction", "0.5", "--eval_cases", "volume-1",
                         "--size", "24", "--compress_threads", "1"])
    assert code == 0
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert (summary["input_cases"], summary["cases_converted"],
            summary["cases_quarantined"]) == (4, 2, 2)
    records = {r["case_id"]: r for r in map(json.loads,
                                            (out / "quarantine.jsonl").read_text().splitlines())}
    assert set(records) == {"volume-7", "volume-8"}
    assert records["volume-7"]["file"].endswith("volume-7.nii.gz")
    assert "max_voxels" in records["volume-7"]["reason"]
    assert "inflates to more than" in records["volume-8"]["reason"]


def test_predict_gives_each_hostile_file_one_line_and_segments_the_rest(hostile_folder,
                                                                         tmp_path):
    model = export_model(str(tmp_path / "model"))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = predict.main(["--model", model, "--input", str(hostile_folder),
                             "--output", str(tmp_path / "masks")])
    assert code == 1   # some cases failed
    assert "2 of 4 volumes written" in stdout.getvalue()
    lines = stderr.getvalue().splitlines()
    for n, reason in ((7, "max_voxels"), (8, "inflates to more than")):
        named = [line for line in lines if f"volume-{n}.nii.gz" in line]
        assert len(named) == 1 and reason in named[0], named
    assert sorted(os.listdir(tmp_path / "masks")) == sorted(
        ["volume-0_mask.nii.gz", "volume-1_mask.nii.gz", "predictions.csv"])


def test_a_dicom_series_over_the_limit_is_refused_before_decoding(tmp_path):
    folder = str(tmp_path / "series")
    write_series(folder, np.zeros((16, 16, 6), np.int16), np.eye(4))
    files = CaseFiles("series", folder, None)
    assert read_case(files).image.shape == (16, 16, 6)
    with pytest.raises(CaseError, match="max_voxels") as e:
        read_case(files, limits=ReadLimits(max_voxels=16 * 16 * 5))
    assert "16x16x6" in e.value.reason
