"""Stop the whole pipeline while the Trainer is training, run the pipeline again, and it
resumes: the real `local_runner.py` (tiny profile) in a subprocess gets SIGTERM, as a scheduler
sends it, once the Trainer's first epoch checkpoint is on disk. It must stop within seconds,
with exit code 130 and a message saying how to resume, and leave no lock behind. The second run
reuses the cached ExampleGen .. Transform outputs, so the Trainer's inputs and config, and with
them its resume directory (`<pipeline_root>/Trainer/resume/<key>`), are the same, and training
picks up at the stopped epoch. The stopped Trainer execution is left behind in ML Metadata as
never finished; the second run must not be confused by it (not cached from it, not blocked by
it). SIGKILL, where no handler runs, is the Trainer's own resume test (test_trainer_resume.py)
and the stale-lock test (test_run_safety.py)."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pipeline.summary import collect_run_summary

pytestmark = pytest.mark.pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 15      # 4 short epochs, still enough to pass the tiny bar of 0.8
TRAIN_STEPS = 4 * STEPS_PER_EPOCH
UPSTREAM = ("NiftiExampleGen", "PackagedSchemaGen", "StatisticsGen", "ExampleValidator",
            "Transform")


def _epochs() -> int:
    return -(-TRAIN_STEPS // STEPS_PER_EPOCH)


def _read_epoch(path: str):
    """The epoch a BackupAndRestore metadata file records; None while it is missing or being
    written (Keras truncates, then writes it)."""
    try:
        with open(path) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return None


def _checkpointed_epoch(resume_root: str):
    """(metadata path, epoch) of the furthest checkpoint under `resume_root`, or (None, None)."""
    best = (None, None)
    for path in glob.glob(os.path.join(resume_root, "*", "training_metadata.json")):
        epoch = _read_epoch(path)
        if epoch is not None and (best[1] is None or epoch > best[1]):
            best = (path, epoch)
    return best


def _mlmd_trainer_states(metadata_path: str):
    """[(execution id, state name)] of every Trainer execution, oldest first."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    node = [c for c in store.get_contexts_by_type("node") if c.name.endswith(".Trainer")]
    assert len(node) == 1, [c.name for c in node]
    name = metadata_store_pb2.Execution.State.Name
    return [(e.id, name(e.last_known_state))
            for e in sorted(store.get_executions_by_context(node[0].id), key=lambda e: e.id)]


def test_a_pipeline_stopped_by_sigterm_resumes_training(tmp_path):
    output_dir = tmp_path / "out"
    pipeline_root = output_dir / "pipeline"
    resume_root = str(pipeline_root / "Trainer" / "resume")
    metadata_path = str(output_dir / "metadata.sqlite")
    epochs = _epochs()
    assert epochs >= 3, "need epochs to kill in the middle of"
    command = [sys.executable, os.path.join(REPO, "local_runner.py"), "--profile", "tiny",
               "--output_dir", str(output_dir), "--train_steps", str(TRAIN_STEPS),
               "--steps_per_epoch", str(STEPS_PER_EPOCH)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")

    # First run, stopped in the middle of training. The log goes to a file, not a pipe that
    # nobody reads while polling (a full pipe would stall the runner).
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    stopped_in = None
    try:
        deadline = time.time() + 600
        seen = None
        while time.time() < deadline and first.poll() is None:
            _, seen = _checkpointed_epoch(resume_root)
            if seen is not None and seen >= 1:
                break
            time.sleep(0.1)
        if first.poll() is None:
            signalled = time.time()
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)
            stopped_in = time.time() - signalled
    finally:
        # The runner's whole process group: Beam may have started workers of its own.
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    first_console = first_log.read_text()
    assert first.returncode == 130, (
        f"the first run did not stop on SIGTERM as an interrupt (rc {first.returncode}; ended "
        f"by itself if no epoch checkpoint appeared):\n{first_console[-4000:]}")
    assert stopped_in is not None and stopped_in < 30, stopped_in
    assert "Interrupted by SIGTERM" in first_console, first_console[-4000:]
    assert "run the same command to resume" in first_console, first_console[-4000:]
    assert not glob.glob(str(output_dir / "*.lock")) and not glob.glob(
        str(pipeline_root / ".unet3p-run.lock")), "the stopped run left its locks"
    assert seen is not None and seen >= 1, first_console[-4000:]
    # The epoch on disk after the stop is what the second run resumes from (it may be later
    # than the one seen if another epoch ended before the signal landed).
    metadata, killed_at = _checkpointed_epoch(resume_root)
    assert metadata is not None, "the stop left no readable checkpoint metadata"
    assert 1 <= killed_at < epochs, killed_at
    killed_states = _mlmd_trainer_states(metadata_path)
    assert len(killed_states) == 1 and killed_states[0][1] not in ("COMPLETE", "CACHED"), \
        killed_states

    # Second run, same command, to completion.
    second_log = tmp_path / "second.log"
    with open(second_log, "w") as log:
        second = subprocess.run(command, cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, timeout=900)
    console = second_log.read_text()
    assert second.returncode == 0, console[-6000:]
    # The resume is said on the console; the Trainer's detail is in the run's full log file,
    # whose path the console names first.
    full_log = re.search(r"Full log: (\S+)", console).group(1)
    assert f"Resuming interrupted training at epoch {killed_at} of {epochs}" in console, \
        console[-6000:]
    text = console + open(full_log).read()

    summary = collect_run_summary(metadata_path)
    components = summary["components"]
    for name in UPSTREAM:
        assert components.get(name) == "cached", (name, components)
    for name in ("Trainer", "Evaluator", "Pusher"):
        assert components.get(name) == "ran", (name, components)

    assert f"Ran {epochs - killed_at} of {epochs} epochs" in text, text[-6000:]

    # A blessing decision was made, and with the tiny profile's bar of 0 the model is pushed.
    assert summary["blessed"] is True and summary["pushed"] is True, summary
    assert os.path.exists(os.path.join(summary["pushed_to"], "saved_model.pb"))

    # The checkpoint is gone once training completed, so a later run starts afresh.
    assert not os.path.exists(os.path.dirname(metadata))
    assert not glob.glob(os.path.join(resume_root, "*", "*"))

    # MLMD: the killed execution stays as it was (never finished); the new one completed.
    states = _mlmd_trainer_states(metadata_path)
    assert len(states) == 2, states
    assert states[0] == killed_states[0], states
    assert states[1][1] == "COMPLETE", states
