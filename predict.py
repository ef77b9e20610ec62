"""Segment a CT volume with an exported (pushed) model and write the mask as NIfTI.

    python predict.py --model outputs/serving_model/<version> --input volume-7.nii.gz \\
        --output volume-7_liver.nii.gz [--label segmentation-7.nii.gz]

The volume goes through the same code as training data (preprocessing/nifti.py, slices.py,
examples.py) and the model's `serving_default` signature (which holds the Transform graph), so
inference sees the pixels training saw. It is read as the ExampleGen reads it (stored values,
header scaling applied slice by slice after resampling), so the int16 slices sent to the model
equal the ExampleGen's examples of the same file bit for bit (tests/test_predict_geometry.py).
(Scaling the whole volume to float HU first, as load_case does and predict.py did, differs from
them by 1 HU on up to 0.2% of the pixels of files with scl_slope/scl_inter: float rounding
before np.rint.) The mask is written in the input file's own grid and orientation (same shape
and affine), ready for ITK-SNAP or 3D Slicer. With --label, prints Dice.

What is written follows the model's output channels (TransformConfig.classes at training):
  1 channel   ("liver")        0 background, 1 liver (incl. tumour): probability >= --threshold
  3 channels  ("liver_tumor")  0 background, 1 liver, 2 tumour: the argmax of the softmax
Probabilities are resampled to the input grid first (linear, per class), then thresholded or
argmaxed: the same order in both modes, and smoother boundaries than resampling labels. Pixels
the model never saw (cropped away by a target spacing) get 0 in every channel: background.

Bad input (a missing, truncated or non-NIfTI file, a 4-D volume, NaNs, a label of another shape
or with other values, a missing or broken model directory, an unwritable output) ends with one
line on stderr, `predict.py: error: <file>: <reason>`, and exit status 1, no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Callable, List, Optional, Tuple

import nibabel as nib
import numpy as np

from preprocessing.examples import slice_to_example
from preprocessing.nifti import CanonicalCase, CaseError, CaseFiles, canonicalize_case, read_case
from preprocessing.slices import (SliceConfig, SliceRecord, model_grid_to_canonical,
                                  volume_to_model_input)
from schema.contract import MODEL_SLICE_CONFIG_FILE

# Serialized tf.Examples (ExampleGen format) -> float32 probabilities [B, H, W, C].
ServeFn = Callable[[List[bytes]], np.ndarray]
EXIT_BAD_INPUT = 1


def check_model_dir(model_dir: str) -> None:
    """Cheap checks of --model, before any TensorFlow import (a typo fails in a second)."""
    if not os.path.isdir(model_dir):
        raise CaseError(model_dir, "model directory not found")
    if not any(os.path.isfile(os.path.join(model_dir, name))
               for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise CaseError(model_dir, "not a SavedModel directory (no saved_model.pb)")


def check_output(output_path: str) -> None:
    """The mask's folder must exist: found before inference, not after it."""
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise CaseError(output_path, f"cannot write the mask: folder {folder} not found")


def load_slice_config(model_dir: str) -> SliceConfig:
    path = os.path.join(model_dir, MODEL_SLICE_CONFIG_FILE)
    try:
        with open(path) as f:
            return SliceConfig.from_dict(json.load(f))
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
        model = tf.saved_model.load(model_dir)
    except Exception as e:   # TF raises several types for a broken SavedModel
        raise CaseError(model_dir, f"cannot load the SavedModel ({type(e).__name__}: {e})") from e
    if "serving_default" not in model.signatures:
        raise CaseError(model_dir, "the SavedModel has no serving_default signature")
    return serving_function(model), config


def load_input(input_path: str, label_path: Optional[str] = None) -> CanonicalCase:
    """The volume (and ground truth) read, checked and reoriented exactly as the ExampleGen does
    (preprocessing/case_conversion.py case_examples): stored values kept, HU scaling applied per
    slice after resampling, so the model gets the training pixels bit for bit. CaseError (file,
    reason) on any bad input."""
    case_id = os.path.basename(input_path).split(".nii")[0]
    return canonicalize_case(read_case(CaseFiles(case_id, input_path, label_path)), hu=False)


