"""A Trainer killed mid-run resumes from its last epoch when run again, instead of starting
over: run_fn in a real subprocess on the tiny pipeline's Transform output, SIGKILLed after its
first epoch checkpoint, then run to the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import artifact_uris
from pipeline.configs import profile_config

pytestmark = pytest.mark.pipeline

RUNNER = """
import json, logging, sys, types
logging.basicConfig(level=logging.INFO)
from trainer.run import run_fn
run_fn(types.SimpleNamespace(**json.load(open(sys.argv[1]))))
"""


def test_killed_trainer_resumes(runs, tmp_path):
    import dataclasses
    output_dir, _, _ = runs
    config = profile_config("tiny")
    config.train.steps_per_epoch = 2
    transformed = artifact_uris(output_dir, "Transform", "transformed_examples")[0]
    model_root = tmp_path / "Trainer"
    fn_args = {
        "custom_config": {"model": dataclasses.asdict(config.model),
                          "train": dataclasses.asdict(config.train),
                          "image_shape": [64, 64, 3],
                          "slice": config.example_gen.slices.to_dict()},
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
        return subprocess.Popen([sys.executable, "-c", RUNNER, str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start(1)
    metadata = None
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        found = list((model_root / "resume").glob("*/training_metadata.json"))
        if found and json.loads(found[0].read_text())["epoch"] >= 2:
            metadata = found[0]
            break
        time.sleep(0.2)
    assert metadata is not None, "no epoch checkpoint appeared before the first run ended"
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = json.loads(metadata.read_text())["epoch"]
    assert 2 <= killed_at < 8

    second = start(2)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log[-3000:]
    assert f"Resuming interrupted training at epoch {killed_at} of 8" in log
    assert f"Ran {8 - killed_at} of 8 epochs" in log
    assert os.path.exists(tmp_path / "serving2" / "saved_model.pb")
    assert not metadata.exists(), "the checkpoint should be deleted once training completes"
