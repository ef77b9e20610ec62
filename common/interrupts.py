"""SIGTERM (a scheduler, `kill`, `docker stop`) handled like Ctrl-C: both raise KeyboardInterrupt
in the main thread, so a run unwinds through its `finally` blocks (locks released, temporary
files removed) and its command line prints what finished and how to resume, within seconds,
instead of dying mid-write.

    with terminate_as_interrupt():
        ...
    # except KeyboardInterrupt: report, return EXIT_INTERRUPTED
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_INTERRUPTED = 130   # the shell's status for a run ended by SIGINT


class Interrupted(KeyboardInterrupt):
    """KeyboardInterrupt raised by SIGTERM; `signal_name` says which signal it was."""
    signal_name = "SIGTERM"


def _raise_interrupted(signum, frame):
    raise Interrupted()


def signal_name(error: KeyboardInterrupt) -> str:
    return getattr(error, "signal_name", "Ctrl-C (SIGINT)")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Interrupted in the main thread for the block (elsewhere: a no-op, since
    only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