def predict_probabilities(serve: ServeFn, case: CanonicalCase, config: SliceConfig,
                          batch_size: int = 16) -> np.ndarray:
    """Class probabilities per voxel of the canonical volume [X, Y, Z, C] (C = the model's
    output channels: 1 liver, or 3 background / liver / tumour)."""
    # Labels play no part in inference (they would only be resampled for nothing).
    stacks = volume_to_model_input(dataclasses.replace(case, labels=None), config)  # [Z,H,W,K]
    probs = []
    for start in range(0, len(stacks), batch_size):
        batch = [slice_to_example(case.case_id, case.spacing,
                                  SliceRecord(image=s, label=None, slice_index=start + i,
                                              num_slices=len(stacks))).SerializeToString()
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


def segment_case(serve: ServeFn, config: SliceConfig, case: CanonicalCase, input_path: str,
                 output_path: str, threshold: float = 0.5, batch_size: int = 16):
    """Writes the label map of a loaded case (load_input) to `output_path` with the input's
    header; returns it (the input's grid) and the model's output channels."""
    probs = predict_probabilities(serve, case, config, batch_size)
    mask = to_source_orientation(probabilities_to_labels(probs, threshold), case)
    assert mask.shape == case.source_shape
    image = nib.load(input_path)
    out = nib.Nifti1Image(mask, case.source_affine, header=image.header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    try:
        nib.save(out, output_path)
    except OSError as e:
        raise CaseError(output_path, f"cannot write the mask ({type(e).__name__}: {e})") from e
    return mask, probs.shape[-1]


def segment_volume(model_dir: str, input_path: str, output_path: str,
                   threshold: float = 0.5, batch_size: int = 16):
    """Writes the label map; returns it (the input's grid) and the model's output channels."""
    check_model_dir(model_dir)          # before reading a large volume
    case = load_input(input_path)
    serve, config = load_model(model_dir)
    return segment_case(serve, config, case, input_path, output_path, threshold, batch_size)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv=None) -> int:
    from pipeline.console import setup_logging
    # Console: this tool's own lines, warnings and errors, on stderr as before; TensorFlow's
    # import chatter filtered (pipeline/console.py says why each filter is safe).
    setup_logging(None, name="predict", component_lines=False, project_info=True,
                  stream=sys.stderr)
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--input", required=True, help="CT volume (.nii or .nii.gz)")
    p.add_argument("--output", required=True, help="mask to write (.nii.gz)")
    p.add_argument("--label", help="ground-truth segmentation, to report Dice")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="liver probability cut of a one-channel model (a three-class model's "
                        "labels are its argmax)")
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    start = time.time()
    try:
        # Cheapest checks first, TensorFlow last: bad input fails fast and quietly.
        check_model_dir(args.model)
        check_output(args.output)
        case = load_input(args.input, args.label)
        serve, config = load_model(args.model)
        mask, num_classes = segment_case(serve, config, case, args.input, args.output,
                                         args.threshold, args.batch_size)
    except CaseError as e:
        print(f"predict.py: error: {e.path}: {_one_line(e.reason)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    tumor = f" (incl. {np.count_nonzero(mask == 2)} tumour)" if num_classes > 1 else ""
    logging.info("Wrote %s: shape %s, %d liver voxels%s, %.1f s", args.output, mask.shape,
                 int(np.count_nonzero(mask)), tumor, time.time() - start)
    if args.label:
        from models.metrics import dice_numpy
        true = to_source_orientation(case.labels, case)   # checked by load_input: 0/1/2
        print(f"Liver Dice against {args.label}: {dice_numpy(mask > 0, true > 0):.4f}")
        if num_classes > 1:
            print(f"Tumour Dice against {args.label}: "
                  f"{dice_numpy(mask == 2, true == 2):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
