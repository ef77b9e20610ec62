"""Segmenting a CT volume with an exported model: shared by predict.py (one volume or a folder)
and the full-volume evaluation (pipeline/volume_eval.py), so both see the pixels training saw.

The volume is read as the ExampleGen reads it (preprocessing/nifti.py: stored values, header
scaling applied slice by slice after resampling), so the int16 slices sent to the model equal the
ExampleGen's examples of the same file bit for bit (tests/test_predict_geometry.py), serialized by
the same writer (preprocessing/examples.py), and go through the model's `serving_default`
signature, which holds the Transform graph. Probabilities are resampled back to the input grid
(linear, per class), then thresholded (one channel) or argmaxed (three). Every path may be a URI.
Bad input raises CaseError(file, reason).
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

from preprocessing import storage
from preprocessing.case_discovery import discover_lits_cases, discover_manifest_cases
from preprocessing.examples import slice_example_bytes
from preprocessing.nifti import CanonicalCase, CaseError, CaseFiles, canonicalize_case, read_case
from preprocessing.slices import (SliceConfig, SliceRecord, model_grid_to_canonical,
                                  volume_to_model_input)
from schema.contract import MODEL_SLICE_CONFIG_FILE

# Serialized tf.Examples (ExampleGen format) -> float32 probabilities [B, H, W, C].
ServeFn = Callable[[List[bytes]], np.ndarray]

# A folder or manifest run (predict.py --input DIR|CSV) writes, in its --output folder, one mask
# per volume named <case_id> + MASK_SUFFIX and PREDICTIONS_CSV with one row per mask written.
MASK_SUFFIX = "_mask.nii.gz"
PREDICTIONS_CSV = "predictions.csv"
PREDICTION_COLUMNS = ("case", "seconds", "liver_ml", "tumour_ml", "liver_dice", "tumour_dice")


def check_model_dir(model_dir: str) -> None:
    """Cheap checks of --model, before any TensorFlow import for a local path (a typo fails in
    a second)."""
    try:
        if not storage.isdir(model_dir):
            raise CaseError(model_dir, "model directory not found")
        found = any(storage.isfile(storage.join(model_dir, name))
                    for name in ("saved_model.pb", "saved_model.pbtxt"))
    except OSError as e:
        raise CaseError(model_dir, f"cannot read the model directory ({e})") from e
    if not found:
        raise CaseError(model_dir, "not a SavedModel directory (no saved_model.pb)")


def check_output(output_path: str) -> None:
    """The mask's folder must exist: found before inference, not after it. (A URI's folder is
    not checked: object stores have no folders, writing makes them.)"""
    if storage.is_uri(output_path):
        return
    folder = storage.dirname(storage.absolute(output_path))
    if not storage.isdir(folder):
        raise CaseError(output_path, f"cannot write the mask: folder {folder} not found")


def load_slice_config(model_dir: str) -> SliceConfig:
    path = storage.join(model_dir, MODEL_SLICE_CONFIG_FILE)
    try:
        return SliceConfig.from_dict(json.loads(storage.read_text(path)))
    except FileNotFoundError as e:
        raise CaseError(path, "slice config not found (not a model exported by this "
                              "pipeline's Trainer)") from e
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CaseError(path, f"invalid slice config ({type(e).__name__}: {e})") from e


def serving_function(model) -> ServeFn:
    """The SavedModel's `serving_default` signature as a ServeFn."""
    import tensorflow as tf
    signature = model.signatures["serving_default"]

    def serve(batch: List[bytes], _model=model) -> np.ndarray:   # _model: keeps it alive
        return np.asarray(signature(examples=tf.constant(batch))["probabilities"])
    return serve


