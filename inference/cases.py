"""Reading cases for inference, exactly as the ExampleGen reads them (preprocessing/nifti.py):
stored values kept, header scaling applied slice by slice after resampling, so the model gets the
training pixels bit for bit (tests/test_predict_geometry.py). One volume, or the cases of a LiTS
folder, a CSV manifest, or a folder of DICOM series (one case per SeriesInstanceUID, read by the
same preprocessing/dicom_volume.py as the ExampleGen). Bad input raises CaseError(file, reason)."""
from __future__ import annotations

from typing import List, Optional, Tuple

from common import storage
from preprocessing.case_discovery import discover_lits_cases, discover_manifest_cases
from preprocessing.dicom_volume import DICOM_SUFFIXES, discover_dicom_series
from preprocessing.nifti import CanonicalCase, CaseError, CaseFiles, canonicalize_case, read_case
from preprocessing.read_limits import DEFAULT_LIMITS, ReadLimits


def load_input(input_path: str, label_path: Optional[str] = None,
               case_id: Optional[str] = None, limits: ReadLimits = DEFAULT_LIMITS
               ) -> CanonicalCase:
    """The volume (and ground truth) read, checked and reoriented exactly as the ExampleGen does
    (preprocessing/case_conversion.py case_examples): stored values kept, HU scaling applied per
    slice after resampling, so the model gets the training pixels bit for bit. CaseError (file,
    reason, case id) on any bad input, a volume over `limits` included (refused before its voxels
    are read). `case_id`: a manifest's; default the file name's."""
    case_id = case_id or storage.basename(input_path).split(".nii")[0]
    return load_case_files(CaseFiles(case_id, input_path, label_path), limits)


def load_case_files(files: CaseFiles, limits: ReadLimits = DEFAULT_LIMITS) -> CanonicalCase:
    """load_input of a discovered case (a DICOM one keeps its series' file list)."""
    return canonicalize_case(read_case(files, limits=limits), hu=False)


def is_batch_input(input_path: str) -> bool:
    """A folder (LiTS layout or DICOM series), a CSV manifest or a DICOM file, rather than one
    NIfTI volume: a DICOM input is always a folder run (a mask per series)."""
    return input_path.lower().endswith((".csv",) + DICOM_SUFFIXES) or storage.isdir(input_path)


def _discover_dicom(input_path: str) -> Tuple[List[CaseFiles], List[CaseError]]:
    if not storage.isdir(input_path):   # one (Enhanced CT) file
        name = storage.basename(input_path)
        return [CaseFiles(name[:name.lower().rfind(".dc")], input_path, None)], []
    return discover_dicom_series(input_path)


def discover_inputs(input_path: str) -> Tuple[List[CaseFiles], List[CaseError]]:
    """The cases of a LiTS folder (volume-N, with segmentation-N when there is one), of a CSV
    manifest (label optional), or, where a folder has no LiTS volumes, its DICOM series; and one
    CaseError per entry that cannot be a case (duplicate id, segmentation without volume, row
    without image, a broken DICOM file), so that none is dropped unseen. CaseError when the
    folder or manifest itself cannot be read or holds nothing."""
    try:
        if storage.isdir(input_path):
            # A volume without a segmentation is a case to segment, just without Dice.
            cases, errors = discover_lits_cases(input_path, allow_unlabeled=True)
            if not cases and not errors:
                cases, errors = _discover_dicom(input_path)
        elif input_path.lower().endswith(DICOM_SUFFIXES):
            cases, errors = _discover_dicom(input_path)
        else:
            cases, errors = discover_manifest_cases(input_path, allow_unlabeled=True)
    except FileNotFoundError as e:
        raise CaseError(input_path, "not found") from e
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CaseError(input_path, f"cannot read the cases ({type(e).__name__}: {e})") from e
    if not cases and not errors:
        raise CaseError(input_path, "no volumes found (volume-N.nii[.gz] files, DICOM series, "
                                    "or manifest rows with an image)")
    return cases, errors
