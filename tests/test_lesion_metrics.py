"""evaluation/lesion_metrics.py against lesions counted by hand.

Lesions are boxes, so every count is a product of edges: a reference box of 2 x 2 x 5 voxels with
a predicted 2 x 2 x 3 box inside it shares 12 of its 20 voxels, a Jaccard index of 12 / 20. Label
maps are all liver (label 1) with the tumour boxes as label 2, so a tumour burden is tumour voxels
over the grid's voxels. The lesions of a case are numbered in C order of their first voxel.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from evaluation.lesion_metrics import (LesionTally, equivalent_diameter_mm, lesion_metrics,
                                       lesions, match_lesions, measure_lesions, size_band)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISO = (1.0, 1.0, 1.0)


def boxes(shape, *corners_and_sizes) -> np.ndarray:
    """A boolean mask of the boxes (start, size), each a voxel corner and edge lengths."""
    mask = np.zeros(shape, bool)
    for start, size in corners_and_sizes:
        mask[tuple(slice(o, o + n) for o, n in zip(start, size))] = True
    return mask


def label_map(tumour: np.ndarray) -> np.ndarray:
    """Liver everywhere, tumour where the mask is."""
    return np.where(tumour, 2, 1).astype(np.uint8)


# Two reference lesions and three predicted ones (grid 20 x 20 x 30, 1 mm voxels):
#   A 2x2x5 = 20 voxels, a 2x2x3 = 12 inside it: Jaccard 12/20 = 0.6, detected
#   B 2x2x10 = 40 voxels, b 2x2x3 = 12 inside it: 12/40 = 0.3, missed; b is a false positive
#   c 2x2x2 = 8 voxels far from both: a false positive
MIXED_SHAPE = (20, 20, 30)
MIXED_TRUTH = boxes(MIXED_SHAPE, ((2, 2, 0), (2, 2, 5)), ((10, 10, 0), (2, 2, 10)))
MIXED_PRED = boxes(MIXED_SHAPE, ((2, 2, 0), (2, 2, 3)), ((10, 10, 0), (2, 2, 3)),
                   ((15, 15, 20), (2, 2, 2)))
# One reference lesion of 4x4x8 = 128 voxels predicted as two 4x4x3 pieces with a 2-slice gap:
# each piece alone 48/128 = 0.375, their union 96/128 = 0.75.
SPLIT_SHAPE = (8, 8, 10)
SPLIT_TRUTH = boxes(SPLIT_SHAPE, ((2, 2, 0), (4, 4, 8)))
SPLIT_PRED = boxes(SPLIT_SHAPE, ((2, 2, 0), (4, 4, 3)), ((2, 2, 5), (4, 4, 3)))


def test_lesions_are_face_connected_components_with_their_sizes():
    mask = boxes((6, 6, 6), ((0, 0, 0), (2, 2, 2)), ((2, 2, 2), (1, 1, 1)))  # corner contact
    labels, found = lesions(mask, (0.5, 0.5, 2.0))
    assert [(c.label, c.voxels) for c in found] == [(1, 8), (2, 1)]
    assert found[0].volume_mm3 == pytest.approx(8 * 0.5)
    assert found[0].diameter_mm == pytest.approx((6 * 4.0 / math.pi) ** (1 / 3))   # 1.97 mm
    assert labels[2, 2, 2] == 2 and labels[1, 1, 1] == 1 and labels[3, 3, 3] == 0
    _, joined = lesions(mask, ISO, connectivity=3)                            # corners join
    assert [c.voxels for c in joined] == [9]


def test_one_detected_one_missed_one_stray():
    m = match_lesions(MIXED_TRUTH, MIXED_PRED, ISO)
    assert [c.voxels for c in m.reference] == [20, 40]
    assert [c.voxels for c in m.predicted] == [12, 12, 8]
    assert m.overlap == pytest.approx((0.6, 0.3))
    assert m.detected == (True, False)
    assert m.matched == (True, False, False)
    assert (m.tp, m.fn, m.fp) == (1, 1, 2)
    metrics = measure_lesions(label_map(MIXED_TRUTH), label_map(MIXED_PRED), ISO).metrics()
    assert metrics["lesion_recall"] == 0.5
    assert metrics["lesion_precision"] == pytest.approx(1 / 3)


def test_the_margin_around_the_lesions_changes_nothing():
    # match_lesions crops to the lesions' bounding box; padding the grid moves that box.
    padded = [np.pad(mask, ((3, 1), (0, 4), (5, 2))) for mask in (MIXED_TRUTH, MIXED_PRED)]
    assert match_lesions(*padded, ISO) == match_lesions(MIXED_TRUTH, MIXED_PRED, ISO)


@pytest.mark.parametrize("inside, detected", [(9, False), (10, False), (11, True)],
                         ids=["0.45", "exactly_0.5", "0.55"])
def test_detection_needs_an_overlap_strictly_above_one_half(inside, detected):
    # A 1x1x20 reference line, the first `inside` voxels of it predicted: Jaccard inside / 20.
    truth = boxes((3, 3, 20), ((1, 1, 0), (1, 1, 20)))
    pred = boxes((3, 3, 20), ((1, 1, 0), (1, 1, inside)))
    m = match_lesions(truth, pred, ISO)
    assert m.overlap == pytest.approx((inside / 20,))
    assert m.detected == (detected,) and m.matched == (detected,)


def test_a_lesion_predicted_in_two_pieces_is_judged_against_their_union():
    m = match_lesions(SPLIT_TRUTH, SPLIT_PRED, ISO)
    assert [c.voxels for c in m.predicted] == [48, 48]
    assert m.overlap == pytest.approx((0.75,))
    assert m.detected == (True,) and m.matched == (True, True)
    assert (m.tp, m.fn, m.fp) == (1, 0, 0)


def test_one_blob_over_two_lesions_detects_both():
    # A and B: 2x2x4 = 16 voxels each, one slice apart; the blob 2x2x9 = 36 covers both and the
    # gap. Each alone 16/36 = 0.44; together 32/36 = 8/9.
    truth = boxes((4, 4, 10), ((1, 1, 0), (2, 2, 4)), ((1, 1, 5), (2, 2, 4)))
    pred = boxes((4, 4, 10), ((1, 1, 0), (2, 2, 9)))
    m = match_lesions(truth, pred, ISO)
    assert m.overlap == pytest.approx((8 / 9, 8 / 9))
    assert m.detected == (True, True) and m.matched == (True,)
    metrics = measure_lesions(label_map(truth), label_map(pred), ISO).metrics()
    assert (metrics["lesion_tp"], metrics["lesion_fn"], metrics["lesion_fp"]) == (2, 0, 0)
    assert metrics["lesion_recall"] == 1.0 and metrics["lesion_precision"] == 1.0


def test_a_grazed_lesion_joins_the_blob_unless_another_prediction_covers_it_more():
    # One slice, 10 x 5 voxels: reference rows A = x 0-9 at y 0 and B = x 0-9 at y 4 (10 each).
    # P covers A and runs up x = 9 to touch B in one voxel: 10 + 4 = 14 voxels.
    truth = boxes((10, 5, 1), ((0, 0, 0), (10, 1, 1)), ((0, 4, 0), (10, 1, 1)))
    blob = boxes((10, 5, 1), ((0, 0, 0), (10, 1, 1)), ((9, 1, 0), (1, 4, 1)))
    # Alone, P claims both (step 1): (10 + 1) / (20 + 14 - 11) = 11/23 < 0.5, both missed.
    alone = match_lesions(truth, blob, ISO)
    assert alone.overlap == pytest.approx((11 / 23, 11 / 23))
    assert (alone.tp, alone.fn, alone.fp) == (0, 2, 1)
    # Q = x 0-7 at y 4 (8 voxels, one voxel short of P) covers B more: A is P's, 10/14; B is
    # Q's, 8/10; P's one voxel of B goes with A (step 2) and counts in neither intersection.
    with_q = blob | boxes((10, 5, 1), ((0, 4, 0), (8, 1, 1)))
    m = match_lesions(truth, with_q, ISO)
    assert [c.voxels for c in m.predicted] == [14, 8]
    assert m.overlap == pytest.approx((10 / 14, 8 / 10))
    assert (m.tp, m.fn, m.fp) == (2, 0, 0)


def test_size_band_edges():
    assert equivalent_diameter_mm(math.pi / 6 * 1000) == pytest.approx(10.0)
    assert [size_band(d) for d in (9.99, 10.0, 20.0, 20.01)] == [
        "lt10mm", "10to20mm", "10to20mm", "gt20mm"]


def test_recall_per_size_band_with_anisotropic_voxels():
    # 0.5 x 0.5 x 2 mm voxels of 0.5 mm^3; d = (6 V / pi)^(1/3):
    #   4x4x4 = 64 voxels, 32 mm^3, d 3.94 mm     missed
    #   8x8x12 = 768 voxels, 384 mm^3, d 9.02 mm  found (11.4 mm were the voxels 1 mm^3)
    #   16x16x8 = 2048 voxels, 1024 mm^3, d 12.51 found
    #   32x32x10 = 10240 voxels, 5120 mm^3, d 21.38 missed
    spacing, shape = (0.5, 0.5, 2.0), (80, 80, 40)
    small, mid_small = ((0, 0, 0), (4, 4, 4)), ((10, 0, 0), (8, 8, 12))
    medium, large = ((30, 0, 0), (16, 16, 8)), ((48, 40, 20), (32, 32, 10))
    truth = boxes(shape, small, mid_small, medium, large)
    pred = boxes(shape, mid_small, medium)
    m = match_lesions(truth, pred, spacing)
    assert [c.diameter_mm for c in m.reference] == pytest.approx(
        [(6 * v / math.pi) ** (1 / 3) for v in (32, 384, 1024, 5120)])
    assert [round(c.diameter_mm, 2) for c in m.reference] == [3.94, 9.02, 12.51, 21.38]
    metrics = measure_lesions(label_map(truth), label_map(pred), spacing).metrics()
    assert metrics["lesion_recall_lt10mm"] == 0.5
    assert metrics["lesion_recall_10to20mm"] == 1.0
    assert metrics["lesion_recall_gt20mm"] == 0.0
    assert [metrics[f"lesion_ref_{b}"] for b in ("lt10mm", "10to20mm", "gt20mm")] == [2, 1, 1]
    assert metrics["lesion_recall"] == 0.5
    assert metrics["lesion_recall_ge10mm"] == 0.5          # the 12.51 mm found, the 21.38 missed
    only_small = measure_lesions(label_map(boxes(shape, small)), label_map(pred), spacing)
    assert only_small.metrics()["lesion_recall_gt20mm"] is None          # no lesion in the band


def test_no_tumour_anywhere():
    empty = np.ones((6, 6, 6), np.uint8)
    metrics = lesion_metrics(empty, empty, ISO)
    assert metrics["lesion_recall"] is None and metrics["lesion_precision"] is None
    assert (metrics["lesion_tp"], metrics["lesion_fn"], metrics["lesion_fp"]) == (0, 0, 0)
    assert metrics["lesion_recall_lt10mm"] is None
    assert metrics["tumour_burden_error"] == 0.0


def test_tumour_predicted_where_there_is_none():
    truth = np.ones((10, 10, 10), np.uint8)
    pred = label_map(boxes((10, 10, 10), ((0, 0, 0), (2, 2, 2)), ((5, 5, 5), (1, 1, 1))))
    metrics = lesion_metrics(truth, pred, ISO)
    assert metrics["lesion_recall"] is None and metrics["lesion_precision"] == 0.0
    assert (metrics["lesion_pred"], metrics["lesion_fp"], metrics["lesion_fn"]) == (2, 2, 0)


def test_tumour_missed_entirely():
    truth = label_map(boxes((10, 10, 10), ((0, 0, 0), (2, 2, 2)), ((5, 5, 5), (1, 1, 1))))
    metrics = lesion_metrics(truth, np.ones((10, 10, 10), np.uint8), ISO)
    assert metrics["lesion_recall"] == 0.0 and metrics["lesion_precision"] is None
    assert (metrics["lesion_ref"], metrics["lesion_fn"], metrics["lesion_fp"]) == (2, 2, 0)


def test_tumour_burden_error():
    # Truth: 1000 liver voxels with a 5x5x2 = 50 tumour: 0.05. Prediction: an 8x10x10 = 800
    # liver (label >= 1) with a 5x4x3 = 60 tumour: 0.075. Error +0.025, whatever the spacing.
    truth = label_map(boxes((10, 10, 10), ((0, 0, 0), (5, 5, 2))))
    pred = np.zeros((10, 10, 10), np.uint8)
    pred[:8] = 1
    pred[:5, :4, :3] = 2
    case = measure_lesions(truth, pred, (0.7, 0.7, 5.0))
    assert case.burden_truth == pytest.approx(0.05) and case.burden_pred == pytest.approx(0.075)
    assert case.metrics()["tumour_burden_error"] == pytest.approx(0.025)
    no_liver = measure_lesions(truth, np.zeros_like(truth), ISO)           # burden 0, not None
    assert no_liver.burden_pred == 0.0 and no_liver.burden_error == pytest.approx(-0.05)


def test_pooling_two_cases_and_an_empty_one():
    # Mixed: 2 reference lesions (1 found), 3 predicted (1 matched); burden (32 - 60) / 12000.
    # Split: 1 reference lesion (found), 2 predicted (both matched); burden (96 - 128) / 640.
    # Every lesion is under 10 mm: 20, 40, 128 voxels of 1 mm^3, d 3.4, 4.2, 6.3 mm.
    tally = LesionTally()
    assert tally.summary()["lesion_recall"] is None
    assert tally.summary()["tumour_burden_error_rmse"] is None and tally.summary()["cases"] == 0
    tally.add(measure_lesions(label_map(MIXED_TRUTH), label_map(MIXED_PRED), ISO))
    tally.add(measure_lesions(label_map(SPLIT_TRUTH), label_map(SPLIT_PRED), ISO))
    errors = (-28 / 12000, -32 / 640)
    pooled = tally.summary()
    assert (pooled["lesion_tp"], pooled["lesion_fn"], pooled["lesion_fp"]) == (2, 1, 2)
    assert pooled["lesion_recall"] == pytest.approx(2 / 3)
    assert pooled["lesion_precision"] == pytest.approx(3 / 5)
    assert pooled["lesion_recall_lt10mm"] == pytest.approx(2 / 3)
    assert pooled["lesion_recall_10to20mm"] is None and pooled["lesion_ref_lt10mm"] == 3
    assert pooled["lesion_recall_ge10mm"] is None           # no lesion of 10 mm or more
    assert pooled["tumour_burden_error_mean"] == pytest.approx(sum(errors) / 2)
    assert pooled["tumour_burden_error_rmse"] == pytest.approx(
        math.sqrt((errors[0] ** 2 + errors[1] ** 2) / 2))
    assert pooled["tumour_burden_error_max_abs"] == pytest.approx(0.05)
    # A tumour-free case: in the case count and the burden mean, nowhere in the lesion counts.
    empty = np.ones((4, 4, 4), np.uint8)
    tally.add(measure_lesions(empty, empty, ISO))
    after = tally.summary()
    assert after["cases"] == 3
    assert {k: after[k] for k in after if k.startswith("lesion_")} == {
        k: pooled[k] for k in pooled if k.startswith("lesion_")}
    assert after["tumour_burden_error_mean"] == pytest.approx(sum(errors) / 3)


def test_the_dicts_are_plain_json():
    case = measure_lesions(label_map(MIXED_TRUTH), label_map(MIXED_PRED), ISO)
    tally = LesionTally()
    tally.add(case)
    bands = ("lt10mm", "10to20mm", "gt20mm")
    per_case = {"lesion_ref", "lesion_pred", "lesion_tp", "lesion_fn", "lesion_fp",
                "lesion_recall", "lesion_precision", *(f"lesion_recall_{b}" for b in bands),
                *(f"lesion_ref_{b}" for b in bands), "lesion_recall_ge10mm"}
    burden = {"tumour_burden_truth", "tumour_burden_pred", "tumour_burden_error"}
    pooled = {"tumour_burden_error_mean", "tumour_burden_error_rmse",
              "tumour_burden_error_max_abs", "cases"}
    assert set(case.metrics()) == per_case | burden
    assert set(tally.summary()) == per_case | pooled
    for figures in (case.metrics(), tally.summary()):
        assert all(v is None or type(v) in (int, float) for v in figures.values()), figures
        assert json.loads(json.dumps(figures)) == figures


def test_the_module_imports_no_tensorflow():
    code = ("import sys, evaluation.lesion_metrics; "
            "sys.exit(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
