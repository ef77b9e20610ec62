"""VolumeEvaluator: the full-volume LiTS evaluation (evaluation/volume_eval.py) as a TFX component.

It segments every slice of the ExampleGen's eval volumes (found and split by the ExampleGen's
own settings, so they are the Evaluator's volumes) with the Trainer's model and, when given,
the baseline (e.g. the latest blessed model), and writes metrics.json, metrics.csv and
worst_slices.npz into its VolumeEvaluation artifact, and, given the Evaluator's evaluation and
blessing, the self-contained eval_report.html (evaluation/report) beside them. Key figures go to the artifact's custom
properties: cases_evaluated, cases_failed, <class>_global_dice, <class>_mean_dice (candidate).
Unreadable cases are logged and listed in metrics.json (the ExampleGen quarantines the same
ones); the component fails only when no case could be evaluated.

The baseline is an optional input (TFX 1.16: an InputArtifact argument with default None);
leave it out, or use `volume_evaluator()`, which omits it when there is none.

(No `from __future__ import annotations` here: the @component decorator reads the real types.)"""

import dataclasses
import json

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, standard_artifacts
from tfx.utils import path_utils

from common import storage
from components.artifacts import VolumeEvaluation
from evaluation.volume_eval import evaluate_volumes, select_cases
from inference.inference_config import InferenceConfig
from preprocessing.conversion_settings import ConversionSettings
from schema.contract import EVAL_REPORT_FILE, SETTINGS_FILE


def serving_dir(model: standard_artifacts.Model) -> str:
    """Where the Trainer's Model artifact keeps the SavedModel (<uri>/Format-Serving)."""
    return path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))


def record_figures(evaluation: artifact.Artifact, metrics: dict) -> None:
    evaluation.set_int_custom_property("cases_evaluated", len(metrics["cases"]))
    evaluation.set_int_custom_property("cases_failed", len(metrics["errors"]))
    for role, prefix in (("candidate", ""), ("candidate_postprocessed", "postprocessed_")):
        for name, pooled in (metrics["global"].get(role) or {}).items():
            for key in ("global_dice", "mean_dice"):
                if pooled and pooled[key] is not None:
                    evaluation.set_float_custom_property(f"{prefix}{name}_{key}", pooled[key])
    lesions = (metrics.get("lesions") or {}).get("candidate") or {}
    if lesions.get("lesion_recall") is not None:
        evaluation.set_float_custom_property("lesion_recall", lesions["lesion_recall"])


@component
def VolumeEvaluator(
        model: InputArtifact[standard_artifacts.Model],
        evaluation: OutputArtifact[VolumeEvaluation],
        data_root: Parameter[str],
        conversion_settings: Parameter[str] = "{}",
        split: Parameter[str] = "eval",
        worst_volumes: Parameter[int] = 3,
        worst_slices: Parameter[int] = 4,
        inference_config: Parameter[str] = "{}",
        settings_yaml: Parameter[str] = "",
        baseline_model: InputArtifact[standard_artifacts.Model] = None,
        tfma_evaluation: InputArtifact[standard_artifacts.ModelEvaluation] = None,
        blessing: InputArtifact[standard_artifacts.ModelBlessing] = None) -> None:
    """Full-volume Dice, VOE, RVD, ASSD, MSD and HD95 of the model (and the baseline).

    data_root: the ExampleGen's input_base. conversion_settings: the ExampleGen's
    ConversionSettings as JSON (to_dict(); eval_fraction, split_seed, eval_cases, manifest),
    "{}" for the defaults. split: "eval" or "all". inference_config: the InferenceConfig as JSON
    (mirroring, threshold, post-processing), "{}" for the defaults. settings_yaml: the run's
    effective settings, kept in the artifact as settings.yaml and shown in the report."""
    settings = ConversionSettings.from_dict(json.loads(conversion_settings))
    cases, errors = select_cases(settings, data_root or None, split)
    result = evaluate_volumes(
        serving_dir(model), cases,
        serving_dir(baseline_model) if baseline_model is not None else None,
        output_dir=evaluation.uri, worst_volumes=worst_volumes, worst_slices=worst_slices,
        options=InferenceConfig.from_dict(json.loads(inference_config)), known_errors=errors)
    record_figures(evaluation, result.metrics)
    if settings_yaml:
        storage.write_text(storage.join(evaluation.uri, SETTINGS_FILE), settings_yaml)
    if not result.metrics["cases"]:
        raise RuntimeError(f"VolumeEvaluator: no {split} case could be evaluated; "
                           f"{len(result.errors)} bad: "
                           + "; ".join(f"{e.path}: {e.reason}" for e in result.errors))
    _write_report(evaluation, model, tfma_evaluation, blessing)


def _write_report(evaluation, model, tfma_evaluation, blessing) -> None:
    """eval_report.html in the artifact, from its own metrics and the Evaluator's outputs."""
    from evaluation.report import write_report
    write_report(evaluation.uri, storage.join(evaluation.uri, EVAL_REPORT_FILE),
                 evaluation_uri=tfma_evaluation.uri if tfma_evaluation is not None else None,
                 blessing_uri=blessing.uri if blessing is not None else None,
                 run_info={"model_id": f"Model artifact {model.id}" if model.id else None})


def volume_evaluator(model, input_base: str, settings: ConversionSettings,
                     baseline_model=None, split: str = "eval", tfma_evaluation=None,
                     blessing=None, settings_yaml: str = "",
                     inference: InferenceConfig = InferenceConfig()):
    """The component wired to a Model channel (and, when there are, a baseline Model channel
    and the Evaluator's evaluation and blessing channels, for the report), with the
    ExampleGen's input_base and settings. The manifest is resolved as NiftiExampleGen resolves
    it, so both read the same cases."""
    manifest = settings.manifest_path(input_base)
    if manifest:
        settings = dataclasses.replace(settings, manifest=storage.absolute(manifest))
    optional = {"baseline_model": baseline_model, "tfma_evaluation": tfma_evaluation,
                "blessing": blessing}
    inputs = {name: channel for name, channel in optional.items() if channel is not None}
    return VolumeEvaluator(model=model, data_root=input_base,
                           conversion_settings=json.dumps(settings.to_dict()), split=split,
                           inference_config=json.dumps(inference.to_dict()),
                           settings_yaml=settings_yaml, **inputs)

