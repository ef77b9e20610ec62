"""Runs that share an output, are stopped, or hit a full disk (common/run_lock.py,
common/interrupts.py, the writers' temporary names): a second run on an output in use stops at
once naming the holder and leaves the first alone; a stale lock is taken over with a message;
SIGTERM stops predict.py and the converter within seconds, saying what finished, and a rerun
completes; a full disk (RLIMIT_FSIZE) fails the converter and predict.py naming the path and
leaves no partial shard or mask, and a rerun with space completes."""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from common.run_lock import LOCK_NAME, RunLock, RunLockHeld, lock_path_for
from preprocessing.synthetic_ct import write_dataset
from test_volume_eval import export_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from common.run_lock import RunLock; "
        "lock = RunLock(sys.argv[1], 'the test output').acquire(); print('held', flush=True); "
        "time.sleep(600)")
CONVERT = [sys.executable, "-m", "preprocessing.convert", "--size", "24", "--compress_threads",
           "1", "--eval_cases", "volume-0", "--keep_fraction", "1", "--selection", "all"]


def _holder(lock_path):
    """A live process of its own holding the lock at `lock_path`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=REPO), lock_path],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _stop(proc):
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety_data")
    write_dataset(str(root), num_cases=6, in_plane=24, slices_range=(8, 9), progress=False)
    return root


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Enough volumes that predict.py is still at work when the signal comes after its first
    mask (streamed inference takes ~10 ms per small volume)."""
    root = tmp_path_factory.mktemp("safety_many")
    write_dataset(str(root), num_cases=24, in_plane=64, slices_range=(40, 48), progress=False)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return export_model(str(tmp_path_factory.mktemp("safety_model") / "model"))


def test_a_second_holder_is_refused_with_the_holders_name(tmp_path):
    path = str(tmp_path / "db.lock")
    proc = _holder(path)
    try:
        before = open(path).read()
        with pytest.raises(RunLockHeld) as e:
            RunLock(path, "the metadata database").acquire()
        message = str(e.value)
        assert f"pid {proc.pid} on {socket.gethostname()}" in message
        assert "the metadata database is in use" in message and path in message
        assert open(path).read() == before and proc.poll() is None   # the holder undisturbed
    finally:
        _stop(proc)


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, caplog):
    path = str(tmp_path / "db.lock")
    _stop(_holder(path))          # SIGKILL: the lock file stays behind
    assert os.path.exists(path)
    with RunLock(path, "the metadata database"):
        assert json.load(open(path))["pid"] == os.getpid()
    assert "Taking over the stale lock" in caplog.text and not os.path.exists(path)
    # A reused pid (ours, but another process start) is stale too; another host's is not.
    for host, stale in ((socket.gethostname(), True), ("elsewhere", False)):
        json.dump({"pid": os.getpid(), "host": host, "process_start": "1", "started": "x"},
                  open(path, "w"))
        if stale:
            RunLock(path, "x").acquire().release()
        else:
            with pytest.raises(RunLockHeld, match="elsewhere"):
                RunLock(path, "x").acquire()


