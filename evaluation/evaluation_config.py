"""The Evaluator's settings: a plain dataclass (no TFMA), so pipeline/configs.py and the runners
can hold it without importing TensorFlow Model Analysis. evaluation/tfma_config.py applies it."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EvalConfig:
    dice_lower_bound: float = 0.85     # absolute bar on eval-split liver Dice to bless
    dice_change_tolerance: float = 0.01  # may be this much worse than the last blessed model
