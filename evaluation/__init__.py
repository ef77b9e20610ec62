"""Scoring models: the LiTS volume metrics (volume_metrics.py) and the full-volume evaluation over
every slice (volume_eval.py, also `python -m evaluation.volume_eval`), the worst slices it keeps
(worst_slices.py), the TFMA Dice metric and the Evaluator's config (tfma_dice.py, tfma_config.py,
evaluation_config.py), reading TFMA's results (tfma_results.py), and the HTML report (report/,
also `python -m evaluation.report`). components/ runs these inside TFX; nothing here wires a
pipeline."""
