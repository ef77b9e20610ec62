"""python -m evaluation.report --volume_eval DIR [--evaluation URI] [--blessing URI]
       [--run_id ID] [--model_id ID] [--dice_lower_bound X] [--dice_change_tolerance X]
       --output eval_report.html

Writes the self-contained evaluation report (evaluation/report/__init__.py) and prints its path
and size. Works on any past run: give that run's artifact URIs
(.../Evaluator/evaluation/<id>, .../Evaluator/blessing/<id>)."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from common.process_exit import exit_process
from evaluation.report import write_report


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volume_eval", required=True,
                   help="folder with metrics.json and worst_slices.npz (evaluation/volume_eval.py)")
    p.add_argument("--evaluation", help="the Evaluator's ModelEvaluation artifact URI")
    p.add_argument("--blessing", help="the Evaluator's ModelBlessing artifact URI")
    p.add_argument("--output", default="eval_report.html", help="the HTML file to write")
    p.add_argument("--run_id", help="pipeline run id, shown in the header")
    p.add_argument("--model_id", help="model id, shown (default: the model URI in metrics.json)")
    p.add_argument("--dice_lower_bound", type=float,
                   help="the bar (default: read from the evaluation, else the pipeline default)")
    p.add_argument("--dice_change_tolerance", type=float,
                   help="the allowed drop against the baseline (default: as --dice_lower_bound)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    run_info = {k: getattr(args, k) for k in ("run_id", "model_id", "dice_lower_bound",
                                              "dice_change_tolerance")}
    path = write_report(args.volume_eval, args.output, evaluation_uri=args.evaluation,
                        blessing_uri=args.blessing, run_info=run_info)
    from common import storage
    size_mb = len(storage.read_bytes(path)) / 1e6
    print(f"Wrote {path} ({size_mb:.2f} MB); open it in a browser (no network needed).")
    return 0


if __name__ == "__main__":
    exit_process(main())
