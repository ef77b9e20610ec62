"""kubeflow_runner.py compiles the same pipeline to a KFP v2 spec, offline."""
import json

import kubeflow_runner


def test_compiles_every_component(tmp_path):
    out = tmp_path / "pipeline.json"
    assert kubeflow_runner.main([
        "--image", "registry.example/unet3plus-tfx:test", "--pipeline_root", "gs://b/root",
        "--data_root", "gs://b/lits", "--serving_dir", "gs://b/serving",
        "--output", str(out)]) == 0
    spec = json.loads(out.read_text())
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for component in ("NiftiExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator",
                      "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator",
                      "Pusher"):
        assert any(component in name for name in tasks), (component, list(tasks))
    assert "gs://b/root" in json.dumps(spec)
