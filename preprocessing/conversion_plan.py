"""What to convert: the cases found (the settings' CSV manifest, or LiTS file naming) with their
patient-level split, and the cases rejected before reading."""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

from preprocessing.case_discovery import discover_lits_cases, discover_manifest_cases
from preprocessing.conversion_settings import ConversionSettings
from preprocessing.nifti import CaseError, CaseFiles
from preprocessing.splits import assign_splits


@dataclasses.dataclass
class ConversionPlan:
    """What to convert: (case, split) pairs, the cases rejected before reading (pairing or
    manifest errors), and every input case counted once."""
    cases: List[Tuple[CaseFiles, str]]
    errors: List[CaseError]

    @property
    def input_cases(self) -> int:
        return len(self.cases) + len(self.errors)

    def cases_in(self, split: str) -> int:
        return sum(s == split for _, s in self.cases)


def plan_conversion(settings: ConversionSettings, input_base: Optional[str]) -> ConversionPlan:
    """Discovers the cases (the settings' CSV manifest when it has one, else LiTS naming in
    `input_base`) and assigns patient-level splits."""
    manifest = settings.manifest_path(input_base)
    if manifest:
        cases, errors = discover_manifest_cases(manifest, settings.allow_unlabeled)
    else:
        cases, errors = discover_lits_cases(input_base, settings.allow_unlabeled)
    split_of = assign_splits([c.case_id for c in cases], eval_fraction=settings.eval_fraction,
                             seed=settings.split_seed, eval_cases=settings.eval_cases)
    return ConversionPlan([(c, split_of[c.case_id]) for c in cases], errors)
