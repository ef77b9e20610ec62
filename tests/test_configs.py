"""Runner flags -> PipelineConfig -> the components' settings."""
import json
import os

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


def test_manifest_drives_the_example_gen(tmp_path):
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label\na.nii.gz,a_seg.nii.gz\n")
    config = make_config("tiny", output_dir=str(tmp_path / "out"),
                         overrides=[("example_gen.manifest", str(manifest))])
    pipeline = create_pipeline(config)
    example_gen = next(c for c in pipeline.components if c.id == "NiftiExampleGen")
    assert example_gen.exec_properties["input_base"] == str(tmp_path)
    assert "cases.csv" in str(example_gen.exec_properties["input_config"])
    assert json.dumps(str(manifest))[1:-1] in str(example_gen.exec_properties["custom_config"])


def test_loss_weights_reach_the_loss_by_name():
    """ModelConfig.loss_weights are the chosen loss's own keyword weights; one it doesn't have
    is an error naming the loss, not silently dropped."""
    import dataclasses
    from trainer.run import build_and_compile
    model_cfg = dataclasses.asdict(make_config("tiny").model)
    train_cfg = dataclasses.asdict(make_config("tiny").train)
    model_cfg.update(loss="bce_dice", loss_weights={"w_dice": 2.0})
    model = build_and_compile(model_cfg, train_cfg, (32, 32, 3), False, 10)
    assert model.loss["mask"].w_dice == 2.0 and model.loss["mask"].w_bce == 1.0
    model_cfg.update(loss_weights={"w_ms_ssim": 0.5})
    with pytest.raises(ValueError, match="do not fit loss 'bce_dice'"):
        build_and_compile(model_cfg, train_cfg, (32, 32, 3), False, 10)


def test_conversion_settings_round_trip_and_one_default():
    """The ExampleGen's settings survive the custom_config (a protobuf Struct, where numbers
    come back as floats), and the runner and the converter CLI share one default each."""
    from components.nifti_example_gen import make_custom_config, read_custom_config
    from preprocessing import convert
    from preprocessing.conversion_settings import ConversionSettings
    settings = make_config("tiny").example_gen
    settings.eval_cases = ["volume-1"]
    packed = make_custom_config(settings)
    from google.protobuf import json_format
    props = {"custom_config": json_format.MessageToJson(packed)}
    assert read_custom_config(props) == settings
    cli = convert.settings_from_args(convert.parse_args(["--data_root", "/d", "--output", "/o"]))
    assert cli.eval_fraction == ConversionSettings().eval_fraction == \
        make_config("demo").example_gen.eval_fraction
    with pytest.raises(ValueError, match="unknown conversion settings"):
        ConversionSettings.from_dict({"eval_fractoin": 0.3})


DISTRIBUTED_BEAM_ARGS = {
    "dask": ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
             "--dask_client_address=tcp://10.0.0.5:8786"],
    "dataflow": ["--runner=DataflowRunner", "--project=p", "--region=europe-west4",
                 "--temp_location=gs://b/tmp", "--setup_file=./setup.py"],
    "flink": ["--runner=FlinkRunner", "--flink_master=flink:8081",
              "--environment_type=EXTERNAL", "--environment_config=localhost:50000"],
    "spark": ["--runner=SparkRunner", "--spark_master_url=spark://m:7077",
              "--environment_type=PROCESS", "--environment_config={\"command\": \"/boot\"}"],
}


@pytest.mark.parametrize("engine", sorted(DISTRIBUTED_BEAM_ARGS))
def test_beam_args_of_distributed_engines_pass_through_unchanged(engine):
    """local_runner.py's --beam_arg and the Kubeflow compile hand a distributed engine's args on
    as given (the packaging of these already says how workers get the code)."""
    from pipeline.kubeflow_target import with_worker_packaging
    given = DISTRIBUTED_BEAM_ARGS[engine]
    args = local_runner.parse_args([f"--beam_arg={a}" for a in given])
    assert local_runner.config_from_args(args).beam_pipeline_args == given
    assert with_worker_packaging(given, "registry/image:tag")[0] == given


def test_beam_args_without_a_runner_get_the_local_one():
    config = make_config(beam_pipeline_args=["--direct_num_workers=2"])
    assert config.beam_pipeline_args[1:] == ["--direct_num_workers=2"]
    assert config.beam_pipeline_args[0].startswith("--runner=")
    # The converter CLI: the same rule, through the same helper; a runner given as two args
    # ("--runner X") counts as given.
    from preprocessing.convert import beam_options
    options = beam_options(["--direct_num_workers=2"]).get_all_options()
    assert options["runner"] == "FnApiRunner" and options["direct_num_workers"] == 2
    from preprocessing.conversion_settings import with_local_runner
    assert with_local_runner(["--runner", "DirectRunner"]) == ["--runner", "DirectRunner"]


def test_runners_parse_flags_without_the_heavy_stack():
    """`--help` and flag errors come back in a moment: the runners' flags and the configs they
    build import no TensorFlow, TFX, Beam or Keras."""
    import subprocess
    import sys
    code = ("import sys, local_runner, kubeflow_runner; "
            "local_runner.config_from_args(local_runner.parse_args([])); "
            "print(sorted(m for m in ('tensorflow', 'tfx', 'apache_beam', 'keras') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
