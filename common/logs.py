"""The console and log file set-up every command line shares (the pipeline runners, predict.py,
the full-volume evaluation): what a person sees, and where the full log goes.

The console shows this project's lines, its warnings and errors from anywhere; everything else
that TFX, Beam and TensorFlow log at INFO goes to the log file (when one is asked for).
`verbose=True` puts everything on the console as well. Lines meant for the console are logged to
CONSOLE_LOGGER (`console_logger()`); they reach the log file too.

Known noise is filtered where it starts (common/console_noise.py, each filter with why it is
safe); setup_logging() installs those filters, so call it before TensorFlow, TFX or
google-api-core are imported. The pipeline's per-component lines (pipeline/console.py) come in as
an extra handler.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Optional, Sequence

from common.console_noise import (quiet_tensorflow_import, silence_known_noise,
                                  stop_quieting_tensorflow_import)
from schema.contract import CONSOLE_LOGGER

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the installed packages live, inside the repository here: their files are not ours.
_VENV = os.path.join(os.path.abspath(sys.prefix), "")

def console_logger() -> logging.Logger:
    return logging.getLogger(CONSOLE_LOGGER)


class _ConsoleFilter(logging.Filter):
    """Passes the console's own lines, this project's warnings and errors from anywhere (with
    `project_info`, this project's INFO lines too). Python warnings (logger py.warnings) count as
    this project's when they name one of its files."""

    def __init__(self, project_info: bool = False):
        super().__init__()
        self.project_info = project_info

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == CONSOLE_LOGGER or record.name.startswith(CONSOLE_LOGGER + "."):
            return True
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno >= (logging.INFO if self.project_info else logging.WARNING):
            if record.name == "py.warnings":
                message = record.getMessage()
                return _REPO + os.sep in message and _VENV not in message
            path = os.path.abspath(record.pathname)
            return path.startswith(_REPO + os.sep) and not path.startswith(_VENV)
        return False


class _ConsoleFormatter(logging.Formatter):
    """Console lines plain ("12:03:04 Trainer started"); warnings and errors with their level."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.name == CONSOLE_LOGGER and record.levelno < logging.WARNING:
            return f"{stamp} {text}"
        return f"{stamp} {record.levelname} {text}"


_last_console_line = [time.time()]


def seconds_since_console_line() -> float:
    """How long the console has been silent (a heartbeat prints when it has been for long)."""
    return time.time() - _last_console_line[0]


class _StampLastLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        _last_console_line[0] = time.time()
        return True


class RunLog:
    """The handlers installed by `setup_logging`; `close()` removes them."""

    def __init__(self, path: Optional[str], handlers, replaced=(),
                 root_level: int = logging.WARNING):
        self.path = path
        self.handlers = handlers
        self._replaced = list(replaced)
        self._root_level = root_level

    def close(self) -> None:
        """Removes these handlers and puts back the ones they replaced (main() may run inside
        a longer process, e.g. a test session)."""
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
        for h in self._replaced:
            root.addHandler(h)
        root.setLevel(self._root_level)
        logging.captureWarnings(False)
        stop_quieting_tensorflow_import()


def setup_logging(log_dir: Optional[str], verbose: bool = False, name: str = "run",
                  project_info: bool = False, stream=None,
                  extra_handlers: Sequence[logging.Handler] = ()) -> RunLog:
    """Root logger at INFO: everything to `<log_dir>/<name>-<timestamp>.log` (when log_dir is
    given), the console (`stream`, default stdout) filtered as the module doc says (everything
    with `verbose`; this project's INFO lines too with `project_info`, for the one-shot CLIs).
    Replaces handlers an earlier basicConfig installed. Returns the RunLog (.path: the log)."""
    silence_known_noise(verbose)
    root = logging.getLogger()
    replaced, root_level = list(root.handlers), root.level
    for h in replaced:
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    handlers = []
    path = None
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log")
        file_handler = logging.FileHandler(path)
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(file_handler)
    if not verbose:
        quiet_tensorflow_import(path)
    console = logging.StreamHandler(stream or sys.stdout)
    console.setLevel(logging.INFO)
    if verbose:
        console.setFormatter(logging.Formatter(LOG_FORMAT))
    else:
        console.addFilter(_ConsoleFilter(project_info))
        console.setFormatter(_ConsoleFormatter())
    console.addFilter(_StampLastLine())
    handlers.append(console)
    handlers.extend(extra_handlers)
    for h in handlers:
        root.addHandler(h)
    # Python warnings (e.g. DeprecationWarnings from TFX) become log records: to the file, and
    # to the console only when they name this project's files.
    logging.captureWarnings(True)
    # absl (TFX, the orchestrator's "Component X is running.") logs through the "absl" Python
    # logger. Its level must be set through absl's verbosity flag: TensorFlow's SavedModel writer
    # silences absl for a moment and then restores the flag's value, which would otherwise be
    # absl's default, WARNING, and every later TFX INFO line (component ends included) be lost.
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.INFO)
    except ImportError:
        pass
    return RunLog(path, handlers, replaced, root_level)