def test_the_converter_and_predict_refuse_an_output_in_use(data, model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = _holder(lock_path_for(str(out), is_dir=True))
    try:
        start = time.time()
        run = subprocess.run([*CONVERT, "--data_root", str(data), "--output", str(out)],
                             cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 2 and f"pid {proc.pid}" in run.stderr, run.stderr
        run = subprocess.run([sys.executable, "predict.py", "--model", model, "--input",
                              str(data), "--output", str(out)], cwd=REPO, capture_output=True,
                             text=True)
        assert run.returncode == 1 and f"pid {proc.pid}" in run.stderr, run.stderr[-2000:]
        assert time.time() - start < 120
        assert os.listdir(out) == [LOCK_NAME]    # nothing written beside the holder's lock
    finally:
        _stop(proc)


def _terminate_after(argv, first_output, timeout=300):
    """Runs argv, sends SIGTERM once `first_output` exists; (return code, stderr, seconds from
    the signal to the exit)."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + timeout
    while not os.path.exists(first_output) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr, time.time() - sent


def test_sigterm_stops_predict_within_seconds_and_a_rerun_completes(many, model, tmp_path):
    out = tmp_path / "masks"
    argv = [sys.executable, "predict.py", "--model", model, "--input", str(many), "--output",
            str(out), "--mirror", "flips"]
    code, stderr, seconds = _terminate_after(argv, str(out / "volume-0_mask.nii.gz"))
    assert code == 130, stderr[-2000:]
    assert "Interrupted by SIGTERM" in stderr and "run the same command again" in stderr
    assert seconds < 15
    left = os.listdir(out)
    assert LOCK_NAME not in left and not [f for f in left if not f.endswith((".nii.gz",
                                                                                ".csv"))]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and "24 of 24 volumes written" in run.stdout, run.stderr[-2000:]


def test_sigterm_stops_the_converter_and_a_rerun_completes(data, tmp_path):
    out = tmp_path / "records"
    argv = [*CONVERT, "--data_root", str(data), "--output", str(out)]
    code, stderr, seconds = _terminate_after(argv, str(out / ".tmp"))
    assert code == 130, stderr[-2000:]
    assert "Interrupted by SIGTERM" in stderr and seconds < 15
    assert not os.path.exists(out / LOCK_NAME)
    run = subprocess.run([*argv, "--overwrite"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def _small_files(limit_bytes):
    """preexec_fn: files over `limit_bytes` cannot be written (EFBIG, as on a full disk)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # the write fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return limit


def _partial_files(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]


def test_a_full_disk_fails_the_converter_naming_the_path_and_leaves_no_shard(data, tmp_path):
    out = tmp_path / "records"
    argv = [*CONVERT, "--data_root", str(data), "--output", str(out)]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                         preexec_fn=_small_files(20_000))
    assert run.returncode == 1
    failed = [line for line in run.stderr.splitlines() if "Conversion failed" in line]
    assert failed and f"cannot write {out}" in failed[0] and "File too large" in failed[0], \
        run.stderr[-3000:]
    for split in ("train", "eval"):
        assert not _partial_files(out / split), _partial_files(out / split)
    run = subprocess.run([*argv, "--overwrite"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_shard_write_that_fails_part_way_leaves_no_shard(tmp_path):
    """An injected fault at the shard writer, after some records are out."""
    from preprocessing.shard_writer import write_whole

    def blobs():
        yield 0, 4, b"abcd"
        raise OSError(28, "No space left on device")

    shard = str(tmp_path / "train" / "data-00000-of-00001.gz")
    os.makedirs(tmp_path / "train")
    os.makedirs(tmp_path / "tmp")
    with pytest.raises(OSError, match=f"cannot write {shard}.*No space left"):
        write_whole(shard, blobs(), str(tmp_path / "tmp"))
    assert _partial_files(tmp_path) == []
    write_whole(shard, [(0, 4, b"abcd")], str(tmp_path / "tmp"))
    assert open(shard, "rb").read() == b"abcd" and os.listdir(tmp_path / "tmp") == []


def test_a_full_disk_fails_a_mask_naming_it_and_leaves_no_partial_mask(data, model, tmp_path):
    out = tmp_path / "mask.nii.gz"
    argv = [sys.executable, "predict.py", "--model", model, "--input",
            str(data / "volume-1.nii.gz"), "--output", str(out)]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                         preexec_fn=_small_files(200))
    assert run.returncode != 0 and str(out) in run.stderr, run.stderr[-3000:]
    assert os.listdir(tmp_path) == []
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and os.path.getsize(out) > 200, run.stderr[-2000:]


def test_local_runner_refuses_a_metadata_database_in_use(tmp_path):
    import local_runner
    config = local_runner.config_from_args(local_runner.parse_args(["--output_dir",
                                                                    str(tmp_path)]))
    proc = _holder(lock_path_for(config.metadata_path, is_dir=False))
    try:
        run = subprocess.run([sys.executable, "local_runner.py", "--output_dir", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        text = run.stdout + run.stderr
        assert run.returncode == 2 and f"pid {proc.pid}" in text, text[-3000:]
        assert "the metadata database" in text
        assert not os.path.exists(config.pipeline_root)   # nothing started
    finally:
        _stop(proc)
