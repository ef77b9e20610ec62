"""Shared fixtures: one real run (and a cached second run) of the tiny pipeline per session."""
from __future__ import annotations

import glob
import os

import pytest

import local_runner
from pipeline.summary import collect_run_summary


def _run(output_dir: str) -> dict:
    assert local_runner.main(["--profile", "tiny", "--output_dir", output_dir]) == 0
    summary = collect_run_summary(os.path.join(output_dir, "metadata.sqlite"))
    assert summary is not None
    return summary


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("pipeline"))
    first = _run(output_dir)
    second = _run(output_dir)
    return output_dir, first, second


def artifact_uris(output_dir: str, component: str, output: str):
    return sorted(glob.glob(os.path.join(output_dir, "pipeline", component, output, "*")),
                  key=lambda p: int(os.path.basename(p)))


