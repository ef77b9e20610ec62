"""The one error type of bad input: every reader (NIfTI, DICOM, SEG, the size limits) raises
it, naming the file and the reason; the ExampleGen quarantines the case, predict.py prints one
line."""
from __future__ import annotations

from typing import Optional


class CaseError(Exception):
    """A case that cannot be converted. `path` names the file, `reason` says why."""

    def __init__(self, path: str, reason: str, case_id: Optional[str] = None):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.case_id = case_id

    def __reduce__(self):   # picklable with its fields (Beam, process pools)
        return (CaseError, (self.path, self.reason, self.case_id))
