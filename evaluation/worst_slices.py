"""The worst slices of the worst volumes, kept while the full-volume evaluation runs (bounded
memory) and written as worst_slices.npz for the report (evaluation/report): per case
`<case_id>__image` (HU float32 [k, H, W]), `__truth` and `__prediction` (uint8 labels) and
`__slice_index` (int32, z in the canonical volume), slices shown as the model sees them
(slices.canonical_to_display) and every n-th pixel kept so H, W <= MAX_PREVIEW_PX."""
from __future__ import annotations

import io
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from preprocessing.slices import canonical_to_display

MAX_PREVIEW_PX = 256


def hu_slices(case, picked: np.ndarray) -> np.ndarray:
    """float32 HU [X, Y, k] of the picked slices of a case read as HU or stored values."""
    if case.hu is not None:
        return case.hu[:, :, picked].astype(np.float32)
    slope, inter = case.scaling
    return case.stored[:, :, picked].astype(np.float32) * np.float32(slope) + np.float32(inter)


def display_stack(volume: np.ndarray, step: int, dtype) -> np.ndarray:
    """Canonical [X, Y, k] -> [k, H, W] as the model sees slices, every `step`-th pixel."""
    display = canonical_to_display(volume)[::step, ::step]
    return np.ascontiguousarray(np.transpose(display, (2, 0, 1)), dtype=dtype)


def worst_slice_arrays(case, truth: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                       count: int) -> Dict[str, np.ndarray]:
    """The `count` axial slices with the most wrong voxels (compared at the model's classes),
    as the four worst_slices.npz arrays of this case."""
    scored_truth = truth if "tumour" in classes else (truth > 0).astype(np.uint8)
    wrong = np.count_nonzero(scored_truth != pred, axis=(0, 1))
    picked = np.argsort(-wrong, kind="stable")[:count]
    step = max(1, math.ceil(max(truth.shape[:2]) / MAX_PREVIEW_PX))
    return {"image": display_stack(hu_slices(case, picked), step, np.float32),
            "truth": display_stack(truth[:, :, picked], step, np.uint8),
            "prediction": display_stack(pred[:, :, picked], step, np.uint8),
            "slice_index": picked.astype(np.int32)}


class WorstVolumes:
    """The slices of the `keep` cases of lowest liver Dice seen so far (bounded memory)."""

    def __init__(self, keep: int, slices: int):
        self.keep, self.slices = keep, slices
        self.kept: List[Tuple[float, str, Dict[str, np.ndarray]]] = []

    def offer(self, case_id: str, dice: float, case, truth, pred, classes) -> None:
        if self.keep <= 0 or self.slices <= 0:
            return
        if len(self.kept) >= self.keep and dice >= self.kept[-1][0]:
            return
        arrays = worst_slice_arrays(case, truth, pred, classes, self.slices)
        self.kept.append((dice, case_id, arrays))
        self.kept.sort(key=lambda item: item[0])
        del self.kept[self.keep:]

    def npz_bytes(self) -> bytes:
        arrays = {f"{case_id}__{part}": value for _, case_id, parts in self.kept
                  for part, value in parts.items()}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()
