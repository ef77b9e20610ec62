"""Full-volume evaluation with the LiTS metrics (evaluation/volume_metrics.py): every slice of
every case segmented as predict.py does it (inference/) and scored against the whole
truth volume. (The TFX Evaluator sees only the selected slices, the liver's z-range +-2 and 10%
of the rest: it misses false positives elsewhere, and its per-volume Dice is not LiTS's.)

    python -m evaluation.volume_eval --model DIR (--data_root DIR | --manifest CSV) \\
        [--baseline DIR] [--split eval|all] [--eval_fraction F --split_seed N] --output DIR

Cases are found and split by the ExampleGen's code (plan_conversion with ConversionSettings), so
`--split eval` with the run's eval_fraction and split_seed gives the Evaluator's volumes. Truth and prediction
are compared in the case's canonical (RAS+) grid with its spacing. Classes follow the
candidate's output channels: 1 -> liver only (such a model cannot find tumour: its tumour scores
would say nothing); 3 -> liver and tumour, on every case (tumour-free and predicted so scores 1).
A baseline lacking a class gets null for it.

Every case is scored twice per model: on the model's own labels and after the 3-D
post-processing (evaluation/model_scoring.py), whatever predict.py's --postprocess, so the
report shows both; roles "candidate", "candidate_postprocessed", "baseline",
"baseline_postprocessed". A model with a tumour channel is also scored per lesion
(evaluation/lesion_metrics.py). Mirroring, threshold and batch size are predict.py's flags.

Written to --output (local or a URI, through common/storage.py):
  metrics.json  {"model": {"uri"}, "baseline": {"uri"} | null, "classes": [...],
                 "inference": {the InferenceConfig: threshold, batch_size, mirror, ...},
                 "cases": [{"case_id", "spacing_mm": [x, y, z], "num_slices",
                            <role>: {class: {dice, voe, rvd, assd_mm, msd_mm, hd95_mm,
                                             truth_ml, pred_ml}} (baseline roles: null
                                             without a baseline),
                            "lesions": {<role>: {lesion_recall, ...}} (tumour models),
                            "seconds"}],
                 "global": {<role>: {class: {"global_dice", "mean_dice"}} | null},
                 "lesions": {<role>: pooled lesion figures | null} | null (liver-only),
                 "seconds_per_volume": float | null,
                 "errors": [{"case_id", "file", "reason"}],   cases of the split not evaluated
                 "rejected_before_split": [...]}   found but never a case (no segmentation,
                                                  duplicate id, bad manifest row): no split
                 undefined values are null
  metrics.csv   a row per case and role: case_id, model (the role), <class>_<metric>
  worst_slices.npz  for the `worst_volumes` cases of lowest candidate liver Dice (of the labels
                predict.py writes with these flags: post-processed or not), the
                `worst_slices` axial slices with the most wrong voxels (most first):
                <case_id>__image (HU float32 [k, H, W]), __truth, __prediction (uint8 labels
                0/1/2), __slice_index (int32 [k], z of the canonical volume). [H, W] as the model
                sees a slice (slices.canonical_to_display: rows anterior -> posterior, columns
                patient right -> left), every n-th pixel so that H, W <= 256.
A case that cannot be read or scored is logged (one line: file, reason), listed under "errors",
and the command exits with status 1 after evaluating the others; so does one rejected before
the split.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from common import storage
from common.process_exit import exit_process
from evaluation.model_scoring import POSTPROCESSED, ModelUnderTest
from evaluation.volume_metrics import METRIC_NAMES
from evaluation.worst_slices import WorstVolumes
from inference.cases import load_case_files
from inference.inference_config import InferenceConfig, add_inference_flags, inference_options
from inference.model import load_model
from preprocessing.conversion_plan import plan_conversion
from preprocessing.conversion_settings import ConversionSettings
from preprocessing.nifti import CaseError, CaseFiles
from preprocessing.splits import EVAL
from schema.contract import (CONSOLE_LOGGER, VOLUME_METRICS_CSV_FILE, VOLUME_METRICS_FILE,
                             WORST_SLICES_FILE)

SPLITS = (EVAL, "all")
# The scorings in metrics.json: each model raw and after the 3-D post-processing.
ROLES = ("candidate", "candidate" + POSTPROCESSED, "baseline", "baseline" + POSTPROCESSED)
EXIT_BAD_INPUT = 1
LOG = logging.getLogger(CONSOLE_LOGGER)


def load_models(model_dir: str, baseline_model_dir: Optional[str]) -> List[ModelUnderTest]:
    """Candidate (and baseline); CaseError naming the directory when one is not usable."""
    models = []
    for role, uri in (("candidate", model_dir), ("baseline", baseline_model_dir)):
        if uri is not None:
            serve, config = load_model(uri)
            models.append(ModelUnderTest(role, uri, serve, config))
    return models


def select_cases(settings: ConversionSettings, input_base: Optional[str], split: str
                 ) -> Tuple[List[CaseFiles], List[CaseError]]:
    """The cases of `split` ("eval": the ExampleGen's eval split; "all") and the ones rejected
    before reading (missing segmentation, duplicate id, bad manifest row)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    plan = plan_conversion(settings, input_base)
    return [c for c, s in plan.cases if split == "all" or s == split], list(plan.errors)


# --- evaluation ----------------------------------------------------------------------------------

@dataclasses.dataclass
class EvaluationResult:
    metrics: Dict[str, Any]   # metrics.json's content
    errors: List[CaseError]   # the bad cases, also in metrics["errors"]
    output_dir: str


def evaluate_case(files: CaseFiles, models: List[ModelUnderTest], worst: WorstVolumes,
                  options: InferenceConfig) -> Dict[str, Any]:
    """metrics.json's entry of one case (every model, raw and post-processed); CaseError when
    it cannot be read."""
    start = time.perf_counter()
    if files.label_path is None:
        raise CaseError(files.image_path, "no ground truth to evaluate against", files.case_id)
    case = load_case_files(files, options.read_limits())   # as predict.py reads it
    truth = np.asarray(case.labels)
    record: Dict[str, Any] = {"case_id": files.case_id,
                              "spacing_mm": [float(s) for s in case.spacing],
                              "num_slices": int(truth.shape[2])}
    # Every model scores the case before any tally counts it: a case that fails half-way is
    # neither in the table nor in the pooled Dice.
    measured = []
    for model in models:
        labels = model.segment(case, options)
        classes = models[0].classes                     # the candidate's, which runs first
        measured.append((model, labels, model.measure(truth, labels, case.spacing, classes)))
    # The worst slices show what predict.py writes with these options.
    shown = "candidate" + (POSTPROCESSED if options.postprocess else "")
    for model, labels, by_role in measured:
        model.add(by_role)
        for role, (entry, _, lesion_case) in by_role.items():
            record[role] = entry
            if lesion_case is not None:
                record.setdefault("lesions", {})[role] = lesion_case.metrics()
        if model.role == "candidate":
            worst.offer(files.case_id, record[shown]["liver"]["dice"], case, truth,
                        labels[shown], classes)
    record.setdefault("baseline", None)
    record["seconds"] = time.perf_counter() - start
    return record


def evaluate_volumes(model_dir: str, cases: Sequence[CaseFiles],
                     baseline_model_dir: Optional[str] = None, *, output_dir: str,
                     worst_volumes: int = 3, worst_slices: int = 4,
                     options: InferenceConfig = InferenceConfig(),
                     known_errors: Sequence[CaseError] = ()) -> EvaluationResult:
    """Segments every slice of every case with the model (and the baseline), scores the whole
    volumes and writes metrics.json, metrics.csv and worst_slices.npz into `output_dir`.
    `known_errors`: entries rejected before the split (discovery), listed apart from the
    cases of the split that could not be evaluated.
    CaseError when a model directory is not usable."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    models = load_models(model_dir, baseline_model_dir)
    worst = WorstVolumes(worst_volumes, worst_slices)
    records, errors = [], []
    for e in known_errors:
        LOG.warning("Rejected before the split: %s: %s", e.path, e.reason)
    with logging_redirect_tqdm(), tqdm(cases, desc="Volumes", unit="volume",
                                       file=sys.stderr, disable=None) as progress:
        for i, files in enumerate(progress, start=1):
            try:
                records.append(evaluate_case(files, models, worst, options))
            except Exception as e:   # one bad case is reported; the others are still scored
                error = _as_case_error(e, files)
                errors.append(error)
                LOG.warning("Bad case %s: %s: %s", error.case_id, error.path, error.reason)
                LOG.debug("Case %s failed", files.case_id, exc_info=True)
                continue
            LOG.info("Volume %d/%d %s: %s, %.1f s", i, len(cases), files.case_id,
                     _dice_text(records[-1]), records[-1]["seconds"])   # time per volume
    metrics = metrics_document(models, records, errors, list(known_errors), options)
    write_outputs(output_dir, metrics, worst)
    return EvaluationResult(metrics, errors, output_dir)


def _as_case_error(error: Exception, files: CaseFiles) -> CaseError:
    if isinstance(error, CaseError):
        error.case_id = error.case_id or files.case_id
        return error
    return CaseError(files.image_path, f"{type(error).__name__}: {error}", files.case_id)


def _dice_text(record: Dict[str, Any]) -> str:
    text = f"liver Dice {record['candidate']['liver']['dice']:.4f}"
    baseline = (record.get("baseline") or {}).get("liver")
    return text + (f" (baseline {baseline['dice']:.4f})" if baseline else "")


def _error_entries(errors: Sequence[CaseError]) -> List[Dict[str, Any]]:
    return [{"case_id": e.case_id, "file": e.path, "reason": e.reason} for e in errors]


def metrics_document(models: List[ModelUnderTest], records: List[Dict[str, Any]],
                     errors: List[CaseError], rejected: Sequence[CaseError] = (),
                     options: InferenceConfig = InferenceConfig()) -> Dict[str, Any]:
    """metrics.json's content (module docstring)."""
    by_role = {m.role: m for m in models}
    candidate, baseline = by_role["candidate"], by_role.get("baseline")
    classes = list(candidate.classes or ["liver"])
    pooled, lesions = {}, {}
    for name in ROLES:
        model = by_role.get(name.replace(POSTPROCESSED, ""))
        pooled[name] = model.pooled_dice(name, classes) if model else None
        lesions[name] = model.pooled_lesions(name) if model else None
    seconds = [r["seconds"] for r in records]
    return {"model": {"uri": candidate.uri},
            "baseline": {"uri": baseline.uri} if baseline else None,
            "classes": classes, "inference": options.to_dict(), "cases": records,
            "global": pooled,
            "lesions": lesions if "tumour" in classes else None,
            "seconds_per_volume": float(np.mean(seconds)) if seconds else None,
            "errors": _error_entries(errors),
            "rejected_before_split": _error_entries(rejected)}


def csv_text(metrics: Dict[str, Any]) -> str:
    classes, out = metrics["classes"], io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["case_id", "model", *(f"{c}_{m}" for c in classes for m in METRIC_NAMES)])
    for case in metrics["cases"]:
        for role in (r for r in ROLES if case.get(r) is not None):
            values = [(case[role].get(c) or {}).get(m) for c in classes for m in METRIC_NAMES]
            writer.writerow([case["case_id"], role, *("" if v is None else repr(v)
                                                      for v in values)])
    return out.getvalue()


