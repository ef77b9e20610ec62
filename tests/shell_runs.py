"""The tiny pipeline run as users run it from a shell, each in a subprocess with piped output:
`python local_runner.py` (its console is read by tests/test_console.py) and the `tfx` CLI's
`pipeline create` + `run create` (tests/test_tfx_cli.py). Both runs are started at once by the
session fixture `shell_runs` (conftest.py): each is mostly one busy thread, so the two overlap
on two cores instead of queueing."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_PIPELINE = "unet3plus-cli-test"


def piped_local_run(work: Path) -> subprocess.CompletedProcess:
    """local_runner.py with stdout and stderr piped, the environment a user's shell has."""
    env = dict(os.environ, UNET3P_PROGRESS_INTERVAL="2")
    for name in ("PYTHONWARNINGS", "TF_CPP_MIN_LOG_LEVEL", "UNET3P_VERBOSE"):
        env.pop(name, None)   # as a user's shell has them
    return subprocess.run(
        [sys.executable, "local_runner.py", "--profile", "tiny", "--output_dir",
         str(work / "outputs")], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=900)


def tfx_cli_run(work: Path) -> Dict[str, object]:
    """`tfx pipeline create` then `tfx run create` (local engine), flags from UNET3P_*
    variables (the CLI passes none). {"create": stdout, "created_summary": the run summary right
    after create (None: nothing ran), "run": stdout, "outputs": folder}; AssertionError with
    the stderr when a command fails."""
    from pipeline.summary import collect_run_summary
    tfx_cli = os.path.join(os.path.dirname(sys.executable), "tfx")
    env = dict(os.environ, LOCAL_HOME=str(work / "tfx_home"),   # the CLI's own registry
               UNET3P_PROFILE="tiny", UNET3P_OUTPUT_DIR=str(work / "outputs"),
               UNET3P_PIPELINE_NAME=CLI_PIPELINE)

    def tfx(*args: str) -> str:
        result = subprocess.run([tfx_cli, *args, "--engine=local"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"tfx {' '.join(args)} failed:\n{result.stderr[-4000:]}"
        return result.stdout

    out = {"outputs": work / "outputs"}
    out["create"] = tfx("pipeline", "create",
                        f"--pipeline_path={os.path.join(REPO, 'local_runner.py')}")
    out["created_summary"] = collect_run_summary(str(work / "outputs" / "metadata.sqlite"))
    out["run"] = tfx("run", "create", f"--pipeline_name={CLI_PIPELINE}")
    return out


def run_both(console_work: Path, cli_work: Path) -> List[object]:
    """[the piped local run's CompletedProcess, the CLI run's dict], run at once. A CLI failure
    is returned as its AssertionError, so that the console test still gets its run."""
    with ThreadPoolExecutor(2) as pool:
        local = pool.submit(piped_local_run, console_work)
        cli = pool.submit(tfx_cli_run, cli_work)
        try:
            cli_result = cli.result()
        except AssertionError as e:
            cli_result = e
        return [local.result(), cli_result]
