"""What the multi-replica and multi-worker tests share: reading a training script's result, and
comparing two trainings step by step (per-step losses, trained weights). Each test passes the
loss tolerance measured on its own data."""
from __future__ import annotations

import json

import numpy as np

STEPS = 3   # SGD steps each training script runs (one per epoch)
# Measured on 3 steps (max |dw| / max weight change): 2 replicas vs 1 replica with the same
# BatchNorm arithmetic ~4e-3 (2 workers vs 1 process: 6.6e-3), the broken runs 0.40-0.70.
# 5e-2 leaves room for float noise and still sits ~8x below the bugs.
WEIGHT_TOL = 5e-2


def read_training_result(log_text: str, out_dir, variants) -> dict:
    """The training script's RESULT line and saved weights: {variant: {"loss", "initial",
    "final"}}."""
    line = [l for l in log_text.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    for variant in variants:
        with np.load(out_dir / f"{variant}.npz") as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        half = len(arrays) // 2
        result[variant] = {"loss": result[variant], "initial": arrays[:half],
                           "final": arrays[half:]}
    return result


def weight_mismatch(reference: dict, other: dict) -> float:
    """Largest difference of the trained weights, relative to how far training moved them:
    max |w_other - w_ref| / max |w_ref - w_initial| over the trainable weights. A halved
    update scores ~0.5 here, however small the steps are next to |w|."""
    for a, b in zip(reference["initial"], other["initial"], strict=True):
        np.testing.assert_array_equal(a, b)     # the same start, or the comparison is moot
    moved = max(np.abs(f - i).max() for f, i in zip(reference["final"], reference["initial"]))
    assert moved > 0, "training did not change the weights"
    return max(np.abs(b - a).max()
               for a, b in zip(reference["final"], other["final"], strict=True)) / moved


def matches(reference: dict, other: dict, loss_rtol: float) -> bool:
    """The per-step losses (within `loss_rtol`) and the trained weights agree."""
    losses_agree = len(other["loss"]) == len(reference["loss"]) == STEPS and np.allclose(
        other["loss"], reference["loss"], rtol=loss_rtol, atol=0)
    return losses_agree and weight_mismatch(reference, other) < WEIGHT_TOL
