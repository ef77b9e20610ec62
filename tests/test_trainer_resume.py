"""A Trainer killed mid-run resumes from its last epoch when run again, instead of starting
over: run_fn in a real subprocess on the tiny pipeline's Transform output, SIGKILLed after its
first epoch checkpoint, then run to the end."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from conftest import artifact_uris
from pipeline.component_configs import trainer_custom_config
from pipeline.configs import profile_config
# The tolerant read of Keras' training_metadata.json, shared with the pipeline-level resume test
# rather than copied: Keras truncates the file, then rewrites it, so a poll can find it empty or
# half written; that reads as "no checkpoint yet" instead of raising.
from test_pipeline_resume import _checkpointed_epoch

RUNNER = """
import json, logging, sys, types
logging.basicConfig(level=logging.INFO)
from trainer.run import run_fn
run_fn(types.SimpleNamespace(**json.load(open(sys.argv[1]))))
"""


def test_partial_metadata_reads_as_not_yet(tmp_path):
    resume_root = tmp_path / "resume"
    metadata = resume_root / "key" / "training_metadata.json"
    metadata.parent.mkdir(parents=True)
    assert _checkpointed_epoch(str(resume_root)) == (None, None)
    for partial in ("", '{"epoch": 3'):     # truncated; caught in the middle of the rewrite
        metadata.write_text(partial)
        assert _checkpointed_epoch(str(resume_root)) == (None, None)
    metadata.write_text('{"epoch": 3}')
    assert _checkpointed_epoch(str(resume_root)) == (str(metadata), 3)


@pytest.mark.pipeline
def test_killed_trainer_resumes(runs, tmp_path):
    output_dir, _, _ = runs
    config = profile_config("tiny")
    config.train.steps_per_epoch = 2
    transformed = artifact_uris(output_dir, "Transform", "transformed_examples")[0]
    model_root = tmp_path / "Trainer"
    fn_args = {
        "custom_config": trainer_custom_config(config),
        "transform_output": artifact_uris(output_dir, "Transform", "transform_graph")[0],
        "train_files": [os.path.join(transformed, "Split-train", "*")],
        "eval_files": [os.path.join(transformed, "Split-eval", "*")],
        "train_steps": 16, "eval_steps": 1,   # 8 epochs of 2 steps
    }

    def start(run: int) -> subprocess.Popen:
        args = dict(fn_args, model_run_dir=str(model_root / "model_run" / str(run)),
                    serving_model_dir=str(tmp_path / f"serving{run}"))
        path = tmp_path / f"fn_args{run}.json"
        path.write_text(json.dumps(args))
        # The log goes to a file: a pipe nobody reads while polling could fill and stall the run.
        with open(tmp_path / f"run{run}.log", "w") as log:
            return subprocess.Popen([sys.executable, "-c", RUNNER, str(path)],
                                    stdout=log, stderr=subprocess.STDOUT, text=True)

    first = start(1)
    resume_root = str(model_root / "resume")
    seen = None
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        _, seen = _checkpointed_epoch(resume_root)
        if seen is not None and seen >= 2:
            break
        time.sleep(0.2)
    assert seen is not None and seen >= 2, (
        "no epoch checkpoint appeared before the first run ended:\n"
        + (tmp_path / "run1.log").read_text()[-3000:])
    first.send_signal(signal.SIGKILL)
    first.wait()
    # What is on disk after the kill is what the second run resumes from (a later epoch than
    # the one seen if another epoch ended before the kill landed).
    path, killed_at = _checkpointed_epoch(resume_root)
    assert path is not None, "the kill left no readable checkpoint metadata"
    metadata = pathlib.Path(path)
    assert 2 <= killed_at < 8

    second = start(2)
    second.wait(timeout=600)
    log = (tmp_path / "run2.log").read_text()
    assert second.returncode == 0, log[-3000:]
    assert f"Resuming interrupted training at epoch {killed_at} of 8" in log
    assert f"Ran {8 - killed_at} of 8 epochs" in log
    assert os.path.exists(tmp_path / "serving2" / "saved_model.pb")
    assert not metadata.exists(), "the checkpoint should be deleted once training completes"
