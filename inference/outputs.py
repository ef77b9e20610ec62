"""Which files predict.py writes per case: the mask as NIfTI (any input), a DICOM SEG (DICOM
series input: inference/dicom_seg.py), or both. A plain dataclass and the SEG half of writing;
the NIfTI half is inference/writers.py."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from common import storage
from inference.dicom_seg import SEG_SUFFIX   # a folder run's SEG per case: <case_id>_seg.dcm
from preprocessing.nifti import CanonicalCase, CaseError

OUTPUT_FORMATS = ("nifti", "seg", "both")
SEG_TYPES = ("binary", "fractional")
ALGORITHM_NAME = "UNet 3+ liver and tumour"
PACKAGE = "unet3plus-tfx"   # setup.py's name


@dataclasses.dataclass(frozen=True)
class OutputRequest:
    """What to write for each case. `model_id` names the model in a SEG's algorithm
    identification (predict.py: the model directory's last two path parts)."""
    output_format: str = "nifti"
    seg_type: str = "binary"
    model_id: str = ""

    def __post_init__(self):
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, "
                             f"got {self.output_format!r}")
        if self.seg_type not in SEG_TYPES:
            raise ValueError(f"seg_type must be one of {SEG_TYPES}, got {self.seg_type!r}")

    @property
    def nifti(self) -> bool:
        return self.output_format in ("nifti", "both")

    @property
    def seg(self) -> bool:
        return self.output_format in ("seg", "both")


def project_version() -> str:
    """This package's version when installed, else setup.py's (a source checkout)."""
    from importlib import metadata
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "0.1.0"


def model_id_of(model_dir: str) -> str:
    """A model's id: its directory's last two parts (serving_model/1733312345)."""
    parts = storage.absolute(model_dir).rstrip("/").split("/")
    return "/".join(parts[-2:])


def seg_path_for(mask_path: str) -> str:
    """The SEG beside a mask: volume-7_mask.nii.gz -> volume-7_seg.dcm."""
    for ending in ("_mask.nii.gz", ".nii.gz", ".nii"):
        if mask_path.endswith(ending):
            return mask_path[: -len(ending)] + SEG_SUFFIX
    return mask_path + SEG_SUFFIX


def check_seg_source(case: CanonicalCase, where: str) -> None:
    """A SEG references single-frame source slices: CaseError (naming `where`) otherwise."""
    if case.dicom is None:
        raise CaseError(where, "DICOM SEG output needs a DICOM series input (this one is "
                               "NIfTI): use --output_format nifti", case.case_id)
    if any(s.frame is not None for s in case.dicom.slices):
        raise CaseError(where, "DICOM SEG output of a multi-frame (Enhanced CT) source is not "
                               "supported yet: use --output_format nifti", case.case_id)


def _source_probabilities(probs: np.ndarray, case: CanonicalCase) -> np.ndarray:
    """Canonical [X, Y, Z, C] probabilities in the series' grid, with a background channel
    for a one-channel (liver) model."""
    from inference.segmenter import to_source_orientation
    source = to_source_orientation(probs, case)
    if source.shape[-1] == 1:
        source = np.concatenate([1.0 - source, source], axis=-1)
    return source


def write_case_seg(mask: np.ndarray, channels: int, case: CanonicalCase, seg_path: str,
                   request: OutputRequest, probs: Optional[np.ndarray] = None) -> None:
    """The case's DICOM SEG: `mask` (its series' grid) as binary segments, or `probs`
    (canonical [X, Y, Z, channels]; needed for a fractional SEG) as fractional ones; liver, and
    tumour for a three-class model (channels: the model's output channels)."""
    from inference.dicom_seg import AlgorithmInfo, write_seg
    check_seg_source(case, seg_path)
    num_classes = 3 if channels == 3 else 2
    fractional = request.seg_type == "fractional"
    if fractional and probs is None:
        raise ValueError("a fractional DICOM SEG needs the probabilities")
    algorithm = AlgorithmInfo(ALGORITHM_NAME, project_version(), request.model_id)
    try:
        write_seg(mask, case.dicom.files, seg_path, num_classes=num_classes,
                  algorithm=algorithm, segmentation_type=request.seg_type,
                  probabilities=_source_probabilities(probs, case) if fractional else None,
                  source_sop_instance_uids=case.dicom.sop_instance_uids)
    except OSError as e:
        raise CaseError(seg_path, f"cannot write the DICOM SEG ({type(e).__name__}: {e})",
                        case.case_id) from e


def output_paths(mask_path: str, request: OutputRequest) -> Tuple[Optional[str], Optional[str]]:
    """(the NIfTI mask's path or None, the SEG's path or None) for a case."""
    return (mask_path if request.nifti else None,
            seg_path_for(mask_path) if request.seg else None)
