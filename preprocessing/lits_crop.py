"""One real LiTS CT crop as two NIfTI cases in the LiTS layout:

    python -m preprocessing.lits_crop --wheel .cache/real_ct/ --output .cache/real_ct/lits/ \\
        [--spacing_mm 1.4 1.4 1.4]

The crop comes from the PyPI wheel liver-ct-segmentation-package 1.6.0 (MIT), which ships one
128^3 crop of LiTS training volume 117 (LiTS / Medical Segmentation Decathlon liver task,
CC-BY-SA 4.0) as two MRC files: img_117.mrc (float32 HU) and lab_117.mrc (uint16, 0 background,
1 liver, 2 tumour). They are read from the wheel (a zip) in memory; the package is never
installed or imported. --wheel is the .whl file or the folder `pip download` put it in.

Written to --output: volume-0 / segmentation-0 (the inferior half: crop slices 0-63) and
volume-1 / segmentation-1 (the superior half: 64-127), each 128 x 128 x 64 (float32 HU, uint8
labels, gzip); NOTICE and README.md (attribution, licence, what was assumed); and crop.json
(counts, spacing, the wheel's sha256), written last: a finished conversion has it. Each case is
read back through preprocessing/nifti.py (the reader ExampleGen and predict.py share) and must
give the same pixels and spacing, or the run fails.

Geometry. The MRC files store no spacing and no orientation (cell size 0). The anatomy fixes the
orientation: along the array's axis 0 (the MRC's z) the liver lies at low indices and the spine
at high ones (towards the patient's Left), along axis 1 the spine is at high indices (Posterior),
along axis 2 the kidneys and bowel are at low indices and the lung bases at the top (Superior).
So the arrays are stored as an ITK-written NIfTI is, axis codes L, P, S (affine diag(-x, -y, z)),
and the two halves are cut along the patient's z, the MRC's x (array axis 2).

Spacing assumption (default 1.4 mm isotropic). Evidence, from the crop itself:
  - every HU value is a multiple of 1/8 and the eight fractions are equally common: each voxel is
    the mean of 2 x 2 x 2 integer-HU voxels, so the crop is a 256^3 region of the scan
    downsampled by 2 along every axis (resampled: voxels are twice the scan's);
  - vertebral bodies: disc-to-disc pitch about 22 voxels along axis 2 and an anterior-posterior
    depth of about 25 voxels, the ratio of real lower thoracic / upper lumbar vertebrae
    (pitch ~30 mm, depth ~32-35 mm), so the voxels are close to isotropic and about 1.4 mm;
  - the aorta is ~13 voxels across (~18 mm at 1.4 mm; adult 16-25 mm);
  - liver incl. tumour is 615,351 voxels: 1.69 l at 1.4 mm (a real adult liver is ~1.2-2 l;
    the crop cuts the liver at all six faces, so the whole organ is somewhat larger); 0.62 l at
    1.0 mm would be too small, 4.9 l at 2.0 mm far too large;
  - 1.4 mm is twice a typical LiTS in-plane pixel (0.6-0.8 mm).
The true value is uncertain by about +-15% (1.2-1.6 mm). HU: -1063.25 .. 1877.25 (air about
-1000, liver ~118 HU: a contrast-enhanced scan); no padding value outside the field of view.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import zipfile
import zlib
from typing import List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

from common import storage
from preprocessing.mrc import read_mrc_bytes
from preprocessing.nifti import CaseError, CaseFiles, load_case

WHEEL_NAME = "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba"
IMAGE_MEMBER = "liver_ct_segmentation_package/data/img_117.mrc"
LABEL_MEMBER = "liver_ct_segmentation_package/data/lab_117.mrc"
# Patient axes (Z superior-inferior, Y anterior-posterior, X left-right), millimetres.
DEFAULT_SPACING_MM = (1.4, 1.4, 1.4)
# Which way each array axis runs (nibabel axis codes of the written NIfTI).
STORED_AXCODES = ("L", "P", "S")
SPLIT_AXIS = 2          # the patient's z
_SIGN = {"L": -1.0, "P": -1.0, "S": 1.0}
DONE_FILE = "crop.json"


def find_wheel(path: str) -> str:
    """The wheel file itself, or WHEEL_NAME inside a folder."""
    if storage.isdir(path):
        wheel = storage.join(path, WHEEL_NAME)
        if not storage.exists(wheel):
            raise CaseError(path, f"no {WHEEL_NAME} in this folder (run scripts/fetch_real_ct.sh)")
        return wheel
    return path


def read_wheel(wheel: str, check_sha256: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(HU float32, labels uint8) of the crop, array axes as in the MRC files: (z, y, x) there,
    which run towards the patient's L, P, S. Raises CaseError naming the file and the reason."""
    try:
        data = storage.read_bytes(wheel)
    except OSError as e:
        raise CaseError(wheel, f"cannot read the wheel ({type(e).__name__}: {e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if check_sha256 and digest != WHEEL_SHA256:
        raise CaseError(wheel, f"sha256 {digest} is not the pinned {WHEEL_SHA256}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {m: archive.read(m) for m in (IMAGE_MEMBER, LABEL_MEMBER)}
    except KeyError as e:
        raise CaseError(wheel, f"no member {e.args[0]} in the wheel") from e
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
        raise CaseError(wheel, f"not a readable wheel/zip ({type(e).__name__}: {e})") from e
    hu = read_mrc_bytes(members[IMAGE_MEMBER], f"{wheel}!{IMAGE_MEMBER}")
    labels = read_mrc_bytes(members[LABEL_MEMBER], f"{wheel}!{LABEL_MEMBER}")
    return _checked(hu, labels, wheel)


def _checked(hu: np.ndarray, labels: np.ndarray, wheel: str) -> Tuple[np.ndarray, np.ndarray]:
    image_name, label_name = f"{wheel}!{IMAGE_MEMBER}", f"{wheel}!{LABEL_MEMBER}"
    if hu.dtype != np.float32:
        raise CaseError(image_name, f"expected float32 HU, got {hu.dtype}")
    if not np.isfinite(hu).all():
        raise CaseError(image_name, f"{int((~np.isfinite(hu)).sum())} NaN/Inf voxels")
    if labels.dtype.kind not in "iu":
        raise CaseError(label_name, f"expected integer labels, got {labels.dtype}")
    if labels.shape != hu.shape:
        raise CaseError(label_name, f"shape {labels.shape} differs from the image's {hu.shape}")
    values = set(np.unique(labels).tolist())
    if not values <= {0, 1, 2}:
        raise CaseError(label_name,
                        f"label values {sorted(values - {0, 1, 2})} outside {{0, 1, 2}}")
    if hu.shape[SPLIT_AXIS] < 2 or hu.shape[SPLIT_AXIS] % 2:
        raise CaseError(image_name, f"cannot halve {hu.shape[SPLIT_AXIS]} slices")
    return hu, labels.astype(np.uint8)


def case_affine(spacing_zyx: Sequence[float], crop_shape: Sequence[int], first_slice: int
                ) -> np.ndarray:
    """Voxel -> RAS mm of a half starting at crop slice `first_slice`: axes L, P, S, the whole
    crop's centre at world (0, 0, 0), so both halves sit where they were."""
    sz, sy, sx = (float(s) for s in spacing_zyx)
    linear = np.diag([_SIGN[c] * s for c, s in zip(STORED_AXCODES, (sx, sy, sz))])
    centre = (np.asarray(crop_shape, np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = linear @ (np.array([0.0, 0.0, first_slice]) - centre)
    return affine


def halves(hu: np.ndarray, labels: np.ndarray) -> List[Tuple[int, np.ndarray, np.ndarray]]:
    """[(first slice, HU, labels)] of the inferior and the superior half."""
    n = hu.shape[SPLIT_AXIS] // 2
    return [(k, hu[:, :, k:k + n], labels[:, :, k:k + n]) for k in (0, n)]


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, description: str) -> bytes:
    image = nib.Nifti1Image(np.asarray(array), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = description.encode()[:79]
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def case_paths(output: str, index: int) -> CaseFiles:
    return CaseFiles(f"volume-{index}", storage.join(output, f"volume-{index}.nii.gz"),
                     storage.join(output, f"segmentation-{index}.nii.gz"))


def check_round_trip(files: CaseFiles, hu: np.ndarray, labels: np.ndarray,
                     spacing_zyx: Sequence[float]) -> None:
    """The written case read by the project's reader (RAS+): the same pixels and spacing."""
    case = load_case(files)
    flips = tuple(slice(None, None, -1 if c in "LPI" else 1) for c in STORED_AXCODES)
    if not (np.array_equal(case.hu, hu[flips]) and np.array_equal(case.labels, labels[flips])):
        raise CaseError(files.image_path, "read back with other pixels than were written")
    if not np.allclose(case.spacing, tuple(spacing_zyx)[::-1], rtol=1e-6):
        raise CaseError(files.image_path, f"read back with spacing {case.spacing}")


def case_counts(labels: np.ndarray) -> dict:
    return {"liver_voxels": int((labels == 1).sum()), "tumour_voxels": int((labels == 2).sum())}


def write_cases(hu: np.ndarray, labels: np.ndarray, output: str,
                spacing_zyx: Sequence[float]) -> List[dict]:
    """Writes both halves and checks each; returns one summary per case."""
    storage.makedirs(output)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    cases = []
    for index, (first, hu_half, label_half) in enumerate(halves(hu, labels)):
        files = case_paths(output, index)
        counts = case_counts(label_half)
        if not counts["liver_voxels"] or not counts["tumour_voxels"]:
            raise CaseError(files.label_path, f"half {index} lacks liver or tumour: {counts}")
        affine = case_affine(spacing_zyx, hu.shape, first)
        where = f"LiTS-117 crop slices {first}-{first + hu_half.shape[2] - 1}"
        storage.write_bytes(files.image_path, _nifti_bytes(hu_half, affine, where))
        storage.write_bytes(files.label_path, _nifti_bytes(label_half, affine, where))
        check_round_trip(files, hu_half, label_half, spacing_zyx)
        cases.append({"case_id": files.case_id, "crop_slices": [first, first + hu_half.shape[2]],
                      "shape": list(hu_half.shape), **counts,
                      "liver_ml": round(counts["liver_voxels"] * voxel_ml, 1),
                      "tumour_ml": round(counts["tumour_voxels"] * voxel_ml, 1),
                      "hu_min": float(hu_half.min()), "hu_max": float(hu_half.max())})
    return cases


def eighths_fraction(hu: np.ndarray) -> float:
    """Share of voxels whose HU is a multiple of 1/8 (1.0: means of 2 x 2 x 2 integer voxels)."""
    scaled = hu.astype(np.float64) * 8.0
    return float(np.mean(scaled == np.round(scaled)))


_NOTICE = """\
Real CT test data: two halves of one LiTS crop (volume-0/1, segmentation-0/1 .nii.gz)

Source. The 128^3 crop img_117.mrc / lab_117.mrc shipped in the PyPI wheel
liver-ct-segmentation-package 1.6.0 (Luis Kuhn Cuellar, MIT licence for the package;
https://pypi.org/project/liver-ct-segmentation-package/1.6.0/, sha256 {sha}). The image
data derive from the Liver Tumor Segmentation Benchmark (LiTS) training set, volume 117
as the file name says, also distributed as the liver task (Task03_Liver) of the Medical
Segmentation Decathlon.

Please cite:
  P. Bilic, P. Christ, H. B. Li, E. Vorontsov et al., "The Liver Tumor Segmentation
  Benchmark (LiTS)", Medical Image Analysis 84 (2023) 102680; arXiv:1901.04056.
  A. L. Simpson, M. Antonelli et al., "A large annotated medical image dataset for the
  development and evaluation of segmentation algorithms", arXiv:1902.09063 (2019), and
  M. Antonelli, A. Reinke et al., "The Medical Segmentation Decathlon", Nature
  Communications 13, 4128 (2022).

Licence: CC-BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/), that of the
Decathlon release; these derived files are shared under the same licence.

Changes. The wheel's author cropped the scan and downsampled it by 2 along each axis (every
HU value is a multiple of 1/8: means of 2x2x2 voxels). This project split the crop into an
inferior (crop slices 0-63) and a superior half (64-127) along the patient's z and wrote
each as NIfTI (float32 HU, uint8 labels 0 background / 1 liver / 2 tumour) with an affine
(axis codes L, P, S, as an ITK-written scan) and an assumed spacing.

Spacing. The MRC files store none. Assumed: {spacing} mm (Z superior-inferior, Y
anterior-posterior, X left-right), from the anatomy: vertebral pitch ~22 voxels and depth
~25 voxels (real: ~30 mm and ~32-35 mm), aorta ~13 voxels (~18 mm), liver incl. tumour
615,351 voxels (1.69 l at 1.4 mm; the crop cuts the liver at every face). Uncertain by
about +-15%: volumes in ml are estimates, not measurements.

Cases:
{cases}"""


def notice_text(cases: Sequence[dict], spacing_zyx: Sequence[float], sha: str) -> str:
    lines = "\n".join(
        f"  {c['case_id']}: crop slices {c['crop_slices'][0]}-{c['crop_slices'][1] - 1}, "
        f"{c['liver_voxels']:,} liver and {c['tumour_voxels']:,} tumour voxels, "
        f"HU {c['hu_min']} .. {c['hu_max']}" for c in cases)
    return _NOTICE.format(sha=sha, spacing=" x ".join(f"{s:g}" for s in spacing_zyx),
                          cases=lines) + "\n"


def convert(wheel_path: str, output: str, spacing_zyx: Sequence[float] = DEFAULT_SPACING_MM
            ) -> dict:
    """The whole conversion; returns what crop.json records."""
    if len(spacing_zyx) != 3 or min(spacing_zyx) <= 0:
        raise ValueError(f"--spacing_mm needs three positive values, got {list(spacing_zyx)}")
    wheel = find_wheel(wheel_path)
    hu, labels = read_wheel(wheel)
    cases = write_cases(hu, labels, output, spacing_zyx)
    text = notice_text(cases, spacing_zyx, WHEEL_SHA256)
    storage.write_text(storage.join(output, "NOTICE"), text)
    storage.write_text(storage.join(output, "README.md"), "# LiTS crop (real CT)\n\n```\n"
                       + text + "```\n\nSee docs/real_ct.md in the repository.\n")
    summary = {"wheel": WHEEL_NAME, "wheel_sha256": WHEEL_SHA256,
               "spacing_mm_zyx": [float(s) for s in spacing_zyx],
               "stored_axcodes": "".join(STORED_AXCODES), "crop_shape": list(hu.shape),
               "hu_range": [float(hu.min()), float(hu.max())],
               "hu_multiples_of_eighth": eighths_fraction(hu), "cases": cases}
    storage.write_text(storage.join(output, DONE_FILE), json.dumps(summary, indent=1) + "\n")
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m preprocessing.lits_crop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheel", required=True,
                   help=f"{WHEEL_NAME}, or the folder holding it")
    p.add_argument("--output", required=True, help="folder for the LiTS-layout cases")
    p.add_argument("--spacing_mm", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   default=list(DEFAULT_SPACING_MM),
                   help="voxel size along the patient's superior-inferior, anterior-posterior "
                        "and left-right axes (default %(default)s: see above)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        summary = convert(args.wheel, args.output, args.spacing_mm)
    except (CaseError, ValueError) as e:
        print(f"lits_crop: error: {e}", file=sys.stderr)
        return 1
    low, high = summary["hu_range"]
    print(f"lits_crop: crop {'x'.join(map(str, summary['crop_shape']))}, HU {low:g} .. "
          f"{high:g}, {summary['hu_multiples_of_eighth']:.0%} of the values multiples of 1/8 "
          f"(downsampled 2x); spacing {args.spacing_mm} mm (Z Y X, assumed)")
    for c in summary["cases"]:
        print(f"lits_crop: {c['case_id']}: {c['liver_voxels']:,} liver, {c['tumour_voxels']:,} "
              f"tumour voxels ({c['liver_ml']} / {c['tumour_ml']} ml at the assumed spacing)")
    print(f"lits_crop: wrote {len(summary['cases'])} cases to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
