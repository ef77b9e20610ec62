"""evaluation/volume_metrics.py against answers worked out by hand from the geometry.

Shifted boxes: a box of a x b x c mm moved by s mm along its c edge (s <= c) overlaps itself by
(c - s) / c, so Dice = (c - s) / c and VOE = 1 - (c - s) / (c + s). Every point of the trailing
face is exactly s from the other box's surface and nothing is farther, so the Hausdorff distance
is s; when that face alone is over 5% of the surface, HD95 is s too. ASSD (both surfaces the
same by symmetry) is the surface integral of the distance over the area:
  trailing face   a b s
  leading face    the integral of min(s, distance to the face's edge) = int_0^m (a-2t)(b-2t) dt,
                  m = min(s, a/2, b/2)
  four sides      a strip s long beside the trailing edge at mean distance s/2: (a + b) s^2
over 2ab + 2(a + b)c. The package measures on voxel-corner surfaces, which cut corners: its ASSD
is within 5% of this continuous value (measured 1-4.5% below).
"""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.volume_metrics import (CaseScorer, DiceTally, OverlapCounts, class_mask,
                                     mask_metrics)

GRID = (24, 24, 24)


def box(start=(6, 6, 6), size=(8, 8, 8), shape=GRID) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(o, o + n) for o, n in zip(start, size))] = True
    return mask


def shifted(mask: np.ndarray, axis: int, voxels: int) -> np.ndarray:
    return np.roll(mask, voxels, axis=axis)   # the box stays clear of the edges


def box_shift_assd(a: float, b: float, c: float, s: float) -> float:
    """The continuous ASSD of an a x b x c box against itself moved s along c (module doc)."""
    m = min(s, a / 2, b / 2)
    leading = a * b * m - (a + b) * m ** 2 + 4 * m ** 3 / 3
    return (a * b * s + leading + (a + b) * s ** 2) / (2 * a * b + 2 * (a + b) * c)


def ball(radius: float, shape=(40, 40, 40)) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")
    return sum(g ** 2 for g in grid) <= radius ** 2


