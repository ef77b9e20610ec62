"""Patient-level train/eval split: every slice of a case goes where its case goes."""
from __future__ import annotations

import hashlib
from typing import Dict, Iterable, Optional, Sequence

TRAIN, EVAL = "train", "eval"


def assign_splits(case_ids: Iterable[str], eval_fraction: float, seed: int = 0,
                  eval_cases: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """Maps each case id to "train" or "eval", deterministically.

    With `eval_cases` (an explicit list, e.g. the paper's volumes 0-27) those go to eval and the
    rest to train. Otherwise cases are ordered by a seeded hash and the first
    round(n * eval_fraction) go to eval; with two or more cases each split gets at least one, so
    a small data set never ends up with an empty split.
    """
    case_ids = sorted(set(case_ids))
    if eval_cases is not None:
        wanted = set(eval_cases)
        return {c: EVAL if c in wanted else TRAIN for c in case_ids}
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    ranked = sorted(case_ids, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    n_eval = round(len(ranked) * eval_fraction)
    if len(ranked) >= 2:
        n_eval = min(max(n_eval, 1), len(ranked) - 1)
    eval_set = set(ranked[:n_eval])
    return {c: EVAL if c in eval_set else TRAIN for c in case_ids}
