"""LiTS lesion-level tumour metrics: detection lesion by lesion and the tumour burden, per case and
pooled. Pure numpy and scipy (no TensorFlow); label maps as in volume_metrics.class_mask (liver is
label >= 1, tumour included; tumour is label == 2).

Lesions: the 3-D connected components of a tumour mask under face connectivity (two voxels are
neighbours when they share a face, 6 per voxel). That is scipy.ndimage.label's default, the one
LiTS' own evaluation script labels lesions with. CT voxels are anisotropic (0.6-0.9 mm in-plane,
1-5 mm between slices): a corner neighbour on the next slice can be 5 mm away, and 26-connectivity
would fuse two lesions that touch at a corner. (LiTS' script also closes 1-voxel in-plane gaps in
the reference before labelling; not here: lesions are the components as drawn, in the reference
and the prediction alike.) A lesion of N voxels, voxel spacing (sx, sy, sz) mm:

  voxels        N
  volume_mm3    V = N sx sy sz
  diameter_mm   (6 V / pi)^(1/3), the diameter of the sphere of volume V (equivalent diameter;
                for an elongated lesion less than the longest axial diameter a radiologist reads)

Size bands, by a reference lesion's diameter d: lt10mm d < 10, 10to20mm 10 <= d <= 20 (both edges
in the middle band, so the names' strict "lt" and "gt" hold), gt20mm d > 20.

Matching, as LiTS' detect_lesions does it, with I(r, p) the voxels reference lesion r and
predicted lesion p share:
  1 merges  each reference lesion that a prediction touches joins the group of the predicted
            lesion with the largest I(r, p); reference lesions sharing that lesion form one group,
            so a predicted blob spanning two lesions is judged against both together
  2 splits  each predicted lesion that touches a reference lesion goes to the one group it shares
            most voxels with (I summed over the group's lesions); the predicted lesions of a group
            are judged together, so a lesion predicted in pieces is judged against their union
  ties      go to the lower label, the component whose first voxel comes first in C order (a
            group's label is its lowest reference label)
  overlap   of a group: the Jaccard index |R & P| / |R | P| of R, the union of its reference
            lesions, and P, the union of its predicted lesions; 0 for a group with no predicted
            lesion left and for a reference lesion that no prediction touches
A reference lesion is detected (true positive) when its group's overlap is > 0.5 (strictly, the
LiTS criterion) and missed (false negative) otherwise. A predicted lesion is matched when its group
was detected; any other is a false positive, one that touches a lesion too little included.
Step 1 is LiTS' rule even where it hurts: a blob that covers one lesion and grazes another, which
no other prediction touches, judges the two together and can miss both. It is kept so that the
figures compare with the benchmark's.

Per case (LesionCase.metrics()):
  lesion_ref, lesion_pred   reference and predicted lesions
  lesion_tp, lesion_fn      reference lesions detected and missed: tp + fn = ref
  lesion_fp                 predicted lesions not matched: matched + fp = pred
  lesion_recall             tp / ref
  lesion_precision          matched / pred: a lesion found in two matched pieces is 2 of 2, a
                            blob spanning two detected lesions 1 of 1 (with tp 2); LiTS' script
                            divides tp by tp + fp, mixing counts of both kinds of lesion
  lesion_recall_<band>      detected / reference lesions of the band; lesion_ref_<band> their count
  lesion_recall_ge10mm      detected / reference lesions of 10 mm and over (bands 10to20mm and
                            gt20mm together: the lesions a detection bar is usually set on)
  tumour_burden_truth, tumour_burden_pred   tumour voxels / liver voxels (a ratio of volumes)
  tumour_burden_error       pred - truth, signed (> 0: too much tumour)

Empty cases, each a rule:
  no reference, no predicted lesion    recall None, precision None   nothing to find or claimed
  no reference, predicted lesions      recall None, precision 0      every prediction is FP
  reference lesions, nothing predicted recall 0,    precision None   every lesion is FN
  a band without reference lesions     its recall None
  an empty liver (no label >= 1, hence no tumour) has burden 0, never None: a prediction without
  liver claims no tumour and its case stays in the burden figures at error -truth burden (LiTS'
  script gave it a large constant).
None means undefined: JSON null, as in volume_metrics.

Pooled (LesionTally.summary()): every count summed over cases; recall = sum tp / sum ref,
precision = sum matched / sum pred, per band likewise, None while the sum below is 0. A case
without lesions adds 0 to every count: it counts in `cases` and in the burden figures, not in the
lesion ratios. tumour_burden_error_mean is the mean signed error (bias), _rmse the root mean square
(the LiTS figure), _max_abs the largest |error|. All ratios and burden figures None before a case.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from evaluation.volume_metrics import class_mask

BANDS = ("lt10mm", "10to20mm", "gt20mm")
BAND_EDGES_MM = (10.0, 20.0)
MIN_OVERLAP = 0.5
Metrics = Dict[str, Optional[float]]


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One connected component: its label in the label map and its size."""
    label: int
    voxels: int
    volume_mm3: float
    diameter_mm: float

    @property
    def band(self) -> str:
        return size_band(self.diameter_mm)


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere of this volume: (6 V / pi)^(1/3)."""
    return (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)


def size_band(diameter_mm: float) -> str:
    """lt10mm below 10 mm, 10to20mm from 10 to 20 mm inclusive, gt20mm above 20 mm."""
    if diameter_mm < BAND_EDGES_MM[0]:
        return BANDS[0]
    return BANDS[1] if diameter_mm <= BAND_EDGES_MM[1] else BANDS[2]


def lesions(mask: np.ndarray, spacing_mm: Sequence[float], connectivity: int = 1
            ) -> Tuple[np.ndarray, Tuple[Lesion, ...]]:
    """(label map, lesions) of a boolean mask: components 1..n, lesion i - 1 has label i.
    connectivity 1 is face (6) connectivity; 2 and 3 add edges (18) and corners (26)."""
    mask = np.asarray(mask, bool)
    if len(spacing_mm) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} for a {mask.ndim}-D mask")
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, count = ndimage.label(mask, structure=structure)
    voxels = np.bincount(labels[mask], minlength=count + 1)[1:]
    mm3 = float(np.prod(spacing_mm))
    return labels, tuple(Lesion(i + 1, int(n), int(n) * mm3, equivalent_diameter_mm(int(n) * mm3))
                         for i, n in enumerate(voxels))


def _shared_voxels(ref_labels: np.ndarray, pred_labels: np.ndarray, both: np.ndarray,
                   n_pred: int) -> Dict[Tuple[int, int], int]:
    """{(reference label, predicted label): voxels they share}, for the pairs that touch;
    `both` is where both masks are set."""
    codes = ref_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    pairs, counts = np.unique(codes, return_counts=True)
    return {(int(c // (n_pred + 1)), int(c % (n_pred + 1))): int(n)
            for c, n in zip(pairs, counts)}


def _argmax_by_key(shared: Dict[Tuple[int, int], int]) -> Dict[int, int]:
    """{a: the b of the largest shared[(a, b)]}; ties to the lowest b."""
    best: Dict[int, int] = {}
    for (a, b), n in sorted(shared.items()):
        if a not in best or n > shared[(a, best[a])]:
            best[a] = b
    return best


def _group_overlaps(shared: Dict[Tuple[int, int], int], ref: Sequence[Lesion],
                    pred: Sequence[Lesion]
                    ) -> Tuple[Dict[int, float], Dict[int, int], Dict[int, int]]:
    """({group: overlap}, {reference label: group}, {predicted label: group}) for the lesions
    that touch; a group is named by its lowest reference label."""
    claimed_by = _argmax_by_key(shared)                    # step 1: reference -> predicted label
    first: Dict[int, int] = {}                             # predicted label -> its group's name
    for r, p in sorted(claimed_by.items()):
        first.setdefault(p, r)
    owner = {r: first[p] for r, p in claimed_by.items()}   # reference label -> group
    to_group: Dict[Tuple[int, int], int] = {}              # (predicted, group) -> voxels shared
    for (r, p), n in shared.items():
        to_group[(p, owner[r])] = to_group.get((p, owner[r]), 0) + n
    assigned = _argmax_by_key(to_group)                    # step 2: predicted label -> group
    ref_voxels: Dict[int, int] = {}
    for r, group in owner.items():
        ref_voxels[group] = ref_voxels.get(group, 0) + ref[r - 1].voxels
    inter, pred_voxels = dict.fromkeys(ref_voxels, 0), dict.fromkeys(ref_voxels, 0)
    for p, group in assigned.items():
        inter[group] += to_group[(p, group)]
        pred_voxels[group] += pred[p - 1].voxels
    jaccard = {g: inter[g] / (ref_voxels[g] + pred_voxels[g] - inter[g]) for g in ref_voxels}
    return jaccard, owner, assigned


def _bounding_box(mask: np.ndarray) -> Tuple[slice, ...]:
    """The smallest box holding every voxel of a mask (all of it when it is empty)."""
    spans = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not hits.size:
            return (slice(None),) * mask.ndim
        spans.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(spans)


@dataclasses.dataclass(frozen=True)
class LesionMatch:
    """The lesions of one case and how they matched; no arrays, cheap to keep."""
    reference: Tuple[Lesion, ...]
    predicted: Tuple[Lesion, ...]
    overlap: Tuple[float, ...]          # per reference lesion: its group's Jaccard index
    detected: Tuple[bool, ...]          # per reference lesion: overlap > the threshold
    matched: Tuple[bool, ...]           # per predicted lesion: its group was detected

    @property
    def tp(self) -> int:
        return sum(self.detected)

    @property
    def fn(self) -> int:
        return len(self.reference) - self.tp

    @property
    def fp(self) -> int:
        return len(self.predicted) - sum(self.matched)

    def band_counts(self) -> Dict[str, Tuple[int, int]]:
        """{band: (detected, reference lesions)}."""
        counts = {band: [0, 0] for band in BANDS}
        for lesion, found in zip(self.reference, self.detected):
            counts[lesion.band][0] += int(found)
            counts[lesion.band][1] += 1
        return {band: (hit, total) for band, (hit, total) in counts.items()}


def match_lesions(truth: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float],
                  min_overlap: float = MIN_OVERLAP, connectivity: int = 1) -> LesionMatch:
    """The lesions of two boolean tumour masks, matched as the module docstring says."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    box = _bounding_box(truth | pred)  # crop to both masks: the labels come out the same
    truth, pred = truth[box], pred[box]
    ref_labels, ref = lesions(truth, spacing_mm, connectivity)
    pred_labels, predicted = lesions(pred, spacing_mm, connectivity)
    shared = _shared_voxels(ref_labels, pred_labels, truth & pred, len(predicted))
    jaccard, owner, assigned = _group_overlaps(shared, ref, predicted)
    overlap = tuple(jaccard[owner[r.label]] if r.label in owner else 0.0 for r in ref)
    matched = tuple(p.label in assigned and jaccard[assigned[p.label]] > min_overlap
                    for p in predicted)
    return LesionMatch(ref, predicted, overlap, tuple(o > min_overlap for o in overlap), matched)


