"""Multi-worker training without a cluster: two worker processes on loopback (TF_CONFIG naming
both, one CPU replica each) under MultiWorkerMirroredStrategy.

1. The same training as one process on the same global batch, step by step (the per-step loss
   of 3 SGD steps and the weights after them, compared as tests/test_multi_replica.py does),
   with the input read through trainer/inputs.py as the Trainer reads it (each worker its shard
   of the records). Two deliberately broken runs must fail the comparison: both workers
   reading the same records (no sharding), and halved updates.
2. The role logic alone: TF_CONFIG parsing, the device decision, the DALI refusal, which
   directories each role writes to, and that a worker restores from the chief's checkpoint
   without writing or deleting it.
3. run_fn on both workers with the same fn_args, as a TFJob runs it, killed after an epoch and
   restarted: both resume from the chief's checkpoint; only the chief's outputs land in the
   shared directories (one TensorBoard writer per log folder and run, the training report, the
   SavedModel); the other worker's temporary directory is gone afterwards, and so is the
   checkpoint.

Each worker is a subprocess in its own session, killed with its group if the test fails or
runs out of time, so no worker is left waiting for its peer.
"""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from test_inputs import H, K, W, _write_shards
from replica_helpers import STEPS, WEIGHT_TOL, matches, read_training_result, weight_mismatch

TIMEOUT_S = 300
# Per-step losses, 2 workers vs 1 process (measured, seed 0): 4e-7 at step 1, 1.7e-5 at step 3;
# 2 replicas of MirroredStrategy in one process differ from 1 by as much on this data (4e-5
# at step 3), against ~1e-7 on tests/test_multi_replica.py's smoother problem. The broken runs
# differ by 1.6e-2 to 1e-1 where they differ. Weights (max |dw| / max weight change): 6.6e-3,
# unsharded 0.70, halved 0.40 (WEIGHT_TOL 5e-2).
LOSS_RTOL = 2e-4


TRAIN = r"""
import json, sys
import numpy as np, keras
from models.losses import get_loss
from models.unet3plus import build_unet3plus
from trainer.device import enable_multi_worker_fit, resolve_device_settings, synchronize_batch_norm
from trainer.inputs import make_dataset, make_input_datasets
import tensorflow as tf

out, pattern, variants = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
device = resolve_device_settings("fp32", "off")     # the cluster from TF_CONFIG, if any
strategy = device.strategy()
device.apply()
spec = {"image": tf.io.FixedLenFeature([%(H)d, %(W)d, %(K)d], tf.float32),
        "mask": tf.io.FixedLenFeature([%(H)d, %(W)d, 1], tf.float32),
        "organ": tf.io.FixedLenFeature([1], tf.float32)}
train = {"batch_size": 4, "input": "tfdata", "shuffle_buffer": 16, "augment": {"enabled": False}}
keras.utils.set_random_seed(0)
with strategy.scope():
    model = build_unet3plus((%(H)d, %(W)d, %(K)d), filters=(4, 8, 16, 32, 64), skip_filters=4)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss={"mask": get_loss("bce_dice")})
    # Synchronized BatchNorm on one replica too: the same arithmetic as several replicas
    # (tests/test_multi_replica.py explains why that matters for the weights).
    synchronize_batch_norm(model)
enable_multi_worker_fit(model, strategy)
start = model.get_weights()
result = {"replicas": strategy.num_replicas_in_sync, "reason": device.reason}
for variant in variants:
    model.set_weights(start)
    model.optimizer.learning_rate.assign(0.05 / 2 if variant == "halve" else 0.05)
    if variant == "unsharded":   # the bug: every worker reads the same records
        data = strategy.distribute_datasets_from_function(lambda context: make_dataset(
            [pattern], spec, ["mask"], 2, shuffle=True, shuffle_buffer=16))
    else:
        data = make_input_datasets([pattern], [pattern], spec, ["mask"], train,
                                   strategy=strategy)[0]
    initial = [np.asarray(w) for w in model.trainable_weights]
    # One step per epoch: history holds each step's loss (all-reduced over the workers).
    history = model.fit(data, epochs=%(STEPS)d, steps_per_epoch=1, verbose=0)
    np.savez(f"{out}/{variant}.npz", *initial, *[np.asarray(w) for w in model.trainable_weights])
    result[variant] = [float(v) for v in history.history["loss"]]
print("RESULT " + json.dumps(result), flush=True)
""" % {"H": H, "W": W, "K": K, "STEPS": STEPS}


