"""Ending a process that used s3:// with its own exit status.

tensorflow-io 0.37.1, the release that matches TensorFlow 2.16, aborts a process that used its
s3:// filesystem at interpreter exit, after the work is done and the files are written: a C++
teardown calls a pure virtual method ("pure virtual method called", SIGABRT, exit status 134;
tensorflow/io issue 2039, fixed after that release). On Kubeflow with MinIO that marks a good
task failed, and a script cannot tell success from failure by the status.

`exit_process` ends a process that loaded tensorflow-io (TFX's entrypoints load it, s3:// or not)
as a normal exit would: it waits for non-daemon threads, runs every atexit handler, flushes
logging, stdout and stderr, and then ends with os._exit, which skips the C++ teardown that aborts.
A process that never loaded tensorflow-io exits the usual way. Every command line of this project
ends through it, and Kubeflow tasks run TFX's entrypoints through `components.task_entrypoint`,
which does the same (tests/test_process_exit.py checks both against an S3 server on loopback).
"""
from __future__ import annotations

import atexit
import logging
import os
import runpy
import sys
import threading
import traceback
from typing import NoReturn, Sequence

TENSORFLOW_IO = "tensorflow_io"


def exit_status(code) -> int:
    """The status `sys.exit(code)` gives: None -> 0, an int as is, anything else printed to
    stderr and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_process(code=0) -> NoReturn:
    """For the `if __name__ == "__main__":` block of a command line: sys.exit(code), except in a
    process that loaded tensorflow-io, which ends with the same status the hard way (module
    docstring). Only where the calling module is the process's own main: the `tfx` CLI executes
    local_runner.py inside its own process (as a new `__main__` module it does not install) to
    read the pipeline and then goes on, so there this is sys.exit and the host decides."""
    main = sys.modules.get("__main__")
    if main is None or main.__dict__ is not sys._getframe(1).f_globals:
        sys.exit(code)
    _end_process(code)


def _end_process(code) -> NoReturn:
    if TENSORFLOW_IO not in sys.modules:
        sys.exit(code)
    status = exit_status(code)
    # What interpreter exit does before the C++ teardown that aborts: wait for the non-daemon
    # threads, then run the atexit handlers (logging's flush among them).
    shutdown_threads = getattr(threading, "_shutdown", None)
    if shutdown_threads is not None:
        shutdown_threads()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # closed or broken: nothing left to save
            pass
    os._exit(status)


def run_module(module: str, argv: Sequence[str]) -> NoReturn:
    """`python -m module argv...`, then the end exit_process gives a program, with the status
    Python would give:
    0 when the module returns, its SystemExit code, 1 after an uncaught exception (whose
    traceback is printed as Python prints it)."""
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException:   # noqa: BLE001 - reported as the interpreter would, status 1
        traceback.print_exc()
        code = 1
    _end_process(code)   # this process's own end: run_module is the program (task_entrypoint)
