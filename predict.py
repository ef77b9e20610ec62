"""Segment a CT volume with an exported (pushed) model and write the mask as NIfTI.

    python predict.py --model outputs/serving_model/<version> --input volume-7.nii.gz \\
        --output volume-7_liver.nii.gz [--label segmentation-7.nii.gz]

The work is done by pipeline/inference.py, shared with the full-volume evaluation. The volume goes
through the same code as training data (preprocessing/nifti.py, slices.py,
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

--model, --input, --label and --output may be URIs (gs://, s3://; preprocessing/storage.py): the
volume is read by the ExampleGen's own reader, the SavedModel by tf.saved_model.load, and the
mask serialized by nibabel in memory (gzip for a .gz name) and written as one file.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from pipeline.inference import (CaseError, check_model_dir, check_output, load_input,
                                load_model, segment_case, to_source_orientation)

EXIT_BAD_INPUT = 1


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
