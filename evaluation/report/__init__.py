"""eval_report.html: a self-contained Dice dashboard for one evaluated model
(docs/evaluation_report.md).

    write_report(volume_eval_dir, "eval_report.html", evaluation_uri=..., blessing_uri=...)

or `python -m evaluation.report --help`. Reads evaluation/volume_eval.py's folder (metrics.json,
worst_slices.npz) and, when given, the Evaluator's ModelEvaluation and ModelBlessing artifacts;
every path may be a URI."""
from __future__ import annotations

import shlex
from typing import Any, Dict, Optional

from common import storage

# run_info keys that are also command-line flags (so the shown command reproduces the report).
RUN_INFO_FLAGS = ("run_id", "model_id", "dice_lower_bound", "dice_change_tolerance")


def reproduce_command(volume_eval_dir: str, output_path: str, evaluation_uri: Optional[str],
                      blessing_uri: Optional[str], run_info: Dict[str, Any]) -> str:
    args = ["--volume_eval", storage.absolute(volume_eval_dir)]
    if evaluation_uri:
        args += ["--evaluation", storage.absolute(evaluation_uri)]
    if blessing_uri:
        args += ["--blessing", storage.absolute(blessing_uri)]
    for key in RUN_INFO_FLAGS:
        if run_info.get(key) is not None:
            args += [f"--{key}", str(run_info[key])]
    args += ["--output", storage.absolute(output_path)]
    return ".venv/bin/python -m evaluation.report " + " ".join(shlex.quote(a) for a in args)


def write_report(volume_eval_dir: str, output_path: str, evaluation_uri: Optional[str] = None,
                 blessing_uri: Optional[str] = None,
                 run_info: Optional[Dict[str, Any]] = None) -> str:
    """Writes the report and returns its path. run_info: optional "run_id", "model_id" (shown;
    the model defaults to metrics.json's URI), "dice_lower_bound", "dice_change_tolerance"
    (override the thresholds read from the evaluation)."""
    from evaluation.report.header import ReportData
    from evaluation.report.inputs import read_blessing, read_volume_eval, resolve_thresholds
    from evaluation.report.page import render_page
    run_info = dict(run_info or {})
    volume_eval = read_volume_eval(volume_eval_dir)
    tfma = None
    if evaluation_uri:
        from evaluation.report.tfma_slices import read_tfma_summary  # imports TFMA: slow
        tfma = read_tfma_summary(evaluation_uri)
    data = ReportData(
        volume_eval=volume_eval,
        thresholds=resolve_thresholds(run_info, tfma.thresholds if tfma else None),
        blessed=read_blessing(blessing_uri), tfma=tfma, run_info=run_info,
        inputs={"Volume evaluation": volume_eval_dir, "TFMA evaluation": evaluation_uri,
                "Blessing": blessing_uri},
        command=reproduce_command(volume_eval_dir, output_path, evaluation_uri, blessing_uri,
                                  run_info))
    output_path = storage.absolute(output_path)
    storage.write_text(output_path, render_page(data))
    return output_path
