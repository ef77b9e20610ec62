"""What a person sees while the pipeline runs, and where the full log goes.

The console shows the run: one line when each component starts and ends (with its key figure),
progress lines from the ExampleGen and the Trainer, warnings from this project, errors from
anywhere, and the run summary. Everything else that TFX, Beam and TensorFlow log at INFO goes to
the log file `<output_dir>/logs/run-<timestamp>.log`. `verbose=True` puts everything on the
console as well.

Lines meant for the console are logged to CONSOLE_LOGGER (`console_logger()`); they reach the
log file too.

Known noise is filtered where it starts (pipeline/console_noise.py, each filter with why it is
safe); setup_logging() installs those filters, before TensorFlow, TFX or google-api-core are
imported.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable, Dict, Optional

# Progress lines come at least every progress_interval() seconds when the output is not a
# terminal (and "still running" lines for a quiet component); the tests set a small value.
from pipeline.console_noise import (quiet_tensorflow_import, silence_known_noise,
                                    stop_quieting_tensorflow_import)
from schema.contract import CONSOLE_LOGGER, progress_interval

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


class ComponentLines(logging.Handler):
    """Turns the local orchestrator's "Component X is running." / "Component X is finished."
    (absl INFO) into one console line each, the end line with the seconds taken and the
    component's key figure from `figures(name)` (read from its artifacts once it has ended).
    While a component runs and nothing else reached the console for `interval` seconds, prints
    a "still running" line, so a quiet step still shows a sign of life."""

    _RUNNING = "Component %s is running."
    _FINISHED = "Component %s is finished."

    def __init__(self, figures: Optional[Callable[[str], str]] = None,
                 interval: Optional[float] = None):
        super().__init__(logging.INFO)
        self._figures = figures
        self._interval = interval or progress_interval()
        self._current: Optional[str] = None
        self._started: Dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def set_figures(self, figures: Optional[Callable[[str], str]]) -> None:
        self._figures = figures

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg not in (self._RUNNING, self._FINISHED) or not record.args:
            return
        name = str(record.args[0])
        log = console_logger()
        if record.msg == self._RUNNING:
            self._started[name] = time.time()
            self._current = name
            log.info("%s started", name)
            self._ensure_heartbeat()
            return
        self._current = None
        now = time.time()
        seconds = max(0.0, now - self._started.pop(name, now))
        figure = ""
        if self._figures is not None:
            try:
                figure = self._figures(name)
            except Exception as e:   # a figure is a courtesy; the run must not fail for it
                logging.getLogger(__name__).info("No key figure for %s: %r", name, e)
        log.info("%s finished in %.0f s%s", name, seconds, f": {figure}" if figure else "")

    def _ensure_heartbeat(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._heartbeat, name="console-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self._interval, 5.0)):
            name = self._current
            if name is None or name not in self._started:
                continue
            if time.time() - _last_console_line[0] >= self._interval:
                console_logger().info("%s still running (%.0f s)", name,
                                      time.time() - self._started[name])

    def close(self) -> None:
        self._stop.set()
        super().close()


_last_console_line = [time.time()]


class _StampLastLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        _last_console_line[0] = time.time()
        return True


class RunLog:
    """The handlers installed by `setup_logging`; `close()` removes them."""

    def __init__(self, path: Optional[str], handlers, component_lines: Optional[ComponentLines],
                 replaced=(), root_level: int = logging.WARNING):
        self.path = path
        self.handlers = handlers
        self.component_lines = component_lines
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
                  figures: Optional[Callable[[str], str]] = None,
                  component_lines: bool = True, project_info: bool = False,
                  stream=None) -> RunLog:
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
    lines = None
    if component_lines:
        lines = ComponentLines(figures)
        handlers.append(lines)
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
    return RunLog(path, handlers, lines, replaced, root_level)


# --- key figures of a component, read from its artifacts once it has ended ----------------------

def _anomalies(metadata_path: str) -> Optional[int]:
    """Anomalies found by the latest run's ExampleValidator, over its splits (None: no artifact)."""
    from tfx.types import artifact_utils
    from pipeline.summary import _latest_run, _open_store
    from pipeline.validation import describe_anomalies
    store = _open_store(metadata_path)
    run = _latest_run(store)
    types = {t.id: t.name for t in store.get_artifact_types()}
    found = [a for a in store.get_artifacts_by_context(run.id)
             if types.get(a.type_id) == "ExampleAnomalies"]
    if not found:
        return None
    latest = max(found, key=lambda a: a.id)
    splits = artifact_utils.decode_split_names(latest.properties["split_names"].string_value)
    return len(describe_anomalies(latest.uri, splits))   # the gate's own reading


def run_figures(metadata_path: str, newer_than: Optional[int]) -> Callable[[str], str]:
    """figure(component name) -> its key figure in words, from this run's metadata and
    artifacts (pipeline/summary.py reads them; it is called after each component ends, when the
    orchestrator is not writing)."""

    def figure(name: str) -> str:
        from pipeline.summary import collect_run_summary
        s = collect_run_summary(metadata_path, newer_than=newer_than,
                                with_evaluation=name == "Evaluator")
        if not s:
            return ""
        parts = []
        if s["components"].get(name) == "cached":
            parts.append("cached")
        if name.endswith("ExampleGen") and "examples_per_split" in s:
            ex, cases = s["examples_per_split"], s["cases_per_split"]
            parts.append(", ".join(f"{k} {ex[k]} examples from {cases[k]} cases" for k in ex))
            parts.append(f"{len(s['quarantined'])} quarantined")
        elif name == "ExampleValidator":
            count = _anomalies(metadata_path)
            if count is not None:
                parts.append(f"{count} anomalies")
        elif name == "Trainer" and s.get("training"):
            t = s["training"]
            dice = [d for d in t.get("val_dice", []) if d == d]
            parts.append(f"{t['epochs_run']} epochs, {t['images_per_s']:.1f} images/s"
                         + (f", best val Dice {max(dice):.4f}" if dice else ""))
        elif name == "Evaluator" and "overall" in (s.get("eval_dice") or {}):
            parts.append(f"eval Dice {s['eval_dice']['overall']:.4f}, "
                         f"blessed {'yes' if s.get('blessed') else 'no'}")
        elif name == "Pusher" and "pushed" in s:
            parts.append(f"pushed to {s['pushed_to']}" if s["pushed"] else "not pushed")
        return "; ".join(parts)

    return figure
