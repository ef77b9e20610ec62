"""Full-volume segmentation metrics, as the LiTS challenge reports them, per case and pooled.

Classes: "liver" is label >= 1 (liver including tumour), "tumour" is label == 2. For one case
and class, with T the truth mask, P the predicted mask (both boolean, same grid) and the voxel
spacing in mm along the arrays' axes:

  dice      2 |T & P| / (|T| + |P|)
  voe       1 - |T & P| / |T | P|            volumetric overlap error, 1 - Jaccard
  rvd       (|P| - |T|) / |T|                relative volume difference, signed (> 0: too large)
  assd_mm   average symmetric surface distance: every surface element of both surfaces, its
            distance to the other surface, averaged weighted by element area (both surfaces
            pooled, as LiTS defines it)
  msd_mm    maximum symmetric surface distance: the Hausdorff distance (100th percentile)
  hd95_mm   95th-percentile Hausdorff: the larger of the two directed 95th percentiles
  truth_ml, pred_ml   |T| and |P| in millilitres

Surface distances come from DeepMind's `surface_distance` package (compute_surface_distances,
compute_average_surface_distance, compute_robust_hausdorff): surfaces are made of surface
elements between voxels, weighted by their area in mm^2, so anisotropic spacing is exact.

Empty masks, the same rules for every class and metric:

  T and P empty      dice 1, voe 0, rvd 0,    assd/msd/hd95 0      nothing to find, none found
  T empty, P not     dice 0, voe 1, rvd None, assd/msd/hd95 None   rvd divides by |T|; there
                                                                   is no truth surface
  P empty, T not     dice 0, voe 1, rvd -1,   assd/msd/hd95 None   no predicted surface

None means undefined: JSON null, an empty CSV cell. (The package itself answers inf there.)

Pooled over the cases of an evaluation, per class: global Dice = 2 sum|T & P| / sum(|T| + |P|)
(LiTS "Dice global": large livers weigh more) and mean Dice = the mean of the per-case Dice
(with the rules above, so a tumour-free case predicted tumour-free counts 1). Global Dice is 1
when every mask of every case is empty, and both are None before any case was added.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import surface_distance

CLASS_NAMES = ("liver", "tumour")
METRIC_NAMES = ("dice", "voe", "rvd", "assd_mm", "msd_mm", "hd95_mm", "truth_ml", "pred_ml")
TUMOUR_LABEL = 2
Metrics = Dict[str, Optional[float]]


def class_mask(labels: np.ndarray, class_name: str) -> np.ndarray:
    """Boolean mask of a class in a label map (0 background, 1 liver, 2 tumour)."""
    if class_name == "liver":
        return labels >= 1
    if class_name == "tumour":
        return labels == TUMOUR_LABEL
    raise ValueError(f"unknown class {class_name!r}; known: {CLASS_NAMES}")


@dataclasses.dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of one case and class: all that the overlap metrics need."""
    intersection: int
    truth: int
    pred: int

    @classmethod
    def of(cls, truth: np.ndarray, pred: np.ndarray) -> "OverlapCounts":
        return cls(int(np.count_nonzero(truth & pred)), int(np.count_nonzero(truth)),
                   int(np.count_nonzero(pred)))


def overlap_metrics(counts: OverlapCounts) -> Metrics:
    """dice, voe, rvd with the empty-mask rules of the module docstring."""
    if counts.truth == 0 and counts.pred == 0:
        return {"dice": 1.0, "voe": 0.0, "rvd": 0.0}
    union = counts.truth + counts.pred - counts.intersection
    return {"dice": 2.0 * counts.intersection / (counts.truth + counts.pred),
            "voe": 1.0 - counts.intersection / union,
            "rvd": (counts.pred - counts.truth) / counts.truth if counts.truth else None}


