"""Checkpoints that survive a killed Trainer.

Each pipeline run gives the Trainer a new model_run_dir, so anything that must outlive a kill
lives in a directory keyed by the training inputs and config instead (`resume_directory`):

  <Trainer root>/resume/<key>/       keras BackupAndRestore: last epoch's weights, optimizer
                                     state and epoch number (deleted by Keras when training ends)
  <Trainer root>/resume/<key>.best/  the best epoch so far by validation Dice and its value
                                     (`BestWeights`), so a resumed run still exports the best
                                     epoch of the whole training, not only of its own part

With several workers (MultiWorkerMirroredStrategy, TF_CONFIG) the chief alone writes these and
the run's outputs; the others write theirs to a temporary directory (`role_directories`) and
restore from the chief's checkpoint (`WorkerBackupAndRestore`): the pipeline root must then be
storage every worker reaches (gs://, s3://, a shared volume).

The pipeline root may be a URI (gs://, s3://): files go through common/storage.py, and
Keras 3 reads and writes weights at any scheme://... path itself (keras/src/utils/file_utils.py
treats every "scheme://" path as remote: a local temp file copied with tf.io.gfile), so only
s3:// needs its filesystem registered first (storage.ensure_filesystem).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
from typing import Optional

import keras

from common import storage
from schema.contract import CONSOLE_LOGGER

BEST_WEIGHTS = "best.weights.h5"   # the best epoch's weights (also copied to model_run_dir)
BEST_RECORD = "best.json"
RESUME_METADATA = "training_metadata.json"   # written by keras.callbacks.BackupAndRestore
RESUME_WEIGHTS = "latest.weights.h5"          # the same


def trainer_root(model_run_dir: str) -> str:
    """<pipeline_root>/Trainer: model_run_dir is <pipeline_root>/Trainer/model_run/<id>, the
    place for what every execution of the Trainer shares."""
    return storage.dirname(storage.dirname(storage.absolute(model_run_dir)))


def resume_directory(fn_args) -> str:
    """Where an interrupted Trainer left its last epoch. Keyed by the training inputs and
    config, not by the execution (each pipeline run gets a new model_run_dir), so running the
    pipeline again after a kill resumes instead of starting over."""
    key = hashlib.sha256(json.dumps({
        "train": list(fn_args.train_files), "eval": list(fn_args.eval_files),
        "transform": fn_args.transform_output, "steps": int(fn_args.train_steps),
        "config": fn_args.custom_config}, sort_keys=True, default=str).encode()).hexdigest()
    return storage.join(trainer_root(fn_args.model_run_dir), "resume", key[:16])


def check_resume_point(resume_dir: str, epochs: int, chief: bool = True) -> bool:
    """Says where an interrupted run resumes, and deletes a checkpoint it cannot read (only the
    chief deletes): Keras truncates, then writes its metadata file, so a kill in between leaves
    it empty, and every later fit() would fail on it, run after run (the directory is keyed by
    the inputs). True when there is a checkpoint to restore."""
    storage.ensure_filesystem(resume_dir)   # Keras' BackupAndRestore writes there next
    metadata_path = storage.join(resume_dir, RESUME_METADATA)
    if not storage.exists(metadata_path):
        return False
    try:
        epoch = int(json.loads(storage.read_text(metadata_path))["epoch"])
    except (ValueError, KeyError, TypeError):
        logging.warning("Unreadable checkpoint metadata in %s (killed while writing it); "
                        "training starts over", resume_dir)
        if chief:
            storage.remove_tree(resume_dir)
        return False
    weights = storage.join(resume_dir, RESUME_WEIGHTS)
    problem = unreadable_weights(weights)
    if problem:
        logging.getLogger(CONSOLE_LOGGER).warning(
            "Corrupt checkpoint %s (%s): training starts over%s", weights, problem,
            "; the checkpoint is removed" if chief else "")
        if chief:
            storage.remove_tree(resume_dir)
        return False
    # On the console too: a person should see that this run continues an earlier one.
    logging.getLogger(CONSOLE_LOGGER).info(
        "Resuming interrupted training at epoch %d of %d (checkpoint in %s)", epoch, epochs,
        resume_dir)
    return True


def unreadable_weights(path: str) -> Optional[str]:
    """Why the Keras weights file at `path` cannot be read (None: it opens, or is absent). A
    file on a URI is not checked here: Keras fetches it itself."""
    if storage.is_uri(path) or not storage.exists(path):
        return None
    import h5py
    try:
        with h5py.File(path, "r") as f:
            f.keys()
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


@dataclasses.dataclass(frozen=True)
class RoleDirectories:
    """Where this worker writes the run's outputs: the chief into the Trainer's own
    directories; any other worker into `scratch`, a local temporary directory removed by
    `cleanup`. Every worker still runs the same saving code (the SavedModel export must run on
    all workers under MultiWorkerMirroredStrategy: its saving may run collective ops)."""
    model_run_dir: str        # TensorBoard logs, training report, copy of the best weights
    serving_model_dir: str    # the exported SavedModel
    best_dir: str             # BestWeights: the best epoch so far
    scratch: Optional[str] = None

    def cleanup(self) -> None:
        if self.scratch is not None:
            storage.remove_tree(self.scratch)


def role_directories(fn_args, chief: bool = True, task: str = "worker") -> RoleDirectories:
    """The chief's: model_run_dir, serving_model_dir and `<resume_dir>.best` (which outlives a
    kill); another worker's: the same three under a new temporary directory (TMPDIR)."""
    if chief:
        return RoleDirectories(fn_args.model_run_dir, fn_args.serving_model_dir,
                               resume_directory(fn_args) + ".best")
    scratch = tempfile.mkdtemp(prefix=f"unet3plus-{task.replace(':', '')}-")
    logging.info("%s is not the chief: writes its outputs to %s, removed at the end", task,
                 scratch)
    return RoleDirectories(storage.join(scratch, "model_run"),
                           storage.join(scratch, "serving_model"),
                           storage.join(scratch, "best"), scratch)


class WorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
    """keras.callbacks.BackupAndRestore for several workers, which Keras 3's does not handle:
    there every worker would write the same files at once and delete them at the end. Here all
    workers restore from the one checkpoint (they must resume at the same epoch with the same
    weights), and only the chief writes and deletes it. Keras 3 saves weights from each
    process's own copy of the variables, with no collective op, so the others can skip it.
    `restore`: False when check_resume_point found no usable checkpoint (on a worker, an
    unreadable one that the chief is deleting)."""

    def __init__(self, backup_dir: str, chief: bool = True, restore: bool = True):
        super().__init__(backup_dir, save_freq="epoch")
        self.chief, self.restore = chief, restore

    def on_train_begin(self, logs=None):
        if self.restore or self.chief:
            super().on_train_begin(logs)

    def _save_model(self):
        """Keras' save, made safe against a write that fails part-way (a full disk): Keras
        writes latest.weights.h5 in place, so a failure there left a torn file beside the
        previous epoch's metadata, and every later run failed restoring it. Here the weights
        go to a temporary name and replace the old ones when complete, then the metadata
        (written atomically); a failure leaves the previous epoch's checkpoint whole."""
        if not self.chief:
            return
        storage.makedirs(self.backup_dir)
        tmp = self._weights_path + ".tmp.weights.h5"
        try:
            self.model.save_weights(tmp, overwrite=True)
        except BaseException:
            storage.remove_tree(tmp)
            raise
        storage.rename(tmp, self._weights_path)
        storage.write_text(self._training_metadata_path, json.dumps(
            {"epoch": self._current_epoch, "batch": self._last_batch_seen}))

    def on_train_end(self, logs=None):
        if self.chief:
            super().on_train_end(logs)


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the highest `monitor` value, and that value, in
    `directory`; a new instance on the same directory (a resumed run) continues from the
    recorded best instead of forgetting the epochs before the kill."""

    def __init__(self, directory: str, monitor: str):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.weights_path = storage.join(directory, BEST_WEIGHTS)
        self._record_path = storage.join(directory, BEST_RECORD)
        self.best, self.best_epoch = -math.inf, None
        storage.ensure_filesystem(directory)   # Keras writes the weights there itself
        if storage.exists(self._record_path) and storage.exists(self.weights_path):
            record = json.loads(storage.read_text(self._record_path))
            self.best, self.best_epoch = float(record["value"]), int(record["epoch"])
            logging.info("Best epoch so far: %d (%s %.4f)", self.best_epoch + 1, monitor,
                         self.best)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) <= self.best:
            return
        storage.makedirs(self.directory)
        # Weights first, then the record, each replaced atomically: a kill in between leaves
        # the previous best pair or new weights with the old (lower) value, never a torn file.
        tmp = self.weights_path + ".tmp.weights.h5"
        self.model.save_weights(tmp, overwrite=True)
        storage.rename(tmp, self.weights_path)
        self.best, self.best_epoch = float(value), int(epoch)
        storage.write_text(self._record_path,
                           json.dumps({"value": self.best, "epoch": self.best_epoch}))

    def restore_best(self, keep_copy_at: str = None) -> bool:
        """Loads the best weights into the model; optionally keeps a copy (e.g. in the run's
        model_run_dir); then removes the directory. False when no epoch was recorded."""
        if self.best_epoch is None:
            return False
        self.model.load_weights(self.weights_path)
        if keep_copy_at:
            storage.copy(self.weights_path, keep_copy_at)
        storage.remove_tree(self.directory)
        return True
