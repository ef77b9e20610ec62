"""A readable account of the latest pipeline run, read back from ML Metadata and the artifacts:
examples per split, quarantined cases, eval liver Dice (overall and per volume; tumour Dice too
for a three-class model), blessed or not, where the model was pushed, how to look at it."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from common import storage
from evaluation.tfma_results import EVAL_METRICS, read_blessing_failures, read_eval_metrics
from schema.contract import (CONVERSION_SUMMARY_FILE, EVAL_REPORT_FILE, TRAINING_REPORT_FILE,
                             VOLUME_EVALUATION_TYPE, VOLUME_METRICS_FILE)

_STATES = {metadata_store_pb2.Execution.COMPLETE: "ran",
           metadata_store_pb2.Execution.CACHED: "cached",
           metadata_store_pb2.Execution.FAILED: "FAILED"}


def _latest_run(store) -> Optional[Any]:
    runs = store.get_contexts_by_type("pipeline_run")
    return max(runs, key=lambda c: c.id) if runs else None


def _prop(artifact, name):
    if name in artifact.custom_properties:
        value = artifact.custom_properties[name]
        return getattr(value, value.WhichOneof("value"))
    return None


def _open_store(metadata_path: str):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _read_json_report(path: str) -> Optional[Any]:
    """A report file an artifact holds (the artifact may be a URI: gs://...); None if absent."""
    if not storage.exists(path):
        return None
    return json.loads(storage.read_text(path))


# The ML Metadata store is a local SQLite file by nature (SQLite opens local files only), so its
# path is checked with os.path; the artifacts it records may live anywhere.

def latest_run_id(metadata_path: str) -> Optional[int]:
    if not os.path.exists(metadata_path):
        return None
    run = _latest_run(_open_store(metadata_path))
    return run.id if run else None


def collect_run_summary(metadata_path: str, newer_than: Optional[int] = None,
                        with_evaluation: bool = True) -> Optional[Dict[str, Any]]:
    """The latest run's summary; None if there is no run newer than the run id `newer_than`.
    with_evaluation=False skips loading the TFMA results (Dice, why not blessed): the slow
    part, which the console's per-component lines need only once."""
    if not os.path.exists(metadata_path):
        return None
    store = _open_store(metadata_path)
    run = _latest_run(store)
    if run is None or (newer_than is not None and run.id <= newer_than):
        return None
    context_types = {t.id: t.name for t in store.get_context_types()}
    components, seconds = {}, {}
    for e in store.get_executions_by_context(run.id):
        nodes = [c.name for c in store.get_contexts_by_execution(e.id)
                 if context_types.get(c.type_id) == "node"]
        name = nodes[0].split(".", 1)[-1] if nodes else str(e.id)
        components[name] = _STATES.get(e.last_known_state, str(e.last_known_state))
        seconds[name] = (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000.0
    artifacts = store.get_artifacts_by_context(run.id)
    artifact_types = {t.id: t.name for t in store.get_artifact_types()}
    latest: Dict[str, Any] = {}
    for a in sorted(artifacts, key=lambda a: a.id):
        latest[artifact_types[a.type_id]] = a
    summary: Dict[str, Any] = {"run_id": run.name, "components": components,
                               "component_seconds": seconds}
    # Raw and transformed examples share the type; the ExampleGen's carry the conversion summary.
    for examples in (a for a in artifacts if artifact_types[a.type_id] == "Examples"):
        conversion = _read_json_report(storage.join(examples.uri, CONVERSION_SUMMARY_FILE))
        if conversion is not None:
            summary["examples_per_split"] = conversion["examples_per_split"]
            summary["cases_per_split"] = {k: len(v) for k, v in
                                          conversion["cases_per_split"].items()}
            summary["quarantined"] = conversion["quarantined"]
    if "Model" in latest:
        summary["model_uri"] = latest["Model"].uri
    if "ModelRun" in latest:
        summary["tensorboard_logdir"] = latest["ModelRun"].uri
        training = _read_json_report(storage.join(latest["ModelRun"].uri,
                                                  TRAINING_REPORT_FILE))
        if training is not None:
            summary["training"] = training
    evaluation = latest.get("ModelEvaluation") if with_evaluation else None
    if evaluation:
        metrics = read_eval_metrics(evaluation.uri)
        for key, name in EVAL_METRICS.items():
            if metrics[name] or key == "eval_dice":
                summary[key] = metrics[name]
    if VOLUME_EVALUATION_TYPE in latest:
        summary.update(_full_volume_summary(latest[VOLUME_EVALUATION_TYPE].uri))
    if "ModelBlessing" in latest:
        summary["blessed"] = bool(_prop(latest["ModelBlessing"], "blessed"))
        if not summary["blessed"] and evaluation:
            summary["not_blessed_because"] = read_blessing_failures(evaluation.uri)
    if "PushedModel" in latest:
        pushed = latest["PushedModel"]
        summary["pushed"] = bool(_prop(pushed, "pushed"))
        summary["pushed_to"] = _prop(pushed, "pushed_destination")
    return summary


def _full_volume_summary(uri: str) -> Dict[str, Any]:
    """Global and per-case Dice over every slice of the eval volumes (VolumeEvaluator), and
    where its HTML report is."""
    out: Dict[str, Any] = {}
    metrics = _read_json_report(storage.join(uri, VOLUME_METRICS_FILE))
    if metrics is not None:
        out["full_volume"] = {
            "global": metrics["global"]["candidate"],
            "cases": {c["case_id"]: {name: (c["candidate"].get(name) or {}).get("dice")
                                     for name in metrics["classes"]}
                      for c in metrics["cases"]},
            "errors": [f"{e['case_id']}: {e['reason']} ({e['file']})"
                       for e in metrics.get("errors", [])],
            # Tumour models: pooled lesion detection, raw and post-processed.
            "lesions": {role: pooled for role, pooled in (metrics.get("lesions") or {}).items()
                        if role.startswith("candidate") and pooled}}
    report = storage.join(uri, EVAL_REPORT_FILE)
    if storage.exists(report):
        out["report"] = report
    return out


def _format_full_volume(full: Dict[str, Any]) -> List[str]:
    def dice(value):
        return "n/a" if value is None else f"{value:.4f}"
    lines = []
    for name, pooled in full["global"].items():
        if pooled:
            lines.append(f"Full-volume {name} Dice (every slice of {len(full['cases'])} eval "
                         f"volumes): global {dice(pooled['global_dice'])}, mean per volume "
                         f"{dice(pooled['mean_dice'])}")
    for case_id, per_class in sorted(full["cases"].items()):
        lines.append(f"  {case_id}: " + ", ".join(f"{name} {dice(value)}"
                                                   for name, value in per_class.items()))
    lines += [f"  not evaluated: {error}" for error in full["errors"]]
    for role, pooled in sorted(full.get("lesions", {}).items()):
        lines.append(
            f"Lesions ({role.replace('candidate', 'model').replace('_', ' ')}; LiTS: found at "
            f"overlap > 0.5): recall {dice(pooled['lesion_recall'])} of "
            f"{pooled['lesion_ref']}, >= 10 mm {dice(pooled.get('lesion_recall_ge10mm'))}, "
            f"precision {dice(pooled['lesion_precision'])} of {pooled['lesion_pred']} predicted")
    return lines


def format_run_summary(summary: Optional[Dict[str, Any]]) -> str:
    if not summary:
        return "No pipeline run recorded (the pipeline was compiled, not run)."
    lines: List[str] = ["", "=" * 72, f"Pipeline run {summary['run_id']}", "=" * 72]
    seconds = summary.get("component_seconds", {})
    lines.append("Components: " + ", ".join(
        f"{k} ({v}{f', {seconds[k]:.0f} s' if v == 'ran' and k in seconds else ''})"
        for k, v in sorted(summary["components"].items())))
    if "examples_per_split" in summary:
        ex, cases = summary["examples_per_split"], summary["cases_per_split"]
        lines.append("Examples:   " + ", ".join(f"{s} {ex[s]} slices from {cases[s]} volumes"
                                                for s in ex))
        q = summary["quarantined"]
        lines.append(f"Quarantined cases: {len(q)}" + "".join(
            f"\n  - {r['case_id']}: {r['reason']} ({r['file']})" for r in q))
    training = summary.get("training")
    if training:
        device = training["device"]
        lines.append(f"Training:   {training['epochs_run']} epochs in {training['seconds']:.0f} s,"
                     f" {training['images_per_s']:.1f} images/s (incl. validation), "
                     f"{device['policy']}, XLA {'on' if device['jit_compile'] else 'off'}, "
                     f"{device['replicas']} replica(s)")
        lines.append(f"  device choice: {device['reason']}")
    dice = summary.get("eval_dice") or {}
    tumor = summary.get("eval_tumor_dice") or {}
    if "overall" in dice:
        def row(name):   # "0.9812" or, with a tumour class, "liver 0.9812, tumour 0.5410"
            if name not in tumor:
                return f"{dice[name]:.4f}"
            return f"liver {dice[name]:.4f}, tumour {tumor[name]:.4f}"
        what = "liver and tumour Dice" if tumor else "liver Dice"
        lines.append(f"Eval {what} (pooled over the eval split): {row('overall')}")
        per_volume = sorted(k for k in dice if k.startswith("volume_id"))
        for name in per_volume + sorted(k for k in dice if k.startswith("has_")):
            lines.append(f"  {name}: {row(name)}")
    if "full_volume" in summary:
        lines += _format_full_volume(summary["full_volume"])
    if summary.get("blessed"):
        lines.append("Blessed:    yes")
    elif "blessed" in summary:
        lines.append("Blessed:    NO, because:" + "".join(
            f"\n  - {reason}" for reason in summary.get("not_blessed_because") or
            ["(no failed threshold recorded in the evaluation)"]))
    if summary.get("pushed"):
        lines.append(f"Pushed to:  {summary['pushed_to']}")
    elif "pushed" in summary or "blessed" in summary:
        lines.append("Pushed:     no (only blessed models are pushed)")
    if "tensorboard_logdir" in summary:
        lines.append(f"TensorBoard: .venv/bin/tensorboard --logdir {summary['tensorboard_logdir']}")
    if "report" in summary:
        lines.append(f"Report:     {summary['report']}")
    lines.append("=" * 72)
    return "\n".join(lines)
