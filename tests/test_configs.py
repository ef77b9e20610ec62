"""Runner flags -> PipelineConfig -> the components' settings."""
import json

import pytest

import local_runner
from pipeline.configs import make_config
from pipeline.pipeline import create_pipeline


def test_flags_override_the_profile():
    config = local_runner.config_from_args(local_runner.parse_args(
        ["--profile", "tiny", "--train_steps", "7", "--precision", "fp32", "--xla", "on",
         "--normalization", "zscore", "--output_dir", "/tmp/x"]))
    assert (config.train.train_steps, config.train.precision, config.train.xla) == (7, "fp32", "on")
    assert config.transform.normalization == "zscore"
    assert config.pipeline_root == "/tmp/x/pipeline"
    with pytest.raises(TypeError):
        make_config("tiny", learning_rate=1.0)


def test_manifest_drives_the_example_gen(tmp_path):
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label\na.nii.gz,a_seg.nii.gz\n")
    config = make_config("tiny", output_dir=str(tmp_path / "out"), manifest=str(manifest))
    pipeline = create_pipeline(config)
    example_gen = next(c for c in pipeline.components if c.id == "NiftiExampleGen")
    assert example_gen.exec_properties["input_base"] == str(tmp_path)
    assert "cases.csv" in str(example_gen.exec_properties["input_config"])
    assert json.dumps(str(manifest))[1:-1] in str(example_gen.exec_properties["custom_config"])