def surface_metrics(truth: np.ndarray, pred: np.ndarray,
                    spacing_mm: Sequence[float]) -> Metrics:
    """assd_mm, msd_mm, hd95_mm; 0 when both masks are empty, None when only one is."""
    truth_any, pred_any = bool(truth.any()), bool(pred.any())
    if not truth_any and not pred_any:
        return {"assd_mm": 0.0, "msd_mm": 0.0, "hd95_mm": 0.0}
    if not (truth_any and pred_any):
        return {"assd_mm": None, "msd_mm": None, "hd95_mm": None}
    distances = surface_distance.compute_surface_distances(
        np.asarray(truth, bool), np.asarray(pred, bool), [float(s) for s in spacing_mm])
    truth_to_pred, pred_to_truth = surface_distance.compute_average_surface_distance(distances)
    truth_area = float(np.sum(distances["surfel_areas_gt"]))
    pred_area = float(np.sum(distances["surfel_areas_pred"]))
    # The directed means pooled by area: the mean over every surface element of both surfaces.
    assd = (truth_to_pred * truth_area + pred_to_truth * pred_area) / (truth_area + pred_area)
    return {"assd_mm": float(assd),
            "msd_mm": float(surface_distance.compute_robust_hausdorff(distances, 100)),
            "hd95_mm": float(surface_distance.compute_robust_hausdorff(distances, 95))}


def mask_metrics(truth: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float],
                 counts: Optional[OverlapCounts] = None) -> Metrics:
    """Every metric of METRIC_NAMES for one pair of boolean masks."""
    counts = counts or OverlapCounts.of(truth, pred)
    ml_per_voxel = float(np.prod(spacing_mm)) / 1000.0
    return {**overlap_metrics(counts), **surface_metrics(truth, pred, spacing_mm),
            "truth_ml": counts.truth * ml_per_voxel, "pred_ml": counts.pred * ml_per_voxel}


@dataclasses.dataclass
class DiceTally:
    """Global and mean Dice of one class over the cases added so far."""
    intersection: int = 0
    total: int = 0                      # sum of |T| + |P|
    dices: List[float] = dataclasses.field(default_factory=list)

    def add(self, counts: OverlapCounts) -> None:
        self.intersection += counts.intersection
        self.total += counts.truth + counts.pred
        self.dices.append(overlap_metrics(counts)["dice"])

    def summary(self) -> Metrics:
        if not self.dices:
            return {"global_dice": None, "mean_dice": None}
        global_dice = 2.0 * self.intersection / self.total if self.total else 1.0
        return {"global_dice": global_dice, "mean_dice": float(np.mean(self.dices))}


class CaseScorer:
    """Scores cases class by class and keeps the pooled Dice of every class."""

    def __init__(self, classes: Sequence[str]):
        for name in classes:
            class_mask(np.zeros(1, np.uint8), name)   # an unknown class fails here, not later
        self.classes = tuple(classes)
        self.tallies = {name: DiceTally() for name in self.classes}

    def measure(self, truth_labels: np.ndarray, pred_labels: np.ndarray,
                spacing_mm: Sequence[float]
                ) -> Tuple[Dict[str, Metrics], Dict[str, OverlapCounts]]:
        """({class: metrics}, {class: counts}) of one case (label maps on the same grid),
        without adding it to the tallies (`add` does, once every model of the case scored)."""
        if truth_labels.shape != pred_labels.shape:
            raise ValueError(f"truth {truth_labels.shape} and prediction {pred_labels.shape} "
                             "differ in shape")
        metrics, counts = {}, {}
        for name in self.classes:
            truth, pred = class_mask(truth_labels, name), class_mask(pred_labels, name)
            counts[name] = OverlapCounts.of(truth, pred)
            metrics[name] = mask_metrics(truth, pred, spacing_mm, counts[name])
        return metrics, counts

    def add(self, counts: Dict[str, OverlapCounts]) -> None:
        for name, class_counts in counts.items():
            self.tallies[name].add(class_counts)

    def summary(self) -> Dict[str, Metrics]:
        """{class: {"global_dice", "mean_dice"}}."""
        return {name: tally.summary() for name, tally in self.tallies.items()}
