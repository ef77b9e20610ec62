"""Names that cross stage boundaries, in one place: what the exported model's signatures are
called and return, and the file names of reports other stages read. The example format itself
(feature names, shapes, dtypes) is preprocessing/features.py, described by schema.pbtxt.

Nothing here imports anything but os, so every layer may read it."""
import os

# The exported SavedModel (trainer/export.py writes it; the Evaluator, predict.py and clients
# call it).
SIGNATURE_RAW = "serving_default"              # serialized raw examples -> probabilities
SIGNATURE_TRANSFORMED = "serving_transformed"  # serialized Transform output (the Evaluator's)
SIGNATURE_SLICES = "segment_slices"            # float slices [B, H, W, K] in [0, 1]
PROBABILITIES = "probabilities"                # every signature's output: [B, H, W, C]
# How volumes were sliced for this model (SliceConfig fields), for predict.py. Kept in
# assets.extra, which travels with the SavedModel but is not part of the graph.
MODEL_SLICE_CONFIG_FILE = os.path.join("assets.extra", "slice_config.json")

# The conversion report beside the examples (the ExampleGen and the converter CLI write it;
# the run summary reads it).
QUARANTINE_FILE = "quarantine.jsonl"           # one line per rejected case: file, id, reason
CASES_FILE = "cases.jsonl"                     # one line per converted case
CONVERSION_SUMMARY_FILE = "conversion_summary.json"   # cases in / out / quarantined
# The converter CLI (preprocessing/convert.py) also writes the SliceConfig of its TFRecords.
RECORDS_SLICE_CONFIG_FILE = "slice_config.json"

# The Trainer's report beside its TensorBoard logs (model_run_dir; the run summary reads it).
TRAINING_REPORT_FILE = "training_report.json"  # device choice with reason, speed, val Dice

# The full-volume evaluation's artifact (components/volume_evaluator.py, evaluation/volume_eval.py).
# The name is also the import path of its class on Kubeflow (components/artifacts.py).
VOLUME_EVALUATION_TYPE = "components.VolumeEvaluation"
VOLUME_METRICS_FILE = "metrics.json"
VOLUME_METRICS_CSV_FILE = "metrics.csv"
WORST_SLICES_FILE = "worst_slices.npz"
EVAL_REPORT_FILE = "eval_report.html"

# A run's effective settings as YAML (pipeline/overrides.py to_yaml): under the pipeline root, in
# the exported model's folder (the settings that made it) and in the full-volume evaluation's
# artifact, shown in its report. `local_runner.py --config <that file>` replays them.
SETTINGS_FILE = "settings.yaml"
MODEL_SETTINGS_FILE = os.path.join("assets.extra", SETTINGS_FILE)

# What a person sees while it runs (common/logs.py sets it up; the Trainer's progress
# callback and the conversion log to it from below).
CONSOLE_LOGGER = "unet3plus.console"           # lines meant for the console, not only the log
PROGRESS_INTERVAL_ENV = "UNET3P_PROGRESS_INTERVAL"   # seconds between progress lines in a pipe


def progress_interval(default: float = 30.0) -> float:
    """The progress interval in seconds, from the environment (the tests set a small one)."""
    try:
        return max(0.1, float(os.environ.get(PROGRESS_INTERVAL_ENV, default)))
    except ValueError:
        return default