def _free_ports(n: int):
    """n distinct free loopback ports (held open together while choosing, so no repeats; another
    process could still take one before the worker binds it, which fails the run loudly)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _worker_envs(tmp_path, n: int = 2):
    """The environment of each of n workers: TF_CONFIG naming all of them, its own TMPDIR."""
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    envs = []
    for index in range(n):
        tmpdir = tmp_path / f"tmp{index}"
        tmpdir.mkdir(parents=True)
        envs.append(dict(os.environ, TMPDIR=str(tmpdir), TF_CPP_MIN_LOG_LEVEL="2",
                         TF_CONFIG=json.dumps({"cluster": {"worker": hosts},
                                               "task": {"type": "worker", "index": index}})))
    return envs


def _run_all(commands, envs, logs, timeout=TIMEOUT_S, stop_when=None):
    """Runs the commands at once, each in its own session with its log file; returns their
    logs once all exited 0. On a failure or at the timeout every one still running is killed
    (with its process group), so a worker waiting on a dead peer cannot hang the test.
    `stop_when`: () -> bool, polled; when true, all are killed (SIGKILL) and the logs returned
    without checking exit codes."""
    procs, stopped = [], False
    try:
        for command, env, log in zip(commands, envs, logs):
            with open(log, "w") as out:   # a file, not a pipe nobody reads while waiting
                procs.append(subprocess.Popen(command, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + timeout
        while time.time() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break            # one failed: the others would wait for it forever
            if stop_when is not None and stop_when():
                stopped = True
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    texts = [open(log).read() for log in logs]
    for p, text in zip(procs, texts):
        assert stopped or p.returncode == 0, (
            f"exit {p.returncode} (timeout {timeout} s):\n{text[-4000:]}")
    return texts


@pytest.mark.slow   # three training processes, two of them a 2-worker cluster
def test_two_workers_train_like_one_process_and_broken_runs_are_caught(tmp_path):
    # One shard file: a single reader's order is then the same with or without parallel
    # interleaving, so the one-process reference reads the same stream as the workers.
    pattern, _ = _write_shards(tmp_path / "data", sizes=(24,))
    variants = ("ok", "unsharded", "halve")
    outs = [tmp_path / name for name in ("single", "w0", "w1")]
    for out in outs:
        out.mkdir()
    envs = _worker_envs(tmp_path)
    single_env = {k: v for k, v in envs[0].items() if k != "TF_CONFIG"}
    logs = [tmp_path / f"{out.name}.log" for out in outs]
    commands = [[sys.executable, "-c", TRAIN, str(out), pattern, ",".join(v)]
                for out, v in zip(outs, (("ok",), variants, variants))]
    texts = _run_all(commands, [single_env, *envs], logs)
    single, w0, w1 = (read_training_result(t, out, v) for t, out, v in
                      zip(texts, outs, (("ok",), variants, variants)))
    assert single["replicas"] == 1 and w0["replicas"] == w1["replicas"] == 2
    assert "MultiWorkerMirroredStrategy: TF_CONFIG names 2 workers" in w0["reason"]
    assert "worker:1, not the chief" in w1["reason"]
    for variant in variants:   # the logged loss is the global one, the same on both workers
        np.testing.assert_allclose(w1[variant]["loss"], w0[variant]["loss"], rtol=1e-6)
    reference, good = single["ok"], w0["ok"]
    np.testing.assert_allclose(good["loss"], reference["loss"], rtol=LOSS_RTOL)
    assert weight_mismatch(reference, good) < WEIGHT_TOL, weight_mismatch(reference, good)
    assert matches(reference, good, LOSS_RTOL)
    # Both workers on the same records: a different global batch from the first step on.
    unsharded = w0["unsharded"]
    assert not np.isclose(unsharded["loss"][0], reference["loss"][0], rtol=LOSS_RTOL, atol=0)
    assert not matches(reference, unsharded, LOSS_RTOL)
    # Halved updates: the same first loss (nothing updated yet), then rejected.
    halved = w0["halve"]
    np.testing.assert_allclose(halved["loss"][0], reference["loss"][0], rtol=LOSS_RTOL)
    assert weight_mismatch(reference, halved) > 4 * WEIGHT_TOL, weight_mismatch(reference, halved)
    assert not matches(reference, halved, LOSS_RTOL)


# --- 2. the role logic alone (no cluster) ----------------------------------------------------

def _tf_config(cluster: dict, task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_tf_config_roles():
    from trainer.device import cluster_role
    assert not cluster_role("").multi_worker and cluster_role("").is_chief
    workers = {"worker": ["a:1", "b:1", "c:1"]}
    assert [cluster_role(_tf_config(workers, "worker", i)).is_chief for i in range(3)] == [
        True, False, False]            # no chief task: worker 0 is the chief
    assert cluster_role(_tf_config(workers, "worker", 2)).workers == 3
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"], "evaluator": ["e:1"]}
    roles = [cluster_role(_tf_config(with_chief, "chief", 0)),
             cluster_role(_tf_config(with_chief, "worker", 0))]
    assert [(r.is_chief, r.workers, r.name) for r in roles] == [
        (True, 3, "chief:0"), (False, 3, "worker:0")]   # the evaluator does not train
    single = cluster_role(_tf_config({"worker": ["a:1"]}, "worker", 0))
    assert not single.multi_worker and single.is_chief
    with pytest.raises(ValueError, match="parameter servers"):
        cluster_role(_tf_config({"worker": ["a:1"], "ps": ["p:1"]}, "worker", 0))
    with pytest.raises(ValueError, match="evaluator"):
        cluster_role(_tf_config(with_chief, "evaluator", 0))


def test_multi_worker_decisions():
    from trainer.device import ClusterRole, decide_settings
    from trainer.inputs import resolve_input

    def never():
        raise AssertionError("no bf16 probe with several workers")
    worker = ClusterRole("worker", 1, workers=2)
    s = decide_settings("auto", "auto", [], {"avx512_bf16", "amx_bf16"}, never, role=worker)
    assert s.policy == "float32" and s.replicas == 2 and s.to_dict()["task"] == "worker:1"
    assert "MultiWorkerMirroredStrategy: TF_CONFIG names 2 workers" in s.reason
    assert "not the chief" in s.reason
    one = decide_settings("fp32", "off", [], set(), never)
    assert "TF_CONFIG names no other worker" in one.reason and one.replicas == 1
    assert resolve_input("auto", multi_worker=True)[0] == "tfdata"
    assert resolve_input("tfdata", multi_worker=True)[0] == "tfdata"
    with pytest.raises(ValueError, match="not supported with several workers"):
        resolve_input("dali", multi_worker=True)


def test_role_directories(tmp_path, monkeypatch):
    import tempfile
    import types

    from trainer.checkpoints import resume_directory, role_directories
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    fn_args = types.SimpleNamespace(
        model_run_dir=str(tmp_path / "Trainer" / "model_run" / "3"),
        serving_model_dir=str(tmp_path / "serving"), train_files=["t"], eval_files=["e"],
        transform_output="tf", train_steps=2, custom_config={})
    chief = role_directories(fn_args, chief=True)
    assert (chief.model_run_dir, chief.serving_model_dir, chief.scratch) == (
        fn_args.model_run_dir, fn_args.serving_model_dir, None)
    assert chief.best_dir == resume_directory(fn_args) + ".best"
    chief.cleanup()                                   # nothing to remove
    worker = role_directories(fn_args, chief=False, task="worker:1")
    assert worker.scratch.startswith(str(tmp_path / "tmp" / "unet3plus-worker1-"))
    assert all(d.startswith(worker.scratch) for d in
               (worker.model_run_dir, worker.serving_model_dir, worker.best_dir))
    worker.cleanup()
    assert not os.path.exists(worker.scratch)


def test_a_worker_restores_the_chiefs_checkpoint_without_writing_it(tmp_path):
    import keras

    from trainer.checkpoints import WorkerBackupAndRestore
    x, y = np.ones((4, 2), np.float32), np.ones((4, 1), np.float32)

    def fit(*callbacks):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        return model.fit(x, y, epochs=4, verbose=0, callbacks=list(callbacks))

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")
    backup = tmp_path / "resume"
    with pytest.raises(RuntimeError, match="killed"):
        fit(WorkerBackupAndRestore(str(backup), chief=True), Kill())
    written = {p.name: p.read_bytes() for p in backup.iterdir()}
    assert json.loads(written["training_metadata.json"])["epoch"] == 2
    assert fit(WorkerBackupAndRestore(str(backup), chief=False)).epoch == [2, 3]
    assert {p.name: p.read_bytes() for p in backup.iterdir()} == written   # untouched
    # check_resume_point found the checkpoint unusable (the chief is deleting it): start over.
    assert fit(WorkerBackupAndRestore(str(backup), chief=False, restore=False)).epoch == [
        0, 1, 2, 3]
    assert fit(WorkerBackupAndRestore(str(backup), chief=True)).epoch == [2, 3]
    assert not backup.exists()     # the chief deletes it when training completes


# --- 3. run_fn on two workers: resume, and who writes what ----------------------------------

RUN_FN = [sys.executable, "-m", "trainer.run"]
EPOCHS = 4


def _identity_transform_output(directory) -> str:
    """A Transform output whose graph passes the features through, written by tf.Transform's
    Beam analysis as TFX's Transform writes it (with the raw metadata), for the export."""
    import tempfile

    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
    spec = {"image": tf.io.FixedLenFeature([H, W, K], tf.float32),
            "mask": tf.io.FixedLenFeature([H, W, 1], tf.float32),
            "organ": tf.io.FixedLenFeature([1], tf.float32)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    row = {name: np.zeros(feature.shape, np.float32) for name, feature in spec.items()}
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=tempfile.mkdtemp(
            dir=str(directory))):
        transform_fn = ((pipeline | beam.Create([row]), metadata)
                        | tft_beam.AnalyzeDataset(lambda inputs: dict(inputs)))
        _ = transform_fn | tft_beam.WriteTransformFn(str(directory / "transform_graph"))
    metadata_io.write_metadata(metadata, str(directory / "transform_graph" /
                                             tft.TFTransformOutput.RAW_METADATA_DIR))
    return str(directory / "transform_graph")


