"""One writer per output: a lock file beside what a run writes (an output folder, a metadata
database), holding who has it (pid, host, process start, command, start time).

A second run on the same output stops at once with RunLockHeld, naming the holder, and touches
nothing. A lock whose holder is gone (killed, crashed: same host, and no process with that pid
and process start) is stale: it is taken over, with a warning that says so. A holder on another
host cannot be checked from here, so it counts as live; the message says which file to delete
if that run is known to be gone.

The lock is made with O_CREAT | O_EXCL (atomic on local filesystems and NFSv3+); object-store
URIs (gs://, s3://) are not locked (there is no atomic create there).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from typing import Iterator, Optional

LOCK_NAME = ".unet3p-run.lock"     # in a locked folder
_RETRIES = 3


class RunLockHeld(RuntimeError):
    """Another live run holds the lock: str() names it and the lock file."""


def lock_path_for(target: str, is_dir: bool) -> str:
    """The lock of a folder lies inside it; the lock of a file (a database) beside it."""
    return os.path.join(target, LOCK_NAME) if is_dir else target + ".lock"


def _process_start(pid: int) -> Optional[str]:
    """The kernel's start time of `pid` (clock ticks since boot; Linux), None elsewhere or when
    there is no such process. Tells a live holder from a new process that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True    # cannot be checked from here
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass           # someone else's live process
    except (OverflowError, ValueError):
        return False
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started')} ({holder.get('command', '?')})")


class RunLock:
    """`with RunLock(path, what):` holds the lock at `path` for the block (see the module doc);
    `what` names the output in messages ("the metadata database /x/metadata.db")."""

    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        self._held = False

    def _record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "process_start": _process_start(os.getpid()),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": " ".join(sys.argv)[:300]}

    def _read_holder(self) -> Optional[dict]:
        """The holder's record; None when the file vanished. A file being written right now
        reads as empty: read again before calling it unreadable."""
        for _ in range(_RETRIES):
            try:
                with open(self.path) as f:
                    text = f.read()
            except FileNotFoundError:
                return None
            try:
                return json.loads(text)
            except ValueError:
                time.sleep(0.2)
        return {"pid": -1, "host": socket.gethostname(), "started": "?",
                "command": "an unreadable lock file"}

    def acquire(self) -> "RunLock":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for _ in range(_RETRIES):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:
                    continue
                if _alive(holder):
                    raise RunLockHeld(
                        f"{self.what} is in use by another run: {describe(holder)}. Wait for "
                        f"it to finish, or use another output. (Lock: {self.path}; delete it "
                        "only if that run is gone.)")
                logging.warning("Taking over the stale lock on %s: its run (%s) is gone. "
                                "Lock: %s", self.what, describe(holder), self.path)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self._held = True
            return self
        raise RunLockHeld(f"could not take the lock {self.path} on {self.what} (it keeps "
                          "changing hands)")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        holder = self._read_holder()
        if holder and holder.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked_outputs(*targets) -> Iterator[None]:
    """Holds one lock per (path, is_dir, what) target, local paths only, for the block."""
    with contextlib.ExitStack() as stack:
        for path, is_dir, what in targets:
            if "://" not in path:
                stack.enter_context(RunLock(lock_path_for(path, is_dir), f"{what} {path}"))
        yield
