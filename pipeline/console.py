"""What a person sees while the pipeline runs, on top of the shared console set-up
(common/logs.py): one line when each component starts and ends (with its key figure, read from
its artifacts), "still running" lines for a quiet component, and the key figures themselves.
Progress lines come from the ExampleGen and the Trainer; the run summary from pipeline/summary.py.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Optional, Tuple

from common.logs import RunLog, console_logger, seconds_since_console_line, setup_logging
from schema.contract import progress_interval


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
            if seconds_since_console_line() >= self._interval:
                console_logger().info("%s still running (%.0f s)", name,
                                      time.time() - self._started[name])

    def close(self) -> None:
        self._stop.set()
        super().close()



def setup_run_logging(log_dir: str, verbose: bool = False) -> Tuple[RunLog, ComponentLines]:
    """The pipeline run's console and log file (common/logs.py) with the component lines, whose
    key figures are set once the run's metadata is known (`ComponentLines.set_figures`)."""
    lines = ComponentLines()
    return setup_logging(log_dir, verbose=verbose, extra_handlers=[lines]), lines


# --- key figures of a component, read from its artifacts once it has ended ----------------------

def _anomalies(metadata_path: str) -> Optional[int]:
    """Anomalies found by the latest run's ExampleValidator, over its splits (None: no artifact)."""
    from tfx.types import artifact_utils

    from components.anomalies_gate import describe_anomalies
    from pipeline.summary import _latest_run, _open_store
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
