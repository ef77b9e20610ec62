"""Segment CT volumes with an exported (pushed) model and write the masks as NIfTI or DICOM SEG.

    python predict.py --model outputs/serving_model/<version> --input volume-7.nii.gz \\
        --output volume-7_liver.nii.gz [--label segmentation-7.nii.gz]
    python predict.py --model outputs/serving_model/<version> --input DIR_OR_CSV --output OUT_DIR
    python predict.py --model outputs/serving_model/<version> --input DICOM_DIR --output OUT_DIR \\
        --output_format both

DICOM: --input is a folder holding one CT series or many (files grouped by SeriesInstanceUID,
which may span sub-folders; one case per series, named after its folder, plus _S<SeriesNumber>
where a folder holds several). The series is read by the ExampleGen's own DICOM reader
(preprocessing/dicom_volume.py: geometry from ImagePositionPatient / ImageOrientationPatient,
rescale from the headers); a series that one affine cannot describe (missing slices, gantry
tilt, mixed sizes, not CT, undecodable pixels) gets one error line and is skipped.
--output_format nifti writes <case>_mask.nii.gz in the series' world geometry; seg writes
<case>_seg.dcm, a DICOM SEG (highdicom) referencing the source series and instances, with one
segment for liver (incl. tumour) and one for tumour (three-class models), SNOMED CT coded, and
the algorithm's name, version and model id; both writes both. --seg_type fractional stores the
probabilities (before post-processing) instead of the binary mask.

Many volumes: --input is a folder in the LiTS layout (volume-N.nii[.gz], with segmentation-N
when there is one) or a CSV manifest (columns image, label (may be empty), optional case_id,
as the ExampleGen reads it); --output is a folder (made if missing). The model is loaded once.
Written there: <case_id>_mask.nii.gz per volume (volume-7_mask.nii.gz; each byte for byte what
a one-volume run writes) and predictions.csv, one row per mask written: case, seconds (read +
segment + write), liver_ml (liver incl. tumour), tumour_ml (three-class models), liver_dice and
tumour_dice (with labels; empty cells where a value does not apply). Volumes are in the input
grid (voxel volume from the file's affine). A progress bar on a terminal, else a log line per
volume. A bad case (bad file, mismatched label, a discovery error such as a duplicate id) gets
one stderr line `predict.py: error: <file>: <reason>` and is skipped; at the end a summary
(written, failed with each failed file, time, volumes/min) on stdout, and exit status 1 if any
case failed. A model, folder or manifest that cannot be used at all ends the run at once.

The work is done by the inference/ package (this file only parses the command line), shared
with the full-volume evaluation. The volume goes
through the same code as training data (preprocessing/nifti.py, slices.py, examples.py) and the model's `serving_default` signature (which holds the Transform graph), so
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

--model, --input, --label and --output may be URIs (gs://, s3://; common/storage.py): the
volume is read by the ExampleGen's own reader, the SavedModel by tf.saved_model.load, and the
mask serialized by nibabel in memory (gzip for a .gz name) and written as one file.
"""
from __future__ import annotations

import argparse
import sys

from common.interrupts import EXIT_INTERRUPTED, signal_name, terminate_as_interrupt
from common.process_exit import exit_process
from common.run_lock import RunLockHeld
from inference.cases import is_batch_input
from inference.inference_config import add_inference_flags, inference_options
from inference.outputs import OUTPUT_FORMATS, SEG_TYPES, OutputRequest, model_id_of
from inference.runs import EXIT_BAD_INPUT, error_line, segment_many, segment_one
from preprocessing.nifti import CaseError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--input", required=True,
                   help="CT volume (.nii or .nii.gz), or a LiTS folder, a CSV manifest, or a "
                        "folder of DICOM series")
    p.add_argument("--output", required=True,
                   help="mask to write (.nii.gz); a folder for a folder, manifest or DICOM input")
    p.add_argument("--label", help="ground-truth segmentation of one volume, to report Dice")
    p.add_argument("--output_format", choices=OUTPUT_FORMATS, default=OutputRequest.output_format,
                   help="nifti: <case>_mask.nii.gz; seg: a DICOM SEG <case>_seg.dcm (DICOM "
                        "input only); both (default %(default)s)")
    p.add_argument("--seg_type", choices=SEG_TYPES, default=OutputRequest.seg_type,
                   help="DICOM SEG: binary masks, or fractional probabilities "
                        "(default %(default)s)")
    add_inference_flags(p, postprocess_help="3-D post-processing: the largest liver "
                        "component, enclosed holes filled, tumour only inside the liver")
    args = p.parse_args(argv)
    if args.label and is_batch_input(args.input):
        p.error("--label is for one volume: a folder's labels are its segmentation-N files, "
                "a manifest's its label column")
    try:
        args.options = inference_options(args)
        args.request = OutputRequest(args.output_format, args.seg_type, model_id_of(args.model))
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    from common.logs import setup_logging

    # Console: this tool's own lines, warnings and errors, on stderr as before; TensorFlow's
    # import chatter filtered (common/console_noise.py says why each filter is safe).
    setup_logging(None, name="predict", project_info=True, stream=sys.stderr)
    args = parse_args(argv)
    try:
        with terminate_as_interrupt():
            return segment_many(args) if is_batch_input(args.input) else segment_one(args)
    except CaseError as e:
        print(error_line(e), file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunLockHeld as e:
        print(f"Not started: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:
        print(f"Interrupted by {signal_name(e)}: no partial mask is left (masks are written "
              "under a temporary name, then renamed).", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    exit_process(main())
