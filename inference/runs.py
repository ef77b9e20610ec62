"""predict.py's two runs, on parsed arguments (`model`, `input`, `output`, `label`, `options`,
the InferenceConfig of its flags, and `request`, the OutputRequest of its output flags): one
volume -> one mask (with Dice given its label), and a LiTS folder, CSV manifest or folder of DICOM
series -> a mask (and / or a DICOM SEG) per volume and predictions.csv, each bad case reported on
stderr and skipped, a summary at the end. Errors are one line, `predict.py: error: <file>: <reason>`."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Dict

import numpy as np

from common import storage
from common.interrupts import signal_name
from common.run_lock import locked_outputs
from inference.cases import discover_inputs, load_case_files, load_input
from inference.inference_config import InferenceConfig
from inference.model import ServeFn, check_model_dir, load_model
from inference.outputs import SEG_SUFFIX, OutputRequest
from inference.segmenter import segment_case, to_source_orientation
from inference.writers import (MASK_SUFFIX, PREDICTIONS_CSV, check_output, mask_path,
                               predictions_csv_text)
from preprocessing.nifti import CanonicalCase, CaseError, CaseFiles
from preprocessing.slices import SliceConfig

EXIT_BAD_INPUT = 1


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_line(e: CaseError) -> str:
    return f"predict.py: error: {e.path}: {_one_line(e.reason)}"


def segment_one(args) -> int:
    """One volume -> one mask (and Dice with --label). CaseError on bad input."""
    start = time.time()
    # Cheapest checks first, TensorFlow last: bad input fails fast and quietly.
    check_model_dir(args.model)
    check_output(args.output)
    case = load_input(args.input, args.label, limits=args.options.read_limits())
    serve, config = load_model(args.model)
    mask, num_classes = segment_case(serve, config, case, args.output, args.options,
                                     args.request)
    tumor = f" (incl. {np.count_nonzero(mask == 2)} tumour)" if num_classes > 1 else ""
    logging.info("Wrote %s: shape %s, %d liver voxels%s, %.1f s", args.output, mask.shape,
                 int(np.count_nonzero(mask)), tumor, time.time() - start)
    if args.label:
        row = volume_row(case.case_id, mask, case, num_classes)   # the folder run's Dice
        print(f"Liver Dice against {args.label}: {row['liver_dice']:.4f}")
        if num_classes > 1:
            print(f"Tumour Dice against {args.label}: {row['tumour_dice']:.4f}")
    return 0


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
                 options: InferenceConfig = InferenceConfig(),
                 request: OutputRequest = OutputRequest()) -> Dict[str, Any]:
    """Reads, segments and writes one case of a folder run (its mask at `output_path` and / or
    its DICOM SEG beside it); its predictions.csv row (seconds: read + segment + write).
    CaseError naming the file on bad input."""
    start = time.perf_counter()
    case = load_case_files(files, options.read_limits())
    mask, num_classes = segment_case(serve, config, case, output_path, options, request)
    row = volume_row(files.case_id, mask, case, num_classes)
    row["seconds"] = time.perf_counter() - start
    return row


def _make_output_dir(output_dir: str) -> None:
    try:
        if storage.isfile(output_dir):
            raise CaseError(output_dir, "a file, not a folder: with a folder or manifest "
                                        "input --output is the folder for the masks")
        storage.makedirs(output_dir)
    except OSError as e:
        raise CaseError(output_dir, f"cannot make the output folder ({e})") from e


def segment_many(args) -> int:
    """A folder or manifest -> a mask per volume and predictions.csv (module docstring). Bad
    cases are reported and skipped; CaseError only when nothing can run (model, input list,
    output folder)."""
    start = time.time()
    check_model_dir(args.model)
    cases, failed = discover_inputs(args.input)
    total = len(cases) + len(failed)    # every input counted: written + failed
    _make_output_dir(args.output)
    for e in failed:    # discovery errors: counted as failures, never dropped
        print(error_line(e), file=sys.stderr)
    with locked_outputs((storage.absolute(args.output), True, "the output folder")):
        serve, config = load_model(args.model)
        loop_start = time.time()
        rows = _segment_cases(args, serve, config, cases, failed)
    _print_summary(args, total, rows, failed, start, time.time() - loop_start)
    return EXIT_BAD_INPUT if failed else 0


def _predict_or_error(args, serve, config, files):
    """(the case's predictions.csv row, None) or (None, the CaseError that names why not). An
    unexpected error in one case fails that case, not the run (its traceback goes to the debug
    log)."""
    out = mask_path(args.output, files.case_id)
    try:
        return predict_case(serve, config, files, out, args.options, args.request), None
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
    csv_path = storage.join(args.output, PREDICTIONS_CSV)
    rows = []
    with tqdm(cases, desc="Volumes", unit="volume", file=sys.stderr, disable=None) as bar:
        for i, files in enumerate(bar, start=1):
            try:
                row, error = _predict_or_error(args, serve, config, files)
            except KeyboardInterrupt as e:
                print(f"Interrupted by {signal_name(e)} at volume {i} of {len(cases)}: the "
                      f"{len(rows)} masks written and their rows in {csv_path} are whole (each "
                      "file is written under a temporary name, then renamed); run the same "
                      "command again to segment the rest.", file=sys.stderr)
                raise
            if error is not None:
                failed.append(error)
                bar.write(error_line(error), file=sys.stderr)
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
        storage.write_text(csv_path, predictions_csv_text(rows))
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
    written = [f"*{MASK_SUFFIX}"] * args.request.nifti + [f"*{SEG_SUFFIX}"] * args.request.seg
    print(f"predict.py: {len(rows)} of {total} volumes written to {args.output} "
          f"({', '.join(written + [PREDICTIONS_CSV])}), {len(failed)} failed; "
          f"{seconds:.1f} s in all, {rate:.1f} volumes/min (after loading the model)")
    for e in failed:
        print(f"predict.py: failed: {e.path}: {_one_line(e.reason)}")
