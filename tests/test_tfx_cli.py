"""The pipeline driven the way TFX users drive it: `tfx pipeline create` then `tfx run create`
with the local engine. Flags come from UNET3P_* environment variables (the CLI passes none)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.summary import collect_run_summary

pytestmark = pytest.mark.pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tfx_cli_create_and_run(tmp_path):
    tfx_cli = os.path.join(os.path.dirname(sys.executable), "tfx")
    env = dict(os.environ,
               LOCAL_HOME=str(tmp_path / "tfx_home"),   # the CLI's own registry of pipelines
               UNET3P_PROFILE="tiny",
               UNET3P_OUTPUT_DIR=str(tmp_path / "outputs"),
               UNET3P_PIPELINE_NAME="unet3plus-cli-test")
    pipeline_path = os.path.join(REPO, "local_runner.py")

    def tfx(*args):
        result = subprocess.run([tfx_cli, *args, "--engine=local"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"tfx {' '.join(args)} failed:\n{result.stderr[-4000:]}"
        return result.stdout

    out = tfx("pipeline", "create", f"--pipeline_path={pipeline_path}")
    assert "unet3plus-cli-test" in out or "successfully" in out.lower()
    # Creating compiles the pipeline; it must not have run it.
    assert collect_run_summary(str(tmp_path / "outputs" / "metadata.sqlite")) is None

    tfx("run", "create", "--pipeline_name=unet3plus-cli-test")
    summary = collect_run_summary(str(tmp_path / "outputs" / "metadata.sqlite"))
    assert summary is not None
    assert summary["components"]["Pusher"] == "ran"
    assert "overall" in summary["eval_dice"]
    assert summary["pushed"] and os.path.isdir(summary["pushed_to"])