def load_model(model_dir: str) -> Tuple[ServeFn, SliceConfig]:
    """(the model's serving function, the SliceConfig it was trained with); CaseError naming the
    directory when it is not a usable exported model."""
    check_model_dir(model_dir)
    config = load_slice_config(model_dir)
    import tensorflow as tf
    try:
        storage.ensure_filesystem(model_dir)
        model = tf.saved_model.load(model_dir)
    except Exception as e:   # TF raises several types for a broken SavedModel
        raise CaseError(model_dir, f"cannot load the SavedModel ({type(e).__name__}: {e})") from e
    if "serving_default" not in model.signatures:
        raise CaseError(model_dir, "the SavedModel has no serving_default signature")
    return serving_function(model), config


def load_input(input_path: str, label_path: Optional[str] = None,
               case_id: Optional[str] = None) -> CanonicalCase:
    """The volume (and ground truth) read, checked and reoriented exactly as the ExampleGen does
    (preprocessing/case_conversion.py case_examples): stored values kept, HU scaling applied per
    slice after resampling, so the model gets the training pixels bit for bit. CaseError (file,
    reason, case id) on any bad input. `case_id`: a manifest's; default the file name's."""
    case_id = case_id or storage.basename(input_path).split(".nii")[0]
    return canonicalize_case(read_case(CaseFiles(case_id, input_path, label_path)), hu=False)


def predict_probabilities(serve: ServeFn, case: CanonicalCase, config: SliceConfig,
                          batch_size: int = 16) -> np.ndarray:
    """Class probabilities per voxel of the canonical volume [X, Y, Z, C] (C = the model's
    output channels: 1 liver, or 3 background / liver / tumour)."""
    # Labels play no part in inference (they would only be resampled for nothing).
    stacks = volume_to_model_input(dataclasses.replace(case, labels=None), config)  # [Z,H,W,K]
    probs = []
    for start in range(0, len(stacks), batch_size):
        batch = [slice_example_bytes(case.case_id, case.spacing,
                                     SliceRecord(image=s, label=None, slice_index=start + i,
                                                 num_slices=len(stacks)))
                 for i, s in enumerate(stacks[start:start + batch_size])]
        probs.append(serve(batch))
    display = np.transpose(np.concatenate(probs), (1, 2, 0, 3))    # [H, W, Z, C]
    # The exact inverse of the ExampleGen's resampling (field of view or target spacing), one
    # channel at a time.
    return np.stack([model_grid_to_canonical(display[..., c], case, config, order=1)
                     for c in range(display.shape[-1])], axis=-1)