def write_outputs(output_dir: str, metrics: Dict[str, Any], worst: WorstVolumes) -> None:
    # allow_nan=False: an undefined value must be null, never a NaN that JSON cannot hold.
    storage.write_text(storage.join(output_dir, VOLUME_METRICS_FILE),
                       json.dumps(metrics, indent=1, allow_nan=False))
    storage.write_text(storage.join(output_dir, VOLUME_METRICS_CSV_FILE), csv_text(metrics))
    storage.write_bytes(storage.join(output_dir, WORST_SLICES_FILE), worst.npz_bytes())


# --- command line --------------------------------------------------------------------------------

def summary_lines(result: EvaluationResult) -> List[str]:
    m = result.metrics
    lines = [f"Evaluated {len(m['cases'])} volumes, {len(result.errors)} bad"
             + (f", {m['seconds_per_volume']:.1f} s/volume" if m["cases"] else "")
             + (f"; {len(m['rejected_before_split'])} entries rejected before the split"
                if m["rejected_before_split"] else "")]
    for role in ROLES:
        for name, pooled in (m["global"].get(role) or {}).items():
            if pooled and pooled["global_dice"] is not None:
                lines.append(f"{role} {name}: global Dice {pooled['global_dice']:.4f}, "
                             f"mean Dice {pooled['mean_dice']:.4f}")
    if m["cases"]:
        worst = min(m["cases"], key=lambda c: c["candidate"]["liver"]["dice"])
        lines.append(f"Worst case: {worst['case_id']}, liver Dice "
                     f"{worst['candidate']['liver']['dice']:.4f}")
    lines.append(f"Wrote {VOLUME_METRICS_FILE}, {VOLUME_METRICS_CSV_FILE}, {WORST_SLICES_FILE} "
                 f"to {result.output_dir}")
    return lines


