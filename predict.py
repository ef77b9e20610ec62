"""Segment a CT volume with an exported (pushed) model and write the mask as NIfTI.

    python predict.py --model outputs/serving_model/<version> --input volume-7.nii.gz \\
        --output volume-7_liver.nii.gz [--label segmentation-7.nii.gz]

The volume goes through the same code as training data (preprocessing/nifti.py, slices.py,
examples.py) and the model's `serving_default` signature (which holds the Transform graph), so
inference sees the pixels training saw. The mask is written in the input file's own grid and
orientation (same shape and affine), ready for ITK-SNAP or 3D Slicer. With --label, prints Dice.

What is written follows the model's output channels (TransformConfig.classes at training):
  1 channel   ("liver")        0 background, 1 liver (incl. tumour): probability >= --threshold
  3 channels  ("liver_tumor")  0 background, 1 liver, 2 tumour: the argmax of the softmax
Probabilities are resampled to the input grid first (linear, per class), then thresholded or
argmaxed: the same order in both modes, and smoother boundaries than resampling labels. Pixels
the model never saw (cropped away by a target spacing) get 0 in every channel: background.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import nibabel as nib
import numpy as np

from models.metrics import class_map, dice_numpy
from preprocessing.examples import slice_to_example
from preprocessing.nifti import CaseFiles, load_case
from preprocessing.slices import (SliceConfig, SliceRecord, model_grid_to_canonical,
                                  volume_to_model_input)


def load_slice_config(model_dir: str) -> SliceConfig:
    from trainer.export import SLICE_CONFIG_FILE
    with open(os.path.join(model_dir, SLICE_CONFIG_FILE)) as f:
        return SliceConfig.from_dict(json.load(f))


def predict_probabilities(model, case, config: SliceConfig, batch_size: int = 16) -> np.ndarray:
    """Class probabilities per voxel of the canonical volume [X, Y, Z, C] (C = the model's
    output channels: 1 liver, or 3 background / liver / tumour)."""
    import tensorflow as tf
    stacks = volume_to_model_input(case, config)          # int16 [Z, H, W, K]
    serve = model.signatures["serving_default"]
    probs = []
    for start in range(0, len(stacks), batch_size):
        batch = [slice_to_example(case.case_id, case.spacing,
                                  SliceRecord(image=s, label=None, slice_index=start + i,
                                              num_slices=len(stacks))).SerializeToString()
                 for i, s in enumerate(stacks[start:start + batch_size])]
        probs.append(serve(examples=tf.constant(batch))["probabilities"].numpy())
    display = np.transpose(np.concatenate(probs), (1, 2, 0, 3))    # [H, W, Z, C]
    # The exact inverse of the ExampleGen's resampling (field of view or target spacing), one
    # channel at a time.
    return np.stack([model_grid_to_canonical(display[..., c], case, config, order=1)
                     for c in range(display.shape[-1])], axis=-1)


def probabilities_to_labels(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """[..., C] probabilities -> uint8 labels: C == 1 thresholded (0/1), C > 1 argmax (0/1/2)."""
    return class_map(probs, threshold).astype(np.uint8)


def to_source_orientation(canonical: np.ndarray, case) -> np.ndarray:
    """Canonical RAS+ array -> the input file's own axis order and directions."""
    transform = nib.orientations.ornt_transform(nib.io_orientation(case.affine),
                                                nib.io_orientation(case.source_affine))
    return nib.orientations.apply_orientation(canonical, transform)


def segment_volume(model_dir: str, input_path: str, output_path: str,
                   threshold: float = 0.5, batch_size: int = 16):
    """Writes the label map; returns it (the input's grid) and the model's output channels."""
    import tensorflow as tf
    config = load_slice_config(model_dir)
    model = tf.saved_model.load(model_dir)
    case = load_case(CaseFiles(os.path.basename(input_path).split(".nii")[0], input_path, None))
    probs = predict_probabilities(model, case, config, batch_size)
    mask = to_source_orientation(probabilities_to_labels(probs, threshold), case)
    assert mask.shape == case.source_shape
    image = nib.load(input_path)
    out = nib.Nifti1Image(mask, case.source_affine, header=image.header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    nib.save(out, output_path)
    return mask, probs.shape[-1]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
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
    mask, num_classes = segment_volume(args.model, args.input, args.output, args.threshold,
                                       args.batch_size)
    tumor = f" (incl. {np.count_nonzero(mask == 2)} tumour)" if num_classes > 1 else ""
    logging.info("Wrote %s: shape %s, %d liver voxels%s, %.1f s", args.output, mask.shape,
                 int(np.count_nonzero(mask)), tumor, time.time() - start)
    if args.label:
        true = np.rint(np.asanyarray(nib.load(args.label).dataobj))
        print(f"Liver Dice against {args.label}: {dice_numpy(mask > 0, true > 0):.4f}")
        if num_classes > 1:
            print(f"Tumour Dice against {args.label}: "
                  f"{dice_numpy(mask == 2, true == 2):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