def probabilities_to_labels(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """[..., C] probabilities -> uint8 labels: C == 1 thresholded (0/1), C > 1 argmax (0/1/2)."""
    from models.metrics import class_map   # imports Keras: not needed to reject bad input
    return class_map(probs, threshold).astype(np.uint8)


def to_source_orientation(canonical: np.ndarray, case) -> np.ndarray:
    """Canonical RAS+ array -> the input file's own axis order and directions."""
    transform = nib.orientations.ornt_transform(nib.io_orientation(case.affine),
                                                nib.io_orientation(case.source_affine))
    return nib.orientations.apply_orientation(canonical, transform)


def mask_file_bytes(mask: np.ndarray, case: CanonicalCase, output_path: str) -> bytes:
    """The mask as a NIfTI file with the input's header and affine, uint8, unscaled; gzip (at
    nibabel's own level, 1) when the name ends in .gz."""
    out = nib.Nifti1Image(mask, case.source_affine, header=case.source_header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    data = out.to_bytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if output_path.endswith(".gz") else data


def segment_case(serve: ServeFn, config: SliceConfig, case: CanonicalCase, output_path: str,
                 threshold: float = 0.5, batch_size: int = 16):
    """Writes the label map of a loaded case (load_input, which keeps the input file's affine
    and header) to `output_path`; returns it (the input's grid) and the model's output
    channels."""
    probs = predict_probabilities(serve, case, config, batch_size)
    mask = to_source_orientation(probabilities_to_labels(probs, threshold), case)
    assert mask.shape == case.source_shape
    try:
        storage.write_bytes(output_path, mask_file_bytes(mask, case, output_path))
    except OSError as e:
        raise CaseError(output_path, f"cannot write the mask ({type(e).__name__}: {e})") from e
    return mask, probs.shape[-1]


def segment_volume(model_dir: str, input_path: str, output_path: str,
                   threshold: float = 0.5, batch_size: int = 16):
    """Writes the label map; returns it (the input's grid) and the model's output channels."""
    check_model_dir(model_dir)          # before reading a large volume
    case = load_input(input_path)
    serve, config = load_model(model_dir)
    return segment_case(serve, config, case, output_path, threshold, batch_size)


# --- many volumes: a folder or a manifest ---------------------------------------------------------

def is_batch_input(input_path: str) -> bool:
    """A folder (LiTS layout) or a CSV manifest, rather than one volume."""
    return input_path.lower().endswith(".csv") or storage.isdir(input_path)


def discover_inputs(input_path: str) -> Tuple[List[CaseFiles], List[CaseError]]:
    """The cases of a LiTS folder (volume-N, with segmentation-N when there is one) or of a CSV
    manifest (label optional), and one CaseError per entry that cannot be a case (duplicate id,
    segmentation without volume, row without image), so that none is dropped unseen. CaseError
    when the folder or manifest itself cannot be read or holds nothing."""
    try:
        if storage.isdir(input_path):
            # A volume without a segmentation is a case to segment, just without Dice.
            cases, errors = discover_lits_cases(input_path, allow_unlabeled=True)
        else:
            cases, errors = discover_manifest_cases(input_path, allow_unlabeled=True)
    except FileNotFoundError as e:
        raise CaseError(input_path, "not found") from e
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CaseError(input_path, f"cannot read the cases ({type(e).__name__}: {e})") from e
    if not cases and not errors:
        raise CaseError(input_path, "no volumes found (volume-N.nii[.gz] files, or manifest "
                                    "rows with an image)")
    return cases, errors


def mask_path(output_dir: str, case_id: str) -> str:
    """Where a folder run writes a case's mask: `<case id>_mask.nii.gz`, with "%", "/" and "\\"
    in the id percent-encoded, so that the mask stays in the folder and two case ids (which
    discovery keeps unique) never share a file ("a/b" -> "a%2Fb", "a_b" stays)."""
    name = case_id.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    return storage.join(output_dir, name + MASK_SUFFIX)


def volume_row(case_id: str, mask: np.ndarray, case: CanonicalCase, num_classes: int
               ) -> Dict[str, Any]:
    """A predictions.csv row without its time: liver (incl. tumour) and, for a three-class model,
    tumour volumes in ml, and their Dice when the case has labels (None where not given)."""
    # The input grid's voxel volume, from the file's affine (its sform/qform: the header's
    # spacing, and exact for an oblique grid too).
    voxel_ml = abs(float(np.linalg.det(case.source_affine[:3, :3]))) / 1000.0
    tumour = num_classes > 1
    row = {"case": case_id,
           "liver_ml": np.count_nonzero(mask) * voxel_ml,
           "tumour_ml": np.count_nonzero(mask == 2) * voxel_ml if tumour else None,
           "liver_dice": None, "tumour_dice": None}
    if case.labels is not None:
        from models.metrics import dice_numpy
        true = to_source_orientation(case.labels, case)   # checked by load_input: 0/1/2
        row["liver_dice"] = dice_numpy(mask > 0, true > 0)
        if tumour:
            row["tumour_dice"] = dice_numpy(mask == 2, true == 2)
    return row


def predict_case(serve: ServeFn, config: SliceConfig, files: CaseFiles, output_path: str,
                 threshold: float = 0.5, batch_size: int = 16) -> Dict[str, Any]:
    """Reads, segments and writes one case of a folder run; its predictions.csv row (seconds:
    read + segment + write). CaseError naming the file on bad input."""
    start = time.perf_counter()
    case = load_input(files.image_path, files.label_path, case_id=files.case_id)
    mask, num_classes = segment_case(serve, config, case, output_path, threshold, batch_size)
    row = volume_row(files.case_id, mask, case, num_classes)
    row["seconds"] = time.perf_counter() - start
    return row


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
