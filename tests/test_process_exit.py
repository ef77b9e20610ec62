"""A process that used s3:// ends with its own exit status (common/process_exit.py).

Against moto's S3 server on loopback (the endpoint MinIO users set, S3_ENDPOINT=http://...), each
case runs in a fresh interpreter of this venv that writes through common/storage.py:
- ended the usual way, it aborts at exit with status 134 (tensorflow-io 0.37.1's teardown bug:
  the control, which shows this setup reproduces it; if it stops failing, the bug is gone
  upstream and the hard exit may go);
- ended by exit_process, it keeps the status it was given (0, 3) and what it printed;
- a module run through components.task_entrypoint (how every Kubeflow task runs TFX's
  entrypoint) keeps its status: returned (0), sys.exit(5), an uncaught exception (1, with
  the traceback).
The object written is read back with boto3 each time: the hard exit loses nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from s3_server import s3_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "unet3plus-exit-test"
ABORTED = 134   # SIGABRT, as the shell reports it (subprocess: -6)


@pytest.fixture(scope="module")
def s3_env():
    """The environment a task on a KFP cluster with MinIO gets, pointed at moto on loopback."""
    with s3_server(BUCKET) as server:
        env = dict(os.environ, **server.env, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
        yield env, server.client


def _run(argv, env, cwd=REPO):
    result = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=240)
    status = 128 - result.returncode if result.returncode < 0 else result.returncode
    return status, result


def _writer(key: str, ending: str) -> str:
    """A script that writes s3://BUCKET/key through storage.py, prints, then ends by `ending`."""
    return textwrap.dedent(f"""
        from common import storage
        from common.process_exit import exit_process
        storage.write_text("s3://{BUCKET}/{key}", "written")
        print("wrote {key}")
    """) + ending + "\n"


def _read(client, key: str) -> str:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def test_the_control_aborts_at_exit(s3_env):
    env, client = s3_env
    status, result = _run(["-c", _writer("control", "")], env)
    assert _read(client, "control") == "written" and "wrote control" in result.stdout
    assert status == ABORTED, (
        f"a process that used s3:// ended with {status}, not tensorflow-io 0.37.1's abort "
        f"(134): if tensorflow-io was upgraded, common/process_exit.py's hard exit may "
        f"no longer be needed\n{result.stderr[-2000:]}")


@pytest.mark.parametrize("code", [0, 3])
def test_exit_process_keeps_the_status(s3_env, code):
    env, client = s3_env
    key = f"exit-{code}-{uuid.uuid4().hex[:6]}"
    status, result = _run(["-c", _writer(key, f"exit_process({code})")], env)
    assert status == code, result.stderr[-2000:]
    assert "pure virtual method called" not in result.stderr
    assert f"wrote {key}" in result.stdout          # flushed before the hard exit
    assert _read(client, key) == "written"


@pytest.mark.parametrize("ending, expected", [
    ("", 0),
    ("import sys; sys.exit(5)", 5),
    ("raise ValueError('the task failed')", 1),
])
def test_a_module_run_through_the_task_entrypoint_keeps_its_status(s3_env, tmp_path, ending,
                                                                   expected):
    env, client = s3_env
    key = f"task-{expected}-{uuid.uuid4().hex[:6]}"
    (tmp_path / "fake_tfx_entrypoint.py").write_text(
        _writer(key, "if __name__ == '__main__':\n    " + (ending or "pass")))
    env = dict(env, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    status, result = _run(["-m", "components.task_entrypoint", "fake_tfx_entrypoint"], env,
                          cwd=str(tmp_path))
    assert status == expected, result.stderr[-2000:]
    assert "pure virtual method called" not in result.stderr
    assert f"wrote {key}" in result.stdout and _read(client, key) == "written"
    if expected == 1:
        assert "ValueError: the task failed" in result.stderr   # the traceback, as Python shows it


def test_a_host_that_executes_our_script_goes_on(tmp_path):
    """The `tfx` CLI executes local_runner.py inside its own process, as a `__main__` module it
    does not install, swallows its SystemExit(0) and then reports the pipeline: exit_process
    must leave the process to it (a hard exit there ended `tfx pipeline create` silently)."""
    script = tmp_path / "our_cli.py"
    script.write_text("import tensorflow_io  # noqa: F401  (loaded, as under TFX)\n"
                      "from common.process_exit import exit_process\n"
                      "if __name__ == '__main__':\n    exit_process(0)\n")
    host = textwrap.dedent(f"""
        from importlib import machinery, util
        loader = machinery.SourceFileLoader("__main__", {str(script)!r})
        try:
            loader.exec_module(util.module_from_spec(util.spec_from_loader(loader.name, loader)))
        except SystemExit as e:
            print("host caught", e.code)
        print("host goes on")
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    status, result = _run(["-c", host], env)
    assert status == 0, result.stderr[-2000:]
    assert "host caught 0" in result.stdout and "host goes on" in result.stdout
