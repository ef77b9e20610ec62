"""A readable account of the latest pipeline run, read back from ML Metadata and the artifacts:
examples per split, quarantined cases, eval liver Dice (overall and per volume; tumour Dice too
for a three-class model), blessed or not, where the model was pushed, how to look at it."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.nifti_example_gen import SUMMARY_FILE

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


# Summary key -> TFMA metric name (pipeline/tfma_dice.py): liver always, tumour for
# three-class models.
EVAL_METRICS = {"eval_dice": "dice", "eval_tumor_dice": "tumor_dice"}


def read_eval_metrics(eval_uri: str, names=tuple(EVAL_METRICS.values())
                      ) -> Dict[str, Dict[str, float]]:
    """{metric: {slice name: value}} from a TFMA evaluation, slice names "overall",
    "volume_id=...", "has_tumor=1"...; a metric the evaluation lacks maps to {}."""
    import tensorflow_model_analysis as tfma   # heavy; only when there is an evaluation
    result = tfma.load_eval_result(eval_uri)
    out: Dict[str, Dict[str, float]] = {name: {} for name in names}
    for slice_key, metrics in result.slicing_metrics:
        values = metrics.get("", {}).get("", {})
        slice_name = ", ".join(f"{k}={v}" for k, v in slice_key) if slice_key else "overall"
        for name in names:
            if name in values:
                out[name][slice_name] = float(values[name].get("doubleValue", float("nan")))
    return out



def _open_store(metadata_path: str):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def latest_run_id(metadata_path: str) -> Optional[int]:
    if not os.path.exists(metadata_path):
        return None
    run = _latest_run(_open_store(metadata_path))
    return run.id if run else None


def collect_run_summary(metadata_path: str, newer_than: Optional[int] = None
                        ) -> Optional[Dict[str, Any]]:
    """The latest run's summary; None if there is no run newer than the run id `newer_than`."""
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
        path = os.path.join(examples.uri, SUMMARY_FILE)
        if os.path.exists(path):
            with open(path) as f:
                conversion = json.load(f)
            summary["examples_per_split"] = conversion["examples_per_split"]
            summary["cases_per_split"] = {k: len(v) for k, v in
                                          conversion["cases_per_split"].items()}
            summary["quarantined"] = conversion["quarantined"]
    if "Model" in latest:
        summary["model_uri"] = latest["Model"].uri
    if "ModelRun" in latest:
        summary["tensorboard_logdir"] = latest["ModelRun"].uri
    if "ModelEvaluation" in latest:
        metrics = read_eval_metrics(latest["ModelEvaluation"].uri)
        for key, name in EVAL_METRICS.items():
            if metrics[name] or key == "eval_dice":
                summary[key] = metrics[name]
    if "ModelBlessing" in latest:
        summary["blessed"] = bool(_prop(latest["ModelBlessing"], "blessed"))
    if "PushedModel" in latest:
        pushed = latest["PushedModel"]
        summary["pushed"] = bool(_prop(pushed, "pushed"))
        summary["pushed_to"] = _prop(pushed, "pushed_destination")
    return summary


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
    if "blessed" in summary:
        lines.append(f"Blessed:    {'yes' if summary['blessed'] else 'NO (Dice below the bar or worse than the last blessed model)'}")
    if summary.get("pushed"):
        lines.append(f"Pushed to:  {summary['pushed_to']}")
    elif "pushed" in summary or "blessed" in summary:
        lines.append("Pushed:     no (only blessed models are pushed)")
    if "tensorboard_logdir" in summary:
        lines.append(f"TensorBoard: .venv/bin/tensorboard --logdir {summary['tensorboard_logdir']}")
    lines.append("=" * 72)
    return "\n".join(lines)
