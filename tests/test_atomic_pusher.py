"""The pipeline's Pusher ships a model version whole or not at all: a copy that fails part-way
(a full disk, injected at TFX's file copy) leaves no version folder in serving_model/, and the
next push completes. The executor runs for real on real artifacts; only the fault is injected."""
from __future__ import annotations

import errno
import os

import pytest
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts, standard_component_specs as sc
from tfx.utils import proto_utils

from components.atomic_pusher import STAGING_DIR, AtomicPusherExecutor, with_atomic_push

MODEL_FILES = {"saved_model.pb": b"graph" * 1000, "fingerprint.pb": b"fp",
               "variables/variables.index": b"index",
               "variables/variables.data-00000-of-00001": b"weights" * 5000,
               "model_slice_config.json": b"{}"}


def _artifacts(tmp_path, blessed: int = 1):
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "Trainer" / "model")
    for name, data in MODEL_FILES.items():
        path = os.path.join(model.uri, "Format-Serving", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "Evaluator" / "blessing")
    blessing.set_int_custom_property("blessed", blessed)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "Pusher" / "pushed_model" / str(len(os.listdir(tmp_path))))
    return {sc.MODEL_KEY: [model], sc.MODEL_BLESSING_KEY: [blessing]}, {
        sc.PUSHED_MODEL_KEY: [pushed]}


def _properties(serving_dir: str) -> dict:
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_dir))
    return {sc.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination),
            sc.CUSTOM_CONFIG_KEY: None}


def _versions(serving_dir: str):
    return sorted(n for n in os.listdir(serving_dir) if n.isdigit()) \
        if os.path.isdir(serving_dir) else []


@pytest.fixture
def disk_full_after_two_files(monkeypatch):
    real, copied = fileio.copy, []

    def copy(src, dst, overwrite=False):
        if len(copied) == 2:
            with open(dst, "wb") as f:      # what a full disk leaves: a truncated file
                f.write(b"x")
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        copied.append(dst)
        return real(src, dst, overwrite)
    monkeypatch.setattr(fileio, "copy", copy)
    return monkeypatch


def test_a_failed_push_leaves_no_version_and_the_next_completes(tmp_path,
                                                                disk_full_after_two_files):
    serving = str(tmp_path / "serving_model")
    inputs, outputs = _artifacts(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        AtomicPusherExecutor().Do(inputs, outputs, _properties(serving))
    assert _versions(serving) == []            # nothing TF Serving would load
    assert os.path.isdir(os.path.join(serving, STAGING_DIR))

    disk_full_after_two_files.undo()           # space freed: the pipeline run again
    inputs, outputs = _artifacts(tmp_path)
    AtomicPusherExecutor().Do(inputs, outputs, _properties(serving))
    [version] = _versions(serving)
    assert sorted(os.listdir(serving)) == [version]   # the staging copy is gone
    final = os.path.join(serving, version)
    for name, data in MODEL_FILES.items():
        with open(os.path.join(final, name), "rb") as f:
            assert f.read() == data, name
    pushed = outputs[sc.PUSHED_MODEL_KEY][0]
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == final


def test_an_unblessed_model_is_not_pushed(tmp_path):
    serving = str(tmp_path / "serving_model")
    inputs, outputs = _artifacts(tmp_path, blessed=0)
    AtomicPusherExecutor().Do(inputs, outputs, _properties(serving))
    assert _versions(serving) == []
    assert outputs[sc.PUSHED_MODEL_KEY][0].get_int_custom_property("pushed") == 0


def test_the_pipeline_uses_it():
    from pipeline.configs import profile_config
    from pipeline.pipeline import create_pipeline
    config = profile_config("tiny")
    [pusher] = [c for c in create_pipeline(config).components if c.id == "Pusher"]
    assert pusher.executor_spec.executor_class is AtomicPusherExecutor
    with pytest.raises(ValueError, match="expected TFX's Pusher executor"):
        with_atomic_push(pusher)
    assert issubclass(AtomicPusherExecutor, pusher_executor.Executor)