def _fn_args(tmp_path, pattern: str, transform_output: str) -> dict:
    """The Trainer's FnArgs as TFX gives them to every worker alike: 4 epochs of one step."""
    trainer = tmp_path / "Trainer"
    return {
        "custom_config": {
            "model": {"filters": [4, 8, 16, 32, 64], "skip_filters": 4, "loss": "bce_dice"},
            "train": {"batch_size": 4, "steps_per_epoch": 1, "shuffle_buffer": 16,
                      "precision": "auto", "xla": "off", "input": "auto",
                      "augment": {"enabled": False}},
            "image_shape": [H, W, K], "slice": {"size": [H, W]}},
        "transform_output": transform_output, "train_files": [pattern],
        "eval_files": [pattern], "train_steps": EPOCHS, "eval_steps": 1,
        "model_run_dir": str(trainer / "model_run" / "7"),
        "serving_model_dir": str(trainer / "model" / "7" / "Format-Serving")}


def _event_files(directory: str):
    return sorted(os.path.relpath(p, directory) for p in
                  glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"),
                            recursive=True))


def _checkpointed_epoch(resume_root) -> int:
    """The epoch of the chief's resume checkpoint, 0 while there is none (or it is being
    rewritten: Keras truncates the file first)."""
    for path in glob.glob(str(resume_root / "*" / "training_metadata.json")):
        try:
            return int(json.loads(open(path).read())["epoch"])
        except (ValueError, KeyError):
            pass
    return 0


