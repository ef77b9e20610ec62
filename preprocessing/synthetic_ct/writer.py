"""Writing a synthetic data set: the NIfTI files of each case (atomically) and the `dataset.json`
manifest, regenerating only the cases that are missing or stale."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import List, Optional, Tuple

import nibabel as nib

from preprocessing.synthetic_ct.case import DEFAULT_SLICES_RANGE, SyntheticCase, generate_case

# The package's name (tests and users filter on it), not this module's.
LOG = logging.getLogger("preprocessing.synthetic_ct")

GENERATOR_VERSION = 2   # 2: LiTS-like lesions (synthetic_ct/lesions.py)
MANIFEST_NAME = "dataset.json"


def case_filenames(index: int) -> Tuple[str, str]:
    return f"volume-{index}.nii.gz", f"segmentation-{index}.nii.gz"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_atomic(img: nib.Nifti1Image, path: str) -> None:
    # A hidden temp name (still ending in .nii.gz so nibabel gzips it) + rename: an interrupted run
    # never leaves a truncated file that looks complete, and globs for volume-*.nii.gz skip it.
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _dataset_params(num_cases, seed=0, in_plane=128, slices_range=DEFAULT_SLICES_RANGE,
                    start_index=0) -> dict:
    return {
        "generator": "synthetic_ct",  # not __name__: that is "__main__" under python -m
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "in_plane": int(in_plane),
        "slices_range": [int(slices_range[0]), int(slices_range[1])],
        "start_index": int(start_index),
        "num_cases": int(num_cases),
    }


def _same_generator(a: dict, b: dict) -> bool:
    """Whether two manifests describe cases drawn with the same parameters (case by case)."""
    keys = ("generator", "version", "seed", "in_plane", "slices_range")
    return all(a.get(k) == b.get(k) for k in keys)


def read_manifest(out_dir: str) -> Optional[dict]:
    path = os.path.join(out_dir, MANIFEST_NAME)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _case_entry(case: SyntheticCase, vol_name: str, seg_name: str, vol_path: str, seg_path: str) -> dict:
    return {
        "index": case.case_index,
        "volume": vol_name,
        "segmentation": seg_name,
        "orientation": case.orientation,
        "spacing": [float(v) for v in case.spacing],
        "shape": [int(v) for v in case.volume.shape],
        "num_slices": case.num_slices,
        "slices_with_liver": len(case.liver_slices),
        # First/last axial slice with liver, counted from the inferior end (canonical RAS z index).
        "canonical_liver_slice_range": [case.liver_slices[0], case.liver_slices[-1]] if case.liver_slices else None,
        "num_tumours": case.num_tumours,
        "scl_slope": case.scl_slope,
        "scl_inter": case.scl_inter,
        "sha256": {"volume": _sha256(vol_path), "segmentation": _sha256(seg_path)},
    }


def write_dataset(
    out_dir: str,
    num_cases: int,
    seed: int = 0,
    in_plane: int = 128,
    slices_range: Tuple[int, int] = DEFAULT_SLICES_RANGE,
    start_index: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> List[Tuple[str, str]]:
    """Write cases ``start_index .. start_index+num_cases-1`` and ``dataset.json`` into ``out_dir``.

    Returns ``[(volume_path, segmentation_path), ...]``. Unless ``overwrite``, a case whose files
    exist and match the previous manifest (same generator parameters and sha256) is not regenerated.
    """
    if num_cases < 0:
        raise ValueError("num_cases must be >= 0")
    os.makedirs(out_dir, exist_ok=True)
    params = _dataset_params(num_cases, seed, in_plane, slices_range, start_index)
    old = read_manifest(out_dir)
    old_entries = {}
    if old is not None and _same_generator(old, params):
        old_entries = {int(e["index"]): e for e in old.get("cases", [])}

    indices = range(start_index, start_index + num_cases)
    iterator = indices
    if progress:
        from tqdm import tqdm

        iterator = tqdm(indices, desc="synthetic CT", unit="case")
    pairs, entries = [], []
    for index in iterator:
        vol_name, seg_name = case_filenames(index)
        vol_path, seg_path = os.path.join(out_dir, vol_name), os.path.join(out_dir, seg_name)
        prev = old_entries.get(index)
        if not overwrite and prev is not None and _files_match(prev, vol_path, seg_path):
            LOG.debug("case %d unchanged, skipped", index)
            entries.append(prev)
        else:
            case = generate_case(index, seed=seed, in_plane=in_plane, slices_range=slices_range)
            vol_img, seg_img = case.to_nifti()
            _save_atomic(vol_img, vol_path)
            _save_atomic(seg_img, seg_path)
            entry = _case_entry(case, vol_name, seg_name, vol_path, seg_path)
            entries.append(entry)
            LOG.info("wrote %s (%s, %s, spacing %s, %d/%d slices with liver, %d tumours)", vol_name,
                     case.orientation, "x".join(map(str, case.volume.shape)),
                     "x".join(f"{s:g}" for s in case.spacing), len(case.liver_slices),
                     case.num_slices, case.num_tumours)
        pairs.append((vol_path, seg_path))

    manifest = dict(params, cases=entries)
    tmp = os.path.join(out_dir, f".tmp-{os.getpid()}-{MANIFEST_NAME}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST_NAME))
    _warn_extra_files(out_dir, {os.path.basename(p) for pair in pairs for p in pair})
    return pairs


def _files_match(entry: dict, vol_path: str, seg_path: str) -> bool:
    if not (os.path.isfile(vol_path) and os.path.isfile(seg_path)):
        return False
    sha = entry.get("sha256") or {}
    return sha.get("volume") == _sha256(vol_path) and sha.get("segmentation") == _sha256(seg_path)


def _warn_extra_files(out_dir: str, expected: set) -> None:
    extra = sorted(
        name for name in os.listdir(out_dir)
        if name.endswith(".nii.gz") and name.startswith(("volume-", "segmentation-")) and name not in expected
    )
    if extra:
        LOG.warning("%s holds %d NIfTI files not in %s (e.g. %s)", out_dir, len(extra), MANIFEST_NAME, extra[0])


def ensure_dataset(out_dir: str, num_cases: int, progress: bool = True,
                   **generator_args) -> List[Tuple[str, str]]:
    """Return the data set's file pairs, generating only what is missing or stale.

    `generator_args`: seed, in_plane, slices_range, start_index, as for ``write_dataset``.
    Fast path: ``dataset.json`` has the same parameters and every listed file exists -> nothing is
    read or written. Otherwise ``write_dataset`` regenerates the cases that don't match.
    """
    params = _dataset_params(num_cases, **generator_args)
    start = params["start_index"]
    manifest = read_manifest(out_dir)
    pairs = [tuple(os.path.join(out_dir, n) for n in case_filenames(i))
             for i in range(start, start + num_cases)]
    if manifest is not None and all(manifest.get(k) == v for k, v in params.items()):
        listed = {int(e["index"]) for e in manifest.get("cases", [])}
        complete = listed == set(range(start, start + num_cases))
        if complete and all(os.path.isfile(p) for pair in pairs for p in pair):
            return pairs
    return write_dataset(out_dir, num_cases, overwrite=False, progress=progress, **generator_args)
