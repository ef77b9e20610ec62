"""What the report reads: the full-volume evaluation (metrics.json, worst_slices.npz, written by
evaluation/volume_eval.py), the blessing, and the Dice bar. Every path may be a URI (gs://, s3://):
all reads go through common/storage.py. No TFMA here (evaluation/report/tfma_slices.py)."""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, Dict, List, Optional

import numpy as np

from common import storage
from evaluation.evaluation_config import EvalConfig
from schema.contract import SETTINGS_FILE, VOLUME_METRICS_FILE, WORST_SLICES_FILE

# The files TFX's Evaluator writes into a ModelBlessing artifact.
BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"
# worst_slices.npz holds "<case_id>__<part>" arrays.
SLICE_PARTS = ("image", "truth", "prediction", "slice_index")


@dataclasses.dataclass
class WorstSlices:
    """The k worst slices of one volume: HU image, labels 0/1/2, slice numbers in the volume."""
    image: np.ndarray        # float32 [k, H, W]
    truth: np.ndarray        # uint8 [k, H, W]
    prediction: np.ndarray   # uint8 [k, H, W]
    slice_index: np.ndarray  # int32 [k]


@dataclasses.dataclass
class VolumeEval:
    """metrics.json as read; `worst` maps case id -> its worst slices (may be empty); `errors`:
    the cases that could not be read ({"case_id", "file", "reason"})."""
    model_uri: str
    baseline_uri: Optional[str]
    classes: List[str]
    cases: List[Dict[str, Any]]
    global_dice: Dict[str, Any]
    seconds_per_volume: Optional[float]
    worst: Dict[str, WorstSlices]
    errors: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    settings_yaml: Optional[str] = None   # the run's settings.yaml, when the folder holds one
    lesions: Optional[Dict[str, Any]] = None     # {role: pooled lesion figures} (tumour models)
    inference: Optional[Dict[str, Any]] = None   # the InferenceConfig it ran with

    @property
    def has_baseline(self) -> bool:
        return self.baseline_uri is not None or any(c.get("baseline") for c in self.cases)


@dataclasses.dataclass
class Thresholds:
    """The blessing thresholds on liver Dice, and where they were read (said in the report)."""
    dice_lower_bound: float
    dice_change_tolerance: float
    source: str


def read_volume_eval(folder: str) -> VolumeEval:
    metrics = json.loads(storage.read_text(storage.join(folder, VOLUME_METRICS_FILE)))
    worst_path = storage.join(folder, WORST_SLICES_FILE)
    worst = read_worst_slices(worst_path) if storage.exists(worst_path) else {}
    settings_path = storage.join(folder, SETTINGS_FILE)
    return VolumeEval(
        model_uri=(metrics.get("model") or {}).get("uri", ""),
        baseline_uri=(metrics.get("baseline") or {}).get("uri"),
        classes=list(metrics.get("classes") or ["liver"]),
        cases=list(metrics.get("cases") or []),
        global_dice=metrics.get("global") or {},
        seconds_per_volume=metrics.get("seconds_per_volume"),
        worst=worst, errors=list(metrics.get("errors") or []),
        lesions=metrics.get("lesions"), inference=metrics.get("inference"),
        settings_yaml=storage.read_text(settings_path) if storage.exists(settings_path) else None)


def read_worst_slices(path: str) -> Dict[str, WorstSlices]:
    """{case id: WorstSlices}; a case missing one of the four arrays is left out."""
    with np.load(io.BytesIO(storage.read_bytes(path))) as npz:
        parts: Dict[str, Dict[str, np.ndarray]] = {}
        for key in npz.files:
            case_id, _, part = key.rpartition("__")
            if case_id and part in SLICE_PARTS:
                parts.setdefault(case_id, {})[part] = npz[key]
    return {case_id: WorstSlices(**arrays) for case_id, arrays in parts.items()
            if len(arrays) == len(SLICE_PARTS)}


def read_blessing(blessing_uri: Optional[str]) -> Optional[bool]:
    """True / False from a ModelBlessing artifact's BLESSED / NOT_BLESSED file; None when no
    artifact was given. A folder with neither file is an error (wrong URI)."""
    if not blessing_uri:
        return None
    if storage.exists(storage.join(blessing_uri, BLESSED_FILE)):
        return True
    if storage.exists(storage.join(blessing_uri, NOT_BLESSED_FILE)):
        return False
    raise FileNotFoundError(f"{blessing_uri}: no {BLESSED_FILE} or {NOT_BLESSED_FILE} file; "
                            "is this a ModelBlessing artifact (Evaluator/blessing/<id>)?")


def resolve_thresholds(run_info: Dict[str, Any], from_evaluation: Optional[Thresholds]
                       ) -> Thresholds:
    """Explicit values (run_info / command line) win; then what the Evaluator ran with; then
    the pipeline's defaults, labelled as such so nobody mistakes them for the run's."""
    base = from_evaluation or Thresholds(EvalConfig().dice_lower_bound,
                                         EvalConfig().dice_change_tolerance,
                                         "pipeline defaults (EvalConfig); not read from the run")
    bar = run_info.get("dice_lower_bound")
    tolerance = run_info.get("dice_change_tolerance")
    if bar is None and tolerance is None:
        return base
    return Thresholds(base.dice_lower_bound if bar is None else float(bar),
                      base.dice_change_tolerance if tolerance is None else float(tolerance),
                      "given on the command line")