@pytest.mark.slow   # ~1.5 min: two runs of run_fn on two workers, with export
def test_workers_resume_together_and_only_the_chief_writes(tmp_path):
    pattern, _ = _write_shards(tmp_path / "data", sizes=(24,))
    fn_args = _fn_args(tmp_path, pattern, _identity_transform_output(tmp_path))
    (tmp_path / "fn_args.json").write_text(json.dumps(fn_args))
    command = RUN_FN + [str(tmp_path / "fn_args.json")]
    resume_root = tmp_path / "Trainer" / "resume"

    # Both workers killed once the chief has checkpointed an epoch (a TFJob restarts them).
    killed_envs = _worker_envs(tmp_path / "killed")
    _run_all([command] * 2, killed_envs, [tmp_path / f"killed{i}.log" for i in range(2)],
             stop_when=lambda: _checkpointed_epoch(resume_root) >= 1)
    killed_at = _checkpointed_epoch(resume_root)
    assert 1 <= killed_at < EPOCHS, "no checkpoint, or training ended before the kill"

    envs = _worker_envs(tmp_path)
    chief_log, worker_log = _run_all([command] * 2, envs,
                                     [tmp_path / f"worker{i}.log" for i in range(2)])
    for log in (chief_log, worker_log):   # both from the chief's checkpoint, or one would hang
        assert f"Resuming interrupted training at epoch {killed_at} of {EPOCHS}" in log
        assert f"Ran {EPOCHS - killed_at} of {EPOCHS} epochs" in log
        # tf.data, sharded per worker: DALI is not used with several workers.
        assert "Input: tf.data (input auto: tf.data, sharded per worker" in log

    # The chief: the SavedModel, the training report, TensorBoard logs, the best weights.
    serving, model_run = fn_args["serving_model_dir"], fn_args["model_run_dir"]
    assert os.path.isfile(os.path.join(serving, "saved_model.pb"))
    assert os.path.isfile(os.path.join(serving, "assets.extra", "slice_config.json"))
    report = json.load(open(os.path.join(model_run, "training_report.json")))
    device = report["device"]
    assert (device["workers"], device["replicas"], device["task"], device["chief"]) == (
        2, 2, "worker:0", True), device
    assert "MultiWorkerMirroredStrategy: TF_CONFIG names 2 workers" in device["reason"]
    assert "no bf16 probe" in device["reason"]    # precision auto: the same choice everywhere
    assert os.path.isfile(os.path.join(model_run, "best.weights.h5"))
    # One events file per log folder and run (the killed run's chief wrote here too): the
    # other worker's, named after its process, would sit beside the chief's if it wrote here.
    events = [os.path.dirname(e) for e in _event_files(model_run)]
    assert sorted(events) == ["images"] * 2 + ["train"] * 2 + ["validation"] * 2, events
    # Training completed: the shared resume checkpoint and best-so-far record are gone.
    assert os.listdir(resume_root) == []

    # The other worker: everything went to its temporary directory, which is gone.
    scratch = re.search(r"worker:1 is not the chief: writes its outputs to (\S+),",
                        worker_log).group(1)
    assert scratch.startswith(str(tmp_path / "tmp1")), scratch
    assert f"Exported to {scratch}" in worker_log
    assert not os.path.exists(scratch)
    assert not glob.glob(str(tmp_path / "tmp1" / "unet3plus-*"))
    assert not glob.glob(str(tmp_path / "tmp0" / "unet3plus-*"))   # the chief made none
