"""3-D clean-up of a predicted label map (0 background, 1 liver, 2 tumour), the usual
post-processing of methods that report LiTS figures. The network segments slice by slice, so its
mistakes are local: specks and blobs on other organs, background pockets inside the liver. The
liver is one connected organ and the lesions that count lie in it; so, in this order:

  1. liver      the "liver region" is label >= 1 (liver with its tumours). Its largest 3-D
                connected component is kept; every other component is set to 0 (its label-1
                voxels count as liver specks, its label-2 voxels as tumour outside the liver).
  2. holes      (fill_holes) background voxels of the kept region's bounding box that cannot
                reach the volume's border through background are filled, as liver (1): LiTS'
                liver masks take in the vessels inside the liver, and nothing in a hole's
                outline tells a missed tumour from missed liver. A cavity
                open to the border in 3-D stays, even where every 2-D slice encloses it.
  3. tumours    tumour (label 2) survives only inside the kept region (step 1 already removed
                the rest). Connected tumour components whose volume, voxels x the voxel volume
                (the product of `spacing_mm`, mm^3), is below `min_tumour_volume_mm3` are
                dropped and become liver (1): they lie inside the liver. Relabelling 2 -> 1
                leaves the liver region, its components and its holes as they were, so the
                steps do not depend on each other's order. Equal to the threshold is kept.

A liver-only (two-class, 0/1, or bool) map goes through the same steps; with no label 2 step 3
finds nothing. A map with no liver region comes back empty, with a report of zeros.

Conventions:
  * `labels` is a 3-D integer (or bool) array with values in {0, 1, 2}, in any axis order, with
    `spacing_mm` in the same axis order (the canonical [X, Y, Z] arrays of
    preprocessing/nifti.py CanonicalCase with `case.spacing`). Only the voxel volume uses the
    spacing; connectivity counts voxels, not mm. The input is never modified; the result is a
    new C-ordered uint8 array of the same shape (a copy of the input when not `enabled`).
  * Connectivity: foreground components are 26-connected by default (faces, edges, corners;
    `connectivity` 6, 18 or 26); background, for the holes, moves through the complementary
    neighbourhood (6 for 18/26, 26 for 6), so a diagonal gap in a 26-connected wall does not
    let background through.
  * Ties: of equally large components the one whose first voxel in C order (last axis fastest,
    the lowest index tuple) comes first is kept, whatever the backend numbers them.
  * The report counts voxels and components (REPORT_KEYS), so a caller can log what was done.

Backends: cc3d (connected-components-3d, in the lock) or, where it is not installed,
scipy.ndimage, with the same results. On a 512 x 512 x 500 prediction (bench/postprocess_speed.py,
a 2-core AVX2 host) cc3d labels the volume 6-8x faster than ndimage.label (0.26-0.37 s against
1.7-2.5 s), and the whole post-processing takes 0.8-1.1 s against 2.6-3.4 s, at a third of the
peak memory. Holes are found by labelling the background of the liver's bounding box (all of it
outside the box reaches the border), not by ndimage.binary_fill_holes, an iterative dilation 2-7x
slower on the box and 15 s on the whole volume. Memory: one component map of the whole volume
(uint16 or uint32 from cc3d, int32 from scipy) and one bool mask at a time; counts and lookups go
slab by slab, so no int64 copy of the volume is made; the later steps work on the bounding box.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

try:
    import cc3d
except ImportError:   # the same results from scipy, only slower
    cc3d = None

LIVER_LABEL, TUMOUR_LABEL = 1, 2
CONNECTIVITIES = (6, 18, 26)
# Digital topology's complementary pairs: background against a foreground of each connectivity.
BACKGROUND_CONNECTIVITY = {6: 26, 18: 6, 26: 6}
BACKENDS = ("cc3d", "scipy")
DEFAULT_BACKEND = "cc3d" if cc3d is not None else "scipy"
REPORT_KEYS = (
    "liver_components_removed",             # components of the liver region other than the kept
    "liver_speck_voxels_removed",           # their label-1 voxels, set to 0
    "tumour_outside_liver_voxels_removed",  # their label-2 voxels, set to 0
    "holes_filled",                         # enclosed background components filled ...
    "hole_voxels_filled",                   # ... and their voxels, set to 1
    "small_tumours_dropped",                # tumour components below the volume, set to 1 ...
    "small_tumour_voxels_dropped",          # ... and their voxels
)
_BLOCK_VOXELS = 1 << 22   # lookups and counts go by slabs along axis 0 of about this many voxels
Box = Tuple[slice, ...]


@dataclasses.dataclass(frozen=True)
class PostprocessSettings:
    """How a predicted label map is cleaned (module docstring).

    enabled                 False: labels are returned unchanged (copied), the report all zeros
    min_tumour_volume_mm3   tumour components smaller than this are relabelled liver; 0 keeps
                            every one. 10 mm^3 is a sphere of 2.7 mm diameter, three voxels at
                            0.8 x 0.8 x 5 mm, about twenty at 0.7 x 0.7 x 1 mm: it takes
                            few-voxel noise and keeps whatever is a few mm across
    fill_holes              fill background enclosed by the kept liver region in 3-D
    connectivity            6, 18 or 26: neighbours that join voxels of a component
    """
    enabled: bool = True
    min_tumour_volume_mm3: float = 10.0
    fill_holes: bool = True
    connectivity: int = 26

    def __post_init__(self):
        for name in ("enabled", "fill_holes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        volume = self.min_tumour_volume_mm3
        if (isinstance(volume, bool) or not isinstance(volume, (int, float))
                or not math.isfinite(volume) or volume < 0):
            raise ValueError(f"min_tumour_volume_mm3 must be a finite number >= 0, got {volume!r}")
        connectivity = self.connectivity
        if (isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer))
                or connectivity not in CONNECTIVITIES):
            raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, "
                             f"got {self.connectivity!r}")


def postprocess(labels: np.ndarray, spacing_mm: Sequence[float],
                settings: PostprocessSettings = PostprocessSettings(), *,
                backend: Optional[str] = None) -> Tuple[np.ndarray, Dict[str, int]]:
    """(cleaned uint8 labels, report with REPORT_KEYS) of a predicted label map; `backend`
    ("cc3d" / "scipy", default DEFAULT_BACKEND) only changes the speed."""
    labels = _checked_labels(labels)
    voxel_mm3 = _voxel_volume(spacing_mm, labels.ndim)
    backend = backend or DEFAULT_BACKEND
    if backend not in BACKENDS or (backend == "cc3d" and cc3d is None):
        raise ValueError(f"backend {backend!r} is unknown or not installed")
    report = dict.fromkeys(REPORT_KEYS, 0)
    if not settings.enabled or not labels.any():
        return np.array(labels, dtype=np.uint8, order="C"), report

    tumour_voxels = _count(labels, TUMOUR_LABEL)
    kept, box, components, region_voxels = _largest_region(labels, settings.connectivity,
                                                           backend)
    kept_box = np.ascontiguousarray(kept[box])   # a copy: the whole-volume mask goes
    del kept
    crop = np.where(kept_box, labels[box], np.uint8(0))
    removed = region_voxels - int(np.count_nonzero(kept_box))
    removed_tumour = tumour_voxels - _count(crop, TUMOUR_LABEL)
    report.update(liver_components_removed=components - 1,
                  liver_speck_voxels_removed=removed - removed_tumour,
                  tumour_outside_liver_voxels_removed=removed_tumour)
    if settings.fill_holes:
        holes, count = _enclosed_background(kept_box, settings.connectivity, backend)
        if count:
            crop[holes] = LIVER_LABEL
            report.update(holes_filled=count, hole_voxels_filled=int(np.count_nonzero(holes)))
        del holes
    del kept_box
    dropped, dropped_voxels = _drop_small_tumours(crop, voxel_mm3, settings, backend)
    report.update(small_tumours_dropped=dropped, small_tumour_voxels_dropped=dropped_voxels)
    out = np.zeros(labels.shape, np.uint8)
    out[box] = crop
    return out, report


def _checked_labels(labels) -> np.ndarray:
    """The labels as uint8 (a view where they already are), after checking shape and values."""
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"labels must be a 3-D volume, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must be integers (0, 1, 2), got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > TUMOUR_LABEL):
        raise ValueError(f"labels must be 0 (background), 1 (liver) or 2 (tumour); "
                         f"found {int(arr.min())}..{int(arr.max())}")
    return arr.astype(np.uint8, copy=False)


def _voxel_volume(spacing_mm: Sequence[float], ndim: int) -> float:
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be {ndim} positive sizes in mm, got {spacing_mm!r}")
    return float(np.prod(spacing))


def _components(image: np.ndarray, connectivity: int, backend: str) -> Tuple[np.ndarray, int]:
    """(component map, count) of the nonzero voxels; 0 is background, components 1..count."""
    if backend == "cc3d":
        comp, count = cc3d.connected_components(image, connectivity=connectivity,
                                                binary_image=True, return_N=True)
    else:
        rank = {6: 1, 18: 2, 26: 3}[connectivity]
        comp, count = ndimage.label(image, ndimage.generate_binary_structure(3, rank))
    return comp, int(count)


def _blocks(shape: Sequence[int]) -> List[slice]:
    """Slabs along axis 0 of about _BLOCK_VOXELS voxels, in order."""
    step = max(1, _BLOCK_VOXELS // max(1, int(np.prod(shape[1:]))))
    return [slice(start, start + step) for start in range(0, shape[0], step)]


def _sizes(comp: np.ndarray, count: int) -> np.ndarray:
    """Voxels per component, index 0 (background) left 0. np.bincount of each slab's nonzero
    voxels: of the whole map it would make an int64 copy of it, and count the background (most
    of a CT volume) for nothing."""
    sizes = np.zeros(count + 1, np.int64)
    for block in _blocks(comp.shape):
        part = comp[block]
        sizes += np.bincount(part[part != 0], minlength=count + 1)
    return sizes


def _lookup(table: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """table[comp] (a bool per component), one slab at a time."""
    out = np.empty(comp.shape, bool)
    for block in _blocks(comp.shape):
        out[block] = table[comp[block]]
    return out


def _count(labels: np.ndarray, value: int) -> int:
    return sum(int(np.count_nonzero(labels[block] == value)) for block in _blocks(labels.shape))


def _first_largest(comp: np.ndarray, sizes: np.ndarray) -> int:
    """The largest component; among equal ones, the one met first in C order."""
    tied = np.flatnonzero(sizes[1:] == sizes[1:].max()) + 1
    if len(tied) == 1:
        return int(tied[0])
    is_tied = np.zeros(len(sizes), bool)
    is_tied[tied] = True
    for block in _blocks(comp.shape):
        hit = is_tied[comp[block]]
        if hit.any():
            return int(comp[block][np.unravel_index(np.argmax(hit), hit.shape)])
    raise AssertionError("a tied component has no voxel")


def _bounding_box(mask: np.ndarray) -> Box:
    """The smallest box holding every True voxel of a mask that has one."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _largest_region(labels: np.ndarray, connectivity: int,
                    backend: str) -> Tuple[np.ndarray, Box, int, int]:
    """(mask of the kept component, its bounding box, number of components, voxels of the
    liver region) of a map that has a liver region."""
    comp, count = _components(labels, connectivity, backend)
    sizes = _sizes(comp, count)
    kept = comp == _first_largest(comp, sizes)
    del comp
    return kept, _bounding_box(kept), count, int(sizes[1:].sum())


