"""What a person sees while the pipeline runs (pipeline/console.py, trainer/progress.py): the
tiny pipeline run as a user runs it, with stdout and stderr piped (pytest's own warning filters
must not hide what the real console would show, hence the subprocess: tests/shell_runs.py)."""
from __future__ import annotations

import glob
import re
from pathlib import Path

COMPONENTS = ("NiftiExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "Pusher")


def test_piped_run_shows_progress_and_logs_everything_to_a_file(shell_runs):
    proc = shell_runs[0]   # tests/shell_runs.py: piped_local_run
    out_dir = Path(proc.args[proc.args.index("--output_dir") + 1])
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    lines = console.splitlines()

    for name in COMPONENTS:
        assert any(re.search(rf"\b{name} started$", line) for line in lines), (name, console)
        assert any(re.search(rf"\b{name} finished in \d+ s", line) for line in lines), \
            (name, console)
    ends = "\n".join(line for line in lines if " finished in " in line)
    assert re.search(r"NiftiExampleGen finished .*train \d+ examples", ends), ends
    assert re.search(r"Evaluator finished .*eval Dice 0\.\d+, blessed (yes|no)", ends), ends
    progress = [line for line in lines if re.search(
        r"step \d+/\d+, [\d.?]+ images/s, ETA \S+, loss [\d.]+, val Dice", line)]
    assert progress, console
    assert any("Conversion: 5/5 cases done" in line for line in lines), console
    assert "Pipeline run" in proc.stdout   # the run summary, as before

    assert not [line for line in lines if "FutureWarning" in line], console
    assert not [line for line in lines if "Unable to register cu" in line], console

    logs = glob.glob(str(out_dir / "logs" / "run-*.log"))
    assert len(logs) == 1, logs
    printed = proc.stdout.splitlines()
    assert f"Full log: {logs[0]}" in printed[0], printed[0]
    assert f"Full log: {logs[0]}" in printed[-1], printed[-1]
    with open(logs[0]) as f:
        log = f.read()
    assert len(log) > len(console), (len(log), len(console))
    # The full detail: TFX's own lines, Beam's, and the console's lines too.
    assert "Component Trainer is finished." in log
    assert "Component Pusher is finished." in log
    assert "Trainer finished in" in log
    # Not flooded: the lines that say something stay few; "still running" heartbeats come at
    # most one per interval (2 s here) of a quiet component, so their number follows the host's
    # speed (on a 2-core AVX2 host the tiny run takes ~2 min, ~40 of them).
    heartbeats = [line for line in lines if " still running (" in line]
    assert len(lines) - len(heartbeats) < 100, len(lines) - len(heartbeats)
    stamps = [_seconds(line) for line in lines if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(heartbeats) <= (stamps[-1] - stamps[0]) / 2 + 1, (len(heartbeats), stamps)


def _seconds(line: str) -> int:
    hours, minutes, seconds = (int(v) for v in line[:8].split(":"))
    return hours * 3600 + minutes * 60 + seconds
