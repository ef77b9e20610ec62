"""The KFP-backend stand-in's own rules (tests/kfp_backend.py), where a test of the pipeline would
not show them: what root a run gets, what the launcher needs to reach S3, what ML Metadata
refuses and how it changes metadata."""
from __future__ import annotations

from pathlib import Path

import pytest

import kfp_backend as kb


def test_a_run_without_a_root_gets_the_launchers_not_the_files():
    assert kb.run_root(None, None, "p", "r") == "minio://mlpipeline/v2/artifacts/p/r"
    assert kb.run_root(None, {"defaultPipelineRoot": "s3://b/x"}, "p", "r") == "s3://b/x/p/r"
    assert kb.run_root("s3://b/run/", {"defaultPipelineRoot": "s3://b/x"}, "p", "r") == \
        "s3://b/run/p/r"


def test_the_launcher_cannot_reach_s3_without_its_configmap(tmp_path):
    backend = kb.KfpBackend("python", "p", "s3://b/root/p/r", tmp_path)
    with pytest.raises(kb.TaskFailed, match="kfp-launcher ConfigMap"):
        backend.transfer("T", "s3://b/root/p/r/T/u/examples", tmp_path / "x", "download")


def test_local_paths_follow_the_launchers_mounts(tmp_path):
    assert kb.local_path_for_uri("s3://b/k/x", tmp_path) == tmp_path / "s3" / "b/k/x"
    assert kb.local_path_for_uri("gs://b/k", tmp_path) == tmp_path / "gcs" / "b/k"
    assert kb.local_path_for_uri("/mnt/shared/k", tmp_path) is None


def test_ml_metadata_round_trip(tmp_path):
    backend = kb.KfpBackend("python", "p", "s3://b/root/p/r", tmp_path)
    record = backend.record("out", {"uri": "s3://b/u", "type": {"schemaTitle": "x"},
                                    "metadata": {"n": 3, "flag": True, "l": [1], "d": {"a": 1}}})
    read = backend.as_input(record)
    assert read["type"] == {"instanceSchema": ""} and read["name"] == str(record)
    assert read["metadata"] == {"n": 3.0, "flag": 1, "l": {"list": [1]}, "d": {"struct": {"a": 1}},
                                "display_name": "out",
                                "store_session_info": read["metadata"]["store_session_info"]}
    with pytest.raises(kb.TaskFailed, match="null"):
        backend.record("out", {"uri": "s3://b/u", "type": {}, "metadata": {"x": None}})


def test_outputs_as_the_driver_provisions_them(tmp_path):
    backend = kb.KfpBackend("python", "p", "s3://b/root/p/r", tmp_path)
    component = {"outputDefinitions": {"artifacts": {"model": {"artifactType": {"x": 1}}}}}
    outputs = backend.provision_outputs("Trainer", component, Path(tmp_path))
    model = outputs["artifacts"]["model"]["artifacts"][0]
    assert model["name"] == "model" and model["uri"].startswith("s3://b/root/p/r/Trainer/")
    task_root = model["uri"].rsplit("/", 1)[0]
    assert outputs["outputFile"] == str(kb.local_path_for_uri(task_root, tmp_path)
                                        / "output_metadata.json")
    assert outputs["artifacts"]["executor-logs"]["artifacts"][0]["type"] == {
        "schemaTitle": "system.Artifact"}
    local = kb.KfpBackend("python", "p", "/mnt/root/p/r", tmp_path, publish_logs=False)
    outputs = local.provision_outputs("Trainer", component, Path(tmp_path))
    assert sorted(outputs["artifacts"]) == ["model"]
    assert outputs["outputFile"] == str(tmp_path / kb.LEGACY_OUTPUT_FILE)
