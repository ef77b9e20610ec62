"""The pipeline driven the way TFX users drive it: `tfx pipeline create` then `tfx run create`
with the local engine. Flags come from UNET3P_* environment variables (the CLI passes none). The
run itself is tests/shell_runs.py's tfx_cli_run, started beside the console test's run."""
from __future__ import annotations

import os

from pipeline.summary import collect_run_summary
from shell_runs import CLI_PIPELINE


def test_tfx_cli_create_and_run(shell_runs):
    cli = shell_runs[1]
    if isinstance(cli, AssertionError):
        raise cli
    assert CLI_PIPELINE in cli["create"] or "successfully" in cli["create"].lower()
    # Creating compiles the pipeline; it must not have run it.
    assert cli["created_summary"] is None
    summary = collect_run_summary(str(cli["outputs"] / "metadata.sqlite"))
    assert summary is not None
    assert summary["components"]["Pusher"] == "ran"
    assert "overall" in summary["eval_dice"]
    assert summary["pushed"] and os.path.isdir(summary["pushed_to"])
