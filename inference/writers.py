"""What inference writes: the mask as NIfTI in the input's own grid and header, and a folder
run's predictions.csv. Every path may be a URI."""
from __future__ import annotations

import csv
import gzip
import io
from typing import Any, Dict, Sequence

import nibabel as nib
import numpy as np

from common import storage
from preprocessing.nifti import CanonicalCase, CaseError

# A folder or manifest run (predict.py --input DIR|CSV) writes, in its --output folder, one mask
# per volume named <case_id> + MASK_SUFFIX and PREDICTIONS_CSV with one row per mask written.
MASK_SUFFIX = "_mask.nii.gz"
PREDICTIONS_CSV = "predictions.csv"
PREDICTION_COLUMNS = ("case", "seconds", "liver_ml", "tumour_ml", "liver_dice", "tumour_dice")


def check_output(output_path: str) -> None:
    """The mask's folder must exist: found before inference, not after it. (A URI's folder is
    not checked: object stores have no folders, writing makes them.)"""
    if storage.is_uri(output_path):
        return
    folder = storage.dirname(storage.absolute(output_path))
    if not storage.isdir(folder):
        raise CaseError(output_path, f"cannot write the mask: folder {folder} not found")


def mask_file_bytes(mask: np.ndarray, case: CanonicalCase, output_path: str) -> bytes:
    """The mask as a NIfTI file with the input's header and affine, uint8, unscaled; gzip (at
    nibabel's own level, 1) when the name ends in .gz."""
    out = nib.Nifti1Image(mask, case.source_affine, header=case.source_header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    data = out.to_bytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if output_path.endswith(".gz") else data


def write_mask(mask: np.ndarray, case: CanonicalCase, output_path: str) -> None:
    """Writes the mask file; CaseError naming the output when it cannot be written."""
    try:
        storage.write_bytes(output_path, mask_file_bytes(mask, case, output_path))
    except OSError as e:
        raise CaseError(output_path, f"cannot write the mask ({type(e).__name__}: {e})") from e


def mask_path(output_dir: str, case_id: str) -> str:
    """Where a folder run writes a case's mask: `<case id>_mask.nii.gz`, with "%", "/" and "\\"
    in the id percent-encoded, so that the mask stays in the folder and two case ids (which
    discovery keeps unique) never share a file ("a/b" -> "a%2Fb", "a_b" stays)."""
    name = case_id.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    return storage.join(output_dir, name + MASK_SUFFIX)


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def predictions_csv_text(rows: Sequence[Dict[str, Any]]) -> str:
    """predictions.csv: PREDICTION_COLUMNS, one row per mask written; empty cells where a value
    does not apply (no labels: no Dice; a one-channel model: no tumour)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in PREDICTION_COLUMNS])
    return out.getvalue()