def _enclosed_background(region: np.ndarray, connectivity: int,
                         backend: str) -> Tuple[Optional[np.ndarray], int]:
    """(mask of the holes, their number) of a region cropped to its bounding box: background
    components that touch no face of the box. Outside the box all is background and reaches
    the volume's border, so touching a face of the box is reaching the border."""
    comp, count = _components(~region, BACKGROUND_CONNECTIVITY[connectivity], backend)
    is_hole = np.ones(count + 1, bool)
    is_hole[0] = False
    for axis in range(comp.ndim):
        is_hole[np.take(comp, [0, -1], axis=axis)] = False
    holes = int(np.count_nonzero(is_hole))
    return (_lookup(is_hole, comp) if holes else None), holes


def _drop_small_tumours(crop: np.ndarray, voxel_mm3: float, settings: PostprocessSettings,
                        backend: str) -> Tuple[int, int]:
    """Relabels, in place, the tumour components below the minimum volume as liver; returns
    (how many, their voxels)."""
    tumour = crop == TUMOUR_LABEL
    if settings.min_tumour_volume_mm3 <= 0 or not tumour.any():
        return 0, 0
    comp, count = _components(tumour, settings.connectivity, backend)
    del tumour
    sizes = _sizes(comp, count)
    small = sizes * voxel_mm3 < settings.min_tumour_volume_mm3
    small[0] = False
    if not small.any():
        return 0, 0
    crop[_lookup(small, comp)] = LIVER_LABEL
    return int(np.count_nonzero(small)), int(sizes[small].sum())
