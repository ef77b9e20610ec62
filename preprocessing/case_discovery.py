"""Finding the cases of a data set: LiTS naming in one folder (`discover_lits_cases`:
volume-N / segmentation-N) or a CSV manifest (`discover_manifest_cases`: columns image, label,
case_id). Folders and manifests may be URIs (common/storage.py). Every entry that cannot
be a case becomes a CaseError naming the file, so nothing is dropped unseen."""
from __future__ import annotations

import csv
import io
import os
import re
from typing import Dict, List, Tuple

from common import storage
from preprocessing.nifti import CaseError, CaseFiles

_LITS_NAME = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")


def discover_lits_cases(data_root: str, allow_unlabeled: bool = False
                        ) -> Tuple[List[CaseFiles], List[CaseError]]:
    """Pairs `volume-N.nii[.gz]` with `segmentation-N.nii[.gz]` in `data_root`.

    Returns the pairs sorted by N, and one CaseError per volume without a segmentation (unless
    `allow_unlabeled`: then it is an inference-only case), segmentation without a volume, or
    the same N twice, so such cases are counted, not lost.
    """
    volumes, segmentations, errors = {}, {}, []
    for name in sorted(storage.listdir(data_root)):
        match = _LITS_NAME.match(name)
        if not match:
            continue
        kind, number = match.group(1), int(match.group(2))
        table = volumes if kind == "volume" else segmentations
        path = storage.join(data_root, name)
        if number in table:
            errors.append(CaseError(path, f"duplicate case id {kind}-{number} "
                                          f"(also {storage.basename(table[number])})",
                                    f"volume-{number}"))
            continue
        table[number] = path
    cases = []
    for number in sorted(volumes):
        case_id = f"volume-{number}"
        if number not in segmentations and not allow_unlabeled:
            errors.append(CaseError(volumes[number], "missing segmentation "
                                    f"segmentation-{number}.nii[.gz]", case_id))
            continue
        cases.append(CaseFiles(case_id, volumes[number], segmentations.get(number)))
    for number in sorted(set(segmentations) - set(volumes)):
        errors.append(CaseError(segmentations[number], f"segmentation without volume-{number}",
                                f"volume-{number}"))
    return cases, errors


def _case_id_from_path(path: str) -> str:
    name = storage.basename(path)
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def _manifest_rows(csv_path: str) -> List[Dict[str, str]]:
    """The CSV's rows, keys and values stripped. ValueError without an `image` column."""
    text = storage.read_text(csv_path, encoding="utf-8-sig")   # -sig: spreadsheets' BOM
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "image" not in columns:
        raise ValueError(f"{csv_path}: manifest needs an 'image' column "
                         f"(and 'label', optional 'case_id', 'series_uid'); found {columns}")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def discover_manifest_cases(csv_path: str, allow_unlabeled: bool = False
                            ) -> Tuple[List[CaseFiles], List[CaseError]]:
    """Cases listed in a CSV manifest with columns `image`, `label` (may be empty) and an optional
    `case_id` (default: the image file name without .nii[.gz]). `image` may be a DICOM series'
    folder, `label` a DICOM SEG; an optional `series_uid` picks one series from a folder of
    several. Relative paths are relative to
    the CSV's folder, which may be a URI (gs://bucket/lists/m.csv: ../data/v.nii.gz is
    gs://bucket/data/v.nii.gz).

    Every row is one input case: a row without a label is an error unless `allow_unlabeled` (then
    it is an inference-only case, converted without label features), a row without an image is
    an error, and rows that share a case id are all errors (which of them is right cannot be
    told). Raises ValueError when the file has no `image` column.
    """
    folder = storage.dirname(storage.absolute(csv_path))
    parsed, errors = [], []
    for line, row in enumerate(_manifest_rows(csv_path), start=2):   # line 1 is the header
        image, label = row.get("image", ""), row.get("label", "")
        if not image and not label and not row.get("case_id"):
            continue   # blank line
        where = f"{csv_path}:{line}"
        if not image:
            errors.append(CaseError(where, "manifest row without an image",
                                    row.get("case_id") or f"row-{line}"))
            continue
        image = storage.resolve(folder, image)
        case_id = row.get("case_id") or _case_id_from_path(image)
        parsed.append((line, CaseFiles(case_id, image,
                                       storage.resolve(folder, label) if label else None,
                                       series_uid=row.get("series_uid") or None)))

    lines_of: Dict[str, List[int]] = {}
    for line, files in parsed:
        lines_of.setdefault(files.case_id, []).append(line)
    cases = []
    for line, files in parsed:
        others = lines_of[files.case_id]
        if len(others) > 1:
            errors.append(CaseError(files.image_path, f"duplicate case id {files.case_id!r} "
                                    f"(manifest lines {', '.join(map(str, others))})",
                                    files.case_id))
        elif files.label_path is None and not allow_unlabeled:
            errors.append(CaseError(files.image_path, "manifest row without a label "
                                    f"(line {line}); set allow_unlabeled for inference-only "
                                    "cases", files.case_id))
        else:
            cases.append(files)
    return cases, errors
