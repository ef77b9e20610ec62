"""Shared fixtures: one real run (and a cached second run) of the tiny pipeline per session."""
from __future__ import annotations

import glob
import os
import tempfile

import pytest

import local_runner
from pipeline.summary import collect_run_summary

# One machine cache of the precision probe (trainer/precision.py) for the session, in a new
# folder: the session's first Trainer measures, every later one (subprocesses too) reads it, and
# the user's own ~/.cache is left alone.
os.environ.setdefault("UNET3P_CACHE_DIR", tempfile.mkdtemp(prefix="unet3plus-test-cache-"))


# Fixtures that run the tiny pipeline: a test that uses one is marked `pipeline` for it, so the
# mark says what a test costs whatever its author wrote.
PIPELINE_FIXTURES = {"runs", "rejected_run", "shell_runs"}


def pytest_collection_modifyitems(items):
    for item in items:
        if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pipeline)


def _run(output_dir: str, *flags: str) -> dict:
    assert local_runner.main(["--profile", "tiny", "--output_dir", output_dir, *flags]) == 0
    summary = collect_run_summary(os.path.join(output_dir, "metadata.sqlite"))
    assert summary is not None
    return summary


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("pipeline"))
    first = _run(output_dir)
    second = _run(output_dir)
    return output_dir, first, second


@pytest.fixture(scope="session")
def shell_runs(tmp_path_factory):
    """[piped `python local_runner.py`, `tfx` CLI create + run], both at once (shell_runs.py)."""
    from shell_runs import run_both
    return run_both(tmp_path_factory.mktemp("console"), tmp_path_factory.mktemp("tfx_cli"))


@pytest.fixture(scope="session")
def rejected_run(runs):
    """A third run in the same place with a candidate that cannot be good: one training step.
    The first run's model is the last blessed one, so the Evaluator must reject this one on
    both thresholds, and the Pusher must not ship it."""
    output_dir, _, _ = runs
    pushed_before = sorted(os.listdir(os.path.join(output_dir, "serving_model")))
    summary = _run(output_dir, "--train_steps", "1")
    return output_dir, summary, pushed_before


def predict_volume_3(output_dir: str, model_dir: str, out_path: str):
    """Runs predict.py (with the ground truth, so it prints Dice) on the synthetic volume-3,
    stored with permuted axes (PIR), so the output must come back in that grid. Returns the
    (input, output) NIfTI images."""
    import nibabel as nib
    import predict
    data_dir = glob.glob(os.path.join(output_dir, "synthetic_ct_*"))[0]
    volume = os.path.join(data_dir, "volume-3.nii.gz")
    assert predict.main(["--model", model_dir, "--input", volume, "--output", out_path,
                         "--label", os.path.join(data_dir, "segmentation-3.nii.gz")]) == 0
    return nib.load(volume), nib.load(out_path)


def truth_of_volume_3(output_dir: str):
    """The ground-truth labels of the synthetic volume-3, in its file's own grid."""
    import nibabel as nib
    import numpy as np
    data_dir = glob.glob(os.path.join(output_dir, "synthetic_ct_*"))[0]
    return np.rint(np.asanyarray(nib.load(os.path.join(data_dir, "segmentation-3.nii.gz"))
                                 .dataobj))


def artifact_uris(output_dir: str, component: str, output: str):
    return sorted(glob.glob(os.path.join(output_dir, "pipeline", component, output, "*")),
                  key=lambda p: int(os.path.basename(p)))


