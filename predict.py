"""Segment a CT volume with an exported (pushed) model and write the mask as NIfTI.

    python predict.py --model outputs/serving_model/<version> --input volume-7.nii.gz \\
        --output volume-7_liver.nii.gz [--label segmentation-7.nii.gz]

The volume goes through the same code as training data (preprocessing/nifti.py, slices.py,
examples.py) and the model's `serving_default` signature (which holds the Transform graph), so
inference sees the pixels training saw. The mask is written in the input file's own grid and
orientation (same shape and affine), ready for ITK-SNAP or 3D Slicer. With --label, prints Dice.
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

from models.metrics import dice_numpy
from preprocessing.examples import slice_to_example
from preprocessing.nifti import CaseFiles, load_case
from preprocessing.slices import (SliceConfig, SliceRecord, model_grid_to_canonical,
                                  volume_to_model_input)


def load_slice_config(model_dir: str) -> SliceConfig:
    from trainer.export import SLICE_CONFIG_FILE
    with open(os.path.join(model_dir, SLICE_CONFIG_FILE)) as f:
        return SliceConfig.from_dict(json.load(f))


def predict_probabilities(model, case, config: SliceConfig, batch_size: int = 16) -> np.ndarray:
    """Liver probability per voxel of the canonical volume [X, Y, Z]."""
    import tensorflow as tf
    stacks = volume_to_model_input(case, config)          # int16 [Z, H, W, K]
    serve = model.signatures["serving_default"]
    probs = []
    for start in range(0, len(stacks), batch_size):
        batch = [slice_to_example(case.case_id, case.spacing,
                                  SliceRecord(image=s, label=None, slice_index=start + i,
                                              num_slices=len(stacks))).SerializeToString()
                 for i, s in enumerate(stacks[start:start + batch_size])]
        probs.append(serve(examples=tf.constant(batch))["probabilities"].numpy()[..., 0])
    display = np.transpose(np.concatenate(probs), (1, 2, 0))    # [H, W, Z]
    # The exact inverse of the ExampleGen's resampling (field of view or target spacing).
    return model_grid_to_canonical(display, case, config, order=1)


def to_source_orientation(canonical: np.ndarray, case) -> np.ndarray:
    """Canonical RAS+ array -> the input file's own axis order and directions."""
    transform = nib.orientations.ornt_transform(nib.io_orientation(case.affine),
                                                nib.io_orientation(case.source_affine))
    return nib.orientations.apply_orientation(canonical, transform)


def segment_volume(model_dir: str, input_path: str, output_path: str,
                   threshold: float = 0.5, batch_size: int = 16):
    import tensorflow as tf
    config = load_slice_config(model_dir)
    model = tf.saved_model.load(model_dir)
    case = load_case(CaseFiles(os.path.basename(input_path).split(".nii")[0], input_path, None))
    probs = predict_probabilities(model, case, config, batch_size)
    mask = to_source_orientation((probs >= threshold).astype(np.uint8), case)
    assert mask.shape == case.source_shape
    image = nib.load(input_path)
    out = nib.Nifti1Image(mask, case.source_affine, header=image.header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    nib.save(out, output_path)
    return mask


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--input", required=True, help="CT volume (.nii or .nii.gz)")
    p.add_argument("--output", required=True, help="mask to write (.nii.gz)")
    p.add_argument("--label", help="ground-truth segmentation, to report Dice")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    start = time.time()
    mask = segment_volume(args.model, args.input, args.output, args.threshold, args.batch_size)
    logging.info("Wrote %s: shape %s, %d liver voxels, %.1f s", args.output, mask.shape,
                 int(mask.sum()), time.time() - start)
    if args.label:
        true = np.asanyarray(nib.load(args.label).dataobj) > 0
        print(f"Liver Dice against {args.label}: {dice_numpy(mask > 0, true):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
