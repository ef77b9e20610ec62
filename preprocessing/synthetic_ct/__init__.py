"""Deterministic synthetic abdominal CT data set in the LiTS layout.

The pipeline needs CT volumes with liver/tumour masks for tests, demos and smoke runs where the real
LiTS data (volume-N.nii / segmentation-N.nii) is not available. This package draws a simple but
anatomically plausible phantom per case and writes it as ``volume-N.nii.gz`` +
``segmentation-N.nii.gz`` (labels: 0 background, 1 liver, 2 tumour), plus a ``dataset.json`` manifest.

Design points, each there because real LiTS files have the matching property:

* Anatomy is built in a canonical RAS+ voxel grid: voxel axis 0 increases toward the patient's
  Right, axis 1 toward Anterior, axis 2 toward Superior (nibabel/NIfTI world convention, so
  ``nib.aff2axcodes(diag) == ('R', 'A', 'S')``). The liver sits on the patient's right (+x),
  in the upper abdomen.
* Each case is then *stored* in a case-specific orientation (RAS, LPS, LAS or the permuted PIR)
  by flipping/permuting the array and adjusting the affine in the same way, so a reader has to use
  the affine (``nib.as_closest_canonical``) to get consistent anatomy; doing so recovers the
  canonical arrays exactly.
* The volume is stored as int16; every third case has ``scl_slope``/``scl_inter`` set, so a reader
  has to apply header scaling (``get_fdata()`` does) to get Hounsfield units.
* Spacing varies per case (in-plane 0.6-0.9 mm, slices 1-5 mm) and is recorded in the affine.
  In-plane anatomy is defined in fractions of the field of view (a 128 px grid covers only ~90 mm,
  so a true-to-scale body would not fit); along z, sizes are in mm but compressed to fit the slab
  so that some slices above and below the liver never contain liver.

Everything derives from ``np.random.default_rng([seed, case_index])``: the same (seed, index,
parameters) give bit-identical arrays on any machine with the same numpy.

Modules: grid.py (the voxel grid and its geometry), phantom.py (the anatomy), case.py (storage
orientation and scaling of one case), writer.py (NIfTI files and dataset.json), cli.py (the
command line; `python -m preprocessing.synthetic_ct`).
"""
from preprocessing.synthetic_ct.case import (DEFAULT_SLICES_RANGE, ORIENTATIONS, SCALING_CYCLE,
                                             SCALINGS, SyntheticCase, generate_case)
from preprocessing.synthetic_ct.cli import main
from preprocessing.synthetic_ct.lesions import BACKGROUND, LIVER, TUMOUR
from preprocessing.synthetic_ct.writer import (GENERATOR_VERSION, MANIFEST_NAME, case_filenames,
                                               ensure_dataset, read_manifest, write_dataset)

__all__ = [
    "DEFAULT_SLICES_RANGE", "ORIENTATIONS", "SCALING_CYCLE", "SCALINGS", "SyntheticCase",
    "generate_case", "main", "BACKGROUND", "LIVER", "TUMOUR", "GENERATOR_VERSION", "MANIFEST_NAME",
    "case_filenames", "ensure_dataset", "read_manifest", "write_dataset",
]
