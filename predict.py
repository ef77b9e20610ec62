"""Segment CT volumes with an exported (pushed) model and write the masks as NIfTI.

    python predict.py --model outputs/serving_model/<version> --input volume-7.nii.gz \\
        --output volume-7_liver.nii.gz [--label segmentation-7.nii.gz]
    python predict.py --model outputs/serving_model/<version> --input DIR_OR_CSV --output OUT_DIR

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

from pipeline import inference
from pipeline.inference import (CaseError, check_model_dir, check_output, load_input,
                                load_model, segment_case, volume_row)
from preprocessing import storage
from preprocessing.process_exit import exit_process

EXIT_BAD_INPUT = 1


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_line(e: CaseError) -> str:
    return f"predict.py: error: {e.path}: {_one_line(e.reason)}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    p.add_argument("--input", required=True,
                   help="CT volume (.nii or .nii.gz), or a LiTS folder or a CSV manifest")
    p.add_argument("--output", required=True,
                   help="mask to write (.nii.gz); a folder for a folder or manifest input")
    p.add_argument("--label", help="ground-truth segmentation of one volume, to report Dice")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="liver probability cut of a one-channel model (a three-class model's "
                        "labels are its argmax)")
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    if args.label and inference.is_batch_input(args.input):
        p.error("--label is for one volume: a folder's labels are its segmentation-N files, "
                "a manifest's its label column")
    return args


def main(argv=None) -> int:
    from pipeline.console import setup_logging
    # Console: this tool's own lines, warnings and errors, on stderr as before; TensorFlow's
    # import chatter filtered (pipeline/console.py says why each filter is safe).
    setup_logging(None, name="predict", component_lines=False, project_info=True,
                  stream=sys.stderr)
    args = parse_args(argv)
    try:
        if inference.is_batch_input(args.input):
            return predict_many(args)
        return predict_one(args)
    except CaseError as e:
        print(_error_line(e), file=sys.stderr)
        return EXIT_BAD_INPUT


def predict_one(args: argparse.Namespace) -> int:
    """One volume -> one mask (and Dice with --label). CaseError on bad input."""
    start = time.time()
    # Cheapest checks first, TensorFlow last: bad input fails fast and quietly.
    check_model_dir(args.model)
    check_output(args.output)
    case = load_input(args.input, args.label)
    serve, config = load_model(args.model)
    mask, num_classes = segment_case(serve, config, case, args.output, args.threshold,
                                     args.batch_size)
    tumor = f" (incl. {np.count_nonzero(mask == 2)} tumour)" if num_classes > 1 else ""
    logging.info("Wrote %s: shape %s, %d liver voxels%s, %.1f s", args.output, mask.shape,
                 int(np.count_nonzero(mask)), tumor, time.time() - start)
    if args.label:
        row = volume_row(case.case_id, mask, case, num_classes)   # the folder run's Dice
        print(f"Liver Dice against {args.label}: {row['liver_dice']:.4f}")
        if num_classes > 1:
            print(f"Tumour Dice against {args.label}: {row['tumour_dice']:.4f}")
    return 0


def _make_output_dir(output_dir: str) -> None:
    try:
        if storage.isfile(output_dir):
            raise CaseError(output_dir, "a file, not a folder: with a folder or manifest "
                                        "input --output is the folder for the masks")
        storage.makedirs(output_dir)
    except OSError as e:
        raise CaseError(output_dir, f"cannot make the output folder ({e})") from e


def predict_many(args: argparse.Namespace) -> int:
    """A folder or manifest -> a mask per volume and predictions.csv (module docstring). Bad
    cases are reported and skipped; CaseError only when nothing can run (model, input list,
    output folder)."""
    start = time.time()
    check_model_dir(args.model)
    cases, failed = inference.discover_inputs(args.input)
    total = len(cases) + len(failed)    # every input counted: written + failed
    _make_output_dir(args.output)
    for e in failed:    # discovery errors: counted as failures, never dropped
        print(_error_line(e), file=sys.stderr)
    serve, config = load_model(args.model)
    loop_start = time.time()
    rows = _segment_cases(args, serve, config, cases, failed)
    _print_summary(args, total, rows, failed, start, time.time() - loop_start)
    return EXIT_BAD_INPUT if failed else 0


def _predict_or_error(args, serve, config, files):
    """(the case's predictions.csv row, None) or (None, the CaseError that names why not). An
    unexpected error in one case fails that case, not the run (its traceback goes to the debug
    log)."""
    out = inference.mask_path(args.output, files.case_id)
    try:
        return inference.predict_case(serve, config, files, out, args.threshold,
                                      args.batch_size), None
    except CaseError as e:
        return None, e
    except Exception as e:   # noqa: BLE001 - a batch run goes on past one case's surprise
        logging.debug("Case %s failed", files.case_id, exc_info=True)
        return None, CaseError(files.image_path, f"unexpected error ({type(e).__name__}: {e})",
                               files.case_id)


def _segment_cases(args, serve, config, cases, failed: list) -> list:
    """Segments each case, rewriting predictions.csv after each (a long run's rows survive a
    kill); appends each bad case's CaseError to `failed`. Returns the rows."""
    from tqdm.auto import tqdm
    csv_path = storage.join(args.output, inference.PREDICTIONS_CSV)
    rows = []
    with tqdm(cases, desc="Volumes", unit="volume", file=sys.stderr, disable=None) as bar:
        for i, files in enumerate(bar, start=1):
            row, error = _predict_or_error(args, serve, config, files)
            if error is not None:
                failed.append(error)
                bar.write(_error_line(error), file=sys.stderr)
                continue
            rows.append(row)
            _write_csv(csv_path, rows)
            if bar.disable:   # no bar (not a terminal): a line per volume instead
                logging.info("Volume %d/%d %s: %s", i, len(cases), files.case_id,
                             _row_text(row))
    if not rows:
        _write_csv(csv_path, rows)   # the header: no mask written is a result too
    return rows


def _write_csv(csv_path: str, rows: list) -> None:
    try:
        storage.write_text(csv_path, inference.predictions_csv_text(rows))
    except OSError as e:
        raise CaseError(csv_path, f"cannot write ({type(e).__name__}: {e})") from e


def _row_text(row: dict) -> str:
    text = f"liver {row['liver_ml']:.1f} ml"
    if row["liver_dice"] is not None:
        text += f", Dice {row['liver_dice']:.4f}"
    return f"{text}, {row['seconds']:.2f} s"


def _print_summary(args, total: int, rows: list, failed: list, start: float,
                   loop_seconds: float) -> None:
    seconds = time.time() - start
    rate = len(rows) / loop_seconds * 60 if loop_seconds > 0 else 0.0
    print(f"predict.py: {len(rows)} of {total} volumes written to {args.output} "
          f"(*{inference.MASK_SUFFIX}, {inference.PREDICTIONS_CSV}), {len(failed)} failed; "
          f"{seconds:.1f} s in all, {rate:.1f} volumes/min (after loading the model)")
    for e in failed:
        print(f"predict.py: failed: {e.path}: {_one_line(e.reason)}")


if __name__ == "__main__":
    exit_process(main())