def tumour_burden(labels: np.ndarray, tumour: Optional[np.ndarray] = None) -> float:
    """Tumour voxels / liver voxels (label == 2 over label >= 1); 0 when there is no liver.
    `tumour`, when given, is class_mask(labels, "tumour") already computed."""
    liver = int(np.count_nonzero(class_mask(labels, "liver")))
    if tumour is None:
        tumour = class_mask(labels, "tumour")
    return int(np.count_nonzero(tumour)) / liver if liver else 0.0


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return numerator / denominator if denominator else None


def _lesion_figures(tp: int, ref: int, matched: int, pred: int,
                    bands: Dict[str, Tuple[int, int]]) -> Metrics:
    """The lesion keys shared by a case and the pool, from counts."""
    figures: Metrics = {"lesion_ref": ref, "lesion_pred": pred, "lesion_tp": tp,
                        "lesion_fn": ref - tp, "lesion_fp": pred - matched,
                        "lesion_recall": _ratio(tp, ref), "lesion_precision": _ratio(matched, pred)}
    for band, (hit, total) in bands.items():
        figures[f"lesion_recall_{band}"] = _ratio(hit, total)
        figures[f"lesion_ref_{band}"] = total
    large = [bands[band] for band in BANDS[1:] if band in bands]
    figures["lesion_recall_ge10mm"] = _ratio(sum(h for h, _ in large), sum(t for _, t in large))
    return figures