def conversion_settings(args: argparse.Namespace) -> ConversionSettings:
    """The ExampleGen's split settings: the defaults, with the flags that were given (a
    pipeline run's eval split: pass the eval_fraction and split_seed it ran with)."""
    overrides = {"manifest": args.manifest, "eval_fraction": args.eval_fraction,
                 "split_seed": args.split_seed}
    return dataclasses.replace(ConversionSettings(),
                               **{k: v for k, v in overrides.items() if v is not None})


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluation.volume_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported SavedModel directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_root", help="folder of volume-N / segmentation-N files")
    source.add_argument("--manifest", help="CSV with columns image, label[, case_id]")
    p.add_argument("--baseline", help="a second SavedModel to compare with")
    p.add_argument("--split", choices=SPLITS, default=EVAL)
    p.add_argument("--output", required=True, help="folder (or URI) for the three files")
    p.add_argument("--eval_fraction", type=float,
                   help=f"the pipeline run's (default {ConversionSettings.eval_fraction})")
    p.add_argument("--split_seed", type=int,
                   help=f"the pipeline run's (default {ConversionSettings.split_seed})")
    for name, default in (("worst_volumes", 3), ("worst_slices", 4)):
        p.add_argument(f"--{name}", type=int, default=default)
    add_inference_flags(p, postprocess_help="which labels the worst slices show (both are "
                                            "always scored)")
    args = p.parse_args(argv)
    try:
        args.options = inference_options(args)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    from common.logs import setup_logging
    setup_logging(None, name="volume_eval", project_info=True, stream=sys.stderr)
    args = parse_args(argv)
    try:
        try:
            cases, errors = select_cases(conversion_settings(args), args.data_root, args.split)
        except (OSError, ValueError) as e:   # an unreadable folder or manifest
            raise CaseError(args.manifest or args.data_root, str(e)) from e
        if not cases:
            raise CaseError(args.manifest or args.data_root, f"no cases in split {args.split}")
        result = evaluate_volumes(
            args.model, cases, args.baseline, output_dir=args.output,
            worst_volumes=args.worst_volumes, worst_slices=args.worst_slices,
            options=args.options, known_errors=errors)
    except CaseError as e:
        print(f"volume_eval: error: {e.path}: {' '.join(e.reason.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:                     # e.g. the output cannot be written
        print(f"volume_eval: error: {args.output}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(summary_lines(result)))
    return EXIT_BAD_INPUT if result.errors or result.metrics["rejected_before_split"] else 0


if __name__ == "__main__":
    exit_process(main())
