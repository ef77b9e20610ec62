"""One model under full-volume evaluation: it segments a case as predict.py does (inference/,
with the same InferenceConfig: mirroring, threshold), and every case is scored twice, on the
model's own labels ("raw") and after the 3-D post-processing (inference/postprocess.py), so the
report shows what post-processing does on this data whatever predict.py's setting. A model
with a tumour channel is also scored per lesion (evaluation/lesion_metrics.py).

Roles in metrics.json: "candidate", "baseline" (raw), and the same with the suffix
POSTPROCESSED ("candidate_postprocessed", "baseline_postprocessed").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from evaluation.lesion_metrics import LesionTally, measure_lesions
from evaluation.volume_metrics import CaseScorer
from inference.inference_config import InferenceConfig
from inference.postprocess import postprocess

POSTPROCESSED = "_postprocessed"


def classes_of(channels: int) -> List[str]:
    """The classes a model with this many output channels is scored on."""
    return ["liver", "tumour"] if channels > 1 else ["liver"]


@dataclasses.dataclass
class Scoring:
    """The tallies of one way of labelling (raw or post-processed) over the cases so far."""
    scorer: CaseScorer
    lesions: Optional[LesionTally]     # None without a tumour class


@dataclasses.dataclass
class ModelUnderTest:
    """One model: its serving function and SliceConfig (inference/model.py load_model) and,
    once it has segmented a case (which tells its output channels), its two scorings."""
    role: str                 # "candidate" or "baseline"
    uri: str
    serve: Callable
    slice_config: Any
    scorings: Dict[str, Scoring] = dataclasses.field(default_factory=dict)   # role -> Scoring

    @property
    def classes(self) -> Optional[Tuple[str, ...]]:
        return self.scorings[self.role].scorer.classes if self.scorings else None

    def segment(self, case, options: InferenceConfig) -> Dict[str, np.ndarray]:
        """{role: uint8 labels in the canonical grid, role + POSTPROCESSED: post-processed};
        the first call fixes the classes."""
        from inference import segmenter  # TensorFlow and Keras: only when a model runs
        raw, channels, _ = segmenter.predict_labels(self.serve, case, self.slice_config,
                                                    options)
        if not self.scorings:
            classes = classes_of(channels)
            self.scorings = {role: Scoring(CaseScorer(classes),
                                           LesionTally() if "tumour" in classes else None)
                             for role in (self.role, self.role + POSTPROCESSED)}
        cleaned, _ = postprocess(raw, case.spacing, options.postprocess_settings(enabled=True))
        return {self.role: raw, self.role + POSTPROCESSED: cleaned}

    def measure(self, truth: np.ndarray, labels: Dict[str, np.ndarray], spacing,
                classes: Sequence[str]) -> Dict[str, Tuple[Dict[str, Any], Any, Any]]:
        """{role: ({class: metrics}, overlap counts, LesionCase or None)}, not yet added.
        `classes`: the candidate's (a class this model lacks gets None)."""
        measured = {}
        for role, pred in labels.items():
            scoring = self.scorings[role]
            scores, counts = scoring.scorer.measure(truth, pred, spacing)
            lesion_case = (measure_lesions(truth, pred, spacing)
                           if scoring.lesions is not None else None)
            measured[role] = ({name: scores.get(name) for name in classes}, counts,
                              lesion_case)
        return measured

    def add(self, measured: Dict[str, Tuple[Dict[str, Any], Any, Any]]) -> None:
        for role, (_, counts, lesion_case) in measured.items():
            self.scorings[role].scorer.add(counts)
            if lesion_case is not None:
                self.scorings[role].lesions.add(lesion_case)

    def pooled_dice(self, role: str, classes: List[str]) -> Dict[str, Any]:
        """{class: {"global_dice", "mean_dice"}} of one role (None per class before a case)."""
        scoring = self.scorings.get(role)
        summary = scoring.scorer.summary() if scoring else {}
        return {name: summary.get(name) for name in classes}

    def pooled_lesions(self, role: str) -> Optional[Dict[str, Any]]:
        scoring = self.scorings.get(role)
        return scoring.lesions.summary() if scoring and scoring.lesions is not None else None