@dataclasses.dataclass(frozen=True)
class LesionCase:
    """The lesion match and tumour burdens of one case."""
    match: LesionMatch
    burden_truth: float
    burden_pred: float

    @property
    def burden_error(self) -> float:
        return self.burden_pred - self.burden_truth

    def metrics(self) -> Metrics:
        """The per-case keys of the module docstring: ints, floats and None."""
        m = self.match
        return {**_lesion_figures(m.tp, len(m.reference), sum(m.matched), len(m.predicted),
                                  m.band_counts()),
                "tumour_burden_truth": self.burden_truth, "tumour_burden_pred": self.burden_pred,
                "tumour_burden_error": self.burden_error}


def measure_lesions(truth_labels: np.ndarray, pred_labels: np.ndarray,
                    spacing_mm: Sequence[float], min_overlap: float = MIN_OVERLAP,
                    connectivity: int = 1) -> LesionCase:
    """Lesion match and tumour burdens of one case from its label maps (0, 1 liver, 2 tumour)."""
    if truth_labels.shape != pred_labels.shape:
        raise ValueError(f"truth {truth_labels.shape} and prediction {pred_labels.shape} "
                         "differ in shape")
    truth, pred = class_mask(truth_labels, "tumour"), class_mask(pred_labels, "tumour")
    match = match_lesions(truth, pred, spacing_mm, min_overlap, connectivity)
    return LesionCase(match, tumour_burden(truth_labels, truth), tumour_burden(pred_labels, pred))