def test_cube_shifted_by_two_voxels():
    m = mask_metrics(box(), shifted(box(), 0, 2), (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(6 / 8)
    assert m["voe"] == pytest.approx(1 - 6 / 10)
    assert m["rvd"] == 0.0
    assert m["msd_mm"] == pytest.approx(2.0)
    assert m["hd95_mm"] == pytest.approx(2.0)   # the trailing face alone is 1/6 of the surface
    expected = box_shift_assd(8, 8, 8, 2)       # 0.694
    assert 0.95 * expected <= m["assd_mm"] <= expected
    assert m["truth_ml"] == m["pred_ml"] == pytest.approx(512 / 1000)


@pytest.mark.parametrize("axis, mm", [(2, 6.0), (0, 2.0)], ids=["along_3mm", "along_1mm"])
def test_anisotropic_spacing(axis, mm):
    # 1 x 1 x 3 mm voxels: the same 2-voxel shift is 6 mm along z and 2 mm along x.
    spacing = (1.0, 1.0, 3.0)
    m = mask_metrics(box(), shifted(box(), axis, 2), spacing)
    assert m["dice"] == pytest.approx(0.75)
    assert m["msd_mm"] == pytest.approx(mm)
    assert m["hd95_mm"] == pytest.approx(mm)    # trailing face: 7% (z) or 21% (x) of the area
    edges = [8 * s for s in spacing]            # mm; the shifted edge last
    edges.append(edges.pop(axis))
    expected = box_shift_assd(*edges, mm)       # 1.167 (z), 0.869 (x)
    assert 0.95 * expected <= m["assd_mm"] <= expected
    assert m["truth_ml"] == pytest.approx(512 * 3 / 1000)


def test_a_far_stray_voxel_moves_the_maximum_not_hd95():
    # One false-positive voxel at x = 22 beside the box's x = 6..13, within its y-z outline:
    # its far face (x = 23) is 9 voxels from the box's face (x = 14). It is well under 5% of
    # the predicted surface, so HD95 stays 0, and ASSD barely moves.
    truth = box()
    pred = truth.copy()
    pred[22, 9, 9] = True
    m = mask_metrics(truth, pred, (2.0, 1.0, 1.0))
    assert m["msd_mm"] == pytest.approx(9 * 2.0)
    assert m["hd95_mm"] == 0.0
    assert 0.0 < m["assd_mm"] < 0.1
    assert m["dice"] == pytest.approx(2 * 512 / 1025)


def test_sphere_against_itself_and_one_voxel_larger():
    small, large = ball(10), ball(11)
    same = mask_metrics(small, small, (1.0, 1.0, 1.0))
    assert same == {"dice": 1.0, "voe": 0.0, "rvd": 0.0, "assd_mm": 0.0, "msd_mm": 0.0,
                    "hd95_mm": 0.0, "truth_ml": pytest.approx(small.sum() / 1000),
                    "pred_ml": pytest.approx(small.sum() / 1000)}
    m = mask_metrics(small, large, (1.0, 1.0, 1.0))
    n_small, n_large = small.sum(), large.sum()            # the small ball lies inside
    assert m["dice"] == pytest.approx(2 * n_small / (n_small + n_large))
    assert m["voe"] == pytest.approx(1 - n_small / n_large)
    assert m["rvd"] == pytest.approx((n_large - n_small) / n_small) and m["rvd"] > 0
    # Radii one voxel apart: surfaces about 1 voxel apart everywhere; rasterizing moves a
    # surface voxel by up to half a diagonal, so the farthest is at most sqrt(2) or so.
    assert 0.5 <= m["assd_mm"] <= 1.25
    assert 1.0 <= m["msd_mm"] <= 1.5
    assert 1.0 <= m["hd95_mm"] <= m["msd_mm"]
    # Voxels twice as large: every distance doubles.
    double = mask_metrics(small, large, (2.0, 2.0, 2.0))
    for key in ("assd_mm", "msd_mm", "hd95_mm"):
        assert double[key] == pytest.approx(2 * m[key])


def test_over_segmentation_has_a_positive_volume_difference():
    truth, pred = box(), box(start=(5, 5, 5), size=(10, 10, 10))   # 512 inside 1000 voxels
    m = mask_metrics(truth, pred, (0.5, 0.5, 2.0))
    assert m["dice"] == pytest.approx(2 * 512 / 1512)
    assert m["voe"] == pytest.approx(1 - 512 / 1000)
    assert m["rvd"] == pytest.approx((1000 - 512) / 512)
    assert m["pred_ml"] == pytest.approx(1000 * 0.5 / 1000)
    under = mask_metrics(pred, truth, (0.5, 0.5, 2.0))
    assert under["rvd"] == pytest.approx((512 - 1000) / 1000)


def test_empty_masks():
    empty, some = np.zeros(GRID, bool), box()
    both = mask_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert both == {"dice": 1.0, "voe": 0.0, "rvd": 0.0, "assd_mm": 0.0, "msd_mm": 0.0,
                    "hd95_mm": 0.0, "truth_ml": 0.0, "pred_ml": 0.0}
    false_positive = mask_metrics(empty, some, (1.0, 1.0, 1.0))
    assert false_positive == {"dice": 0.0, "voe": 1.0, "rvd": None, "assd_mm": None,
                              "msd_mm": None, "hd95_mm": None, "truth_ml": 0.0,
                              "pred_ml": pytest.approx(0.512)}
    missed = mask_metrics(some, empty, (1.0, 1.0, 1.0))
    assert missed == {"dice": 0.0, "voe": 1.0, "rvd": -1.0, "assd_mm": None, "msd_mm": None,
                      "hd95_mm": None, "truth_ml": pytest.approx(0.512), "pred_ml": 0.0}


def test_global_dice_pools_voxels_and_differs_from_the_mean():
    # A large case with Dice 0.9 (10^3 cube shifted 1) and a small one with Dice 0.5 (2^3 cube
    # shifted 1): pooled, the large one dominates.
    scorer = CaseScorer(["liver"])
    large = box(size=(10, 10, 10))
    small = box(size=(2, 2, 2))
    for truth, pred in ((large, shifted(large, 1, 1)), (small, shifted(small, 2, 1))):
        _, counts = scorer.measure(truth.astype(np.uint8), pred.astype(np.uint8), (1.0, 1.0, 1.0))
        scorer.add(counts)
    summary = scorer.summary()["liver"]
    assert summary["mean_dice"] == pytest.approx((0.9 + 0.5) / 2)
    assert summary["global_dice"] == pytest.approx(2 * (900 + 4) / (2000 + 16))   # 0.897
    assert summary["global_dice"] != pytest.approx(summary["mean_dice"])


def test_dice_tally_empty_cases():
    tally = DiceTally()
    assert tally.summary() == {"global_dice": None, "mean_dice": None}
    tally.add(OverlapCounts(0, 0, 0))             # no tumour, none predicted
    assert tally.summary() == {"global_dice": 1.0, "mean_dice": 1.0}
    tally.add(OverlapCounts(0, 0, 30))            # tumour predicted where there is none
    assert tally.summary() == {"global_dice": 0.0, "mean_dice": 0.5}


def test_classes_liver_includes_tumour():
    truth = np.zeros(GRID, np.uint8)
    truth[box()] = 1
    truth[box(start=(8, 8, 8), size=(4, 4, 4))] = 2
    pred = truth.copy()
    pred[pred == 2] = 1                           # tumour called liver
    assert np.array_equal(class_mask(truth, "liver"), box())
    scores, _ = CaseScorer(["liver", "tumour"]).measure(truth, pred, (1.0, 1.0, 1.0))
    assert scores["liver"]["dice"] == 1.0
    assert scores["tumour"]["dice"] == 0.0 and scores["tumour"]["rvd"] == -1.0
    with pytest.raises(ValueError, match="unknown class"):
        CaseScorer(["vessels"])
    with pytest.raises(ValueError, match="shape"):
        CaseScorer(["liver"]).measure(truth, pred[:-1], (1.0, 1.0, 1.0))