def lesion_metrics(truth_labels: np.ndarray, pred_labels: np.ndarray,
                   spacing_mm: Sequence[float]) -> Metrics:
    """The JSON-ready per-case dict of one case (LiTS criterion, face connectivity)."""
    return measure_lesions(truth_labels, pred_labels, spacing_mm).metrics()


@dataclasses.dataclass
class LesionTally:
    """Lesion counts and tumour-burden errors pooled over the cases added so far."""
    tp: int = 0
    ref: int = 0
    matched: int = 0
    pred: int = 0
    bands: Dict[str, List[int]] = dataclasses.field(
        default_factory=lambda: {band: [0, 0] for band in BANDS})
    burden_errors: List[float] = dataclasses.field(default_factory=list)

    def add(self, case: LesionCase) -> None:
        m = case.match
        self.tp += m.tp
        self.ref += len(m.reference)
        self.matched += sum(m.matched)
        self.pred += len(m.predicted)
        for band, (hit, total) in m.band_counts().items():
            self.bands[band][0] += hit
            self.bands[band][1] += total
        self.burden_errors.append(case.burden_error)

    def summary(self) -> Metrics:
        """The pooled keys of the module docstring."""
        bands = {band: (hit, total) for band, (hit, total) in self.bands.items()}
        figures = {"cases": len(self.burden_errors),
                   **_lesion_figures(self.tp, self.ref, self.matched, self.pred, bands)}
        errors = np.asarray(self.burden_errors, float)
        if not errors.size:
            return {**figures, "tumour_burden_error_mean": None,
                    "tumour_burden_error_rmse": None, "tumour_burden_error_max_abs": None}
        return {**figures, "tumour_burden_error_mean": float(errors.mean()),
                "tumour_burden_error_rmse": float(np.sqrt(np.mean(errors ** 2))),
                "tumour_burden_error_max_abs": float(np.abs(errors).max())}
