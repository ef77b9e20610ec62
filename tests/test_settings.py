"""Every setting from outside the code (pipeline/overrides.py, settings_flags.py,
settings_checks.py): --config files and --set overrides over a profile, the shortcut flags, the
errors that stop a run before it starts, the saved settings that replay it, and the generated
reference."""
from __future__ import annotations

import os

import pytest

import kubeflow_runner
import local_runner
from pipeline import configs
from pipeline.overrides import setting_keys, to_yaml
from pipeline.settings_reference import REFERENCE_PATH, meaning, render



def _config(*argv: str) -> configs.PipelineConfig:
    return local_runner.config_from_args(local_runner.parse_args(list(argv)))


@pytest.fixture
def error(capsys, tmp_path):
    """error(*flags): local_runner.main's error output for these flags; it must exit 2 and
    start nothing (not even its output folder)."""
    def run(*argv: str) -> str:
        out_dir = tmp_path / "outputs"
        assert local_runner.main(["--profile", "tiny", "--output_dir", str(out_dir), *argv]) == 2
        assert not out_dir.exists(), "a bad setting started work"
        return capsys.readouterr().err
    return run


# --- the public key paths, typed ------------------------------------------------------------------

def test_the_public_key_paths_are_settings():
    keys = set(setting_keys())
    for key in ("model.variant", "model.encoder", "model.loss", "train.learning_rate",
                "train.batch_size", "example_gen.slices.size", "transform.classes",
                "evaluation.dice_lower_bound"):
        assert key in keys, key


def test_set_is_typed_by_the_field():
    config = _config("--profile", "tiny", "--set", "model.filters=[32,64,128,256,512]",
                     "--set", "train.learning_rate=5e-4", "--set", "example_gen.slices.size=[128,128]",
                     "--set", "model.loss_weights.w_dice=2", "--set", "data_root=s3://b/lits")
    assert config.model.filters == (32, 64, 128, 256, 512)
    assert config.train.learning_rate == 5e-4 and isinstance(config.train.learning_rate, float)
    assert config.example_gen.slices.size == (128, 128)
    assert config.model.loss_weights == {"w_dice": 2.0}
    assert config.data_root == "s3://b/lits"


def test_later_wins_profile_files_shortcuts_set(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("train:\n  batch_size: 3\n  learning_rate: 0.1\nmodel:\n  variant: ds\n")
    second.write_text("train:\n  learning_rate: 0.2\n")
    config = _config("--profile", "tiny", "--config", str(first), "--config", str(second),
                     "--batch_size", "5", "--set", "train.batch_size=6")
    assert config.train.learning_rate == 0.2      # the later file
    assert config.model.variant == "ds"           # a key only the first file sets
    assert config.train.batch_size == 6           # --set over the shortcut over the files
    assert _config("--profile", "tiny", "--config", str(first), "--batch_size", "5"
                   ).train.batch_size == 5
    assert config.train.steps_per_epoch == configs.profile_config("tiny").train.steps_per_epoch


def test_environment_carries_files_and_overrides(tmp_path, monkeypatch):
    """The tfx CLI route runs local_runner.py without arguments: UNET3P_CONFIG and UNET3P_SET
    carry the same surface."""
    path = tmp_path / "a.yaml"
    path.write_text("model:\n  encoder: vgg19\n")
    monkeypatch.setenv("UNET3P_CONFIG", str(path))
    monkeypatch.setenv("UNET3P_SET", "model.variant=ds_cgm;train.learning_rate=0.01\n"
                                     "example_gen.slices.size=[96,96]")
    monkeypatch.setenv("UNET3P_TRAIN_STEPS", "9")
    config = _config("--profile", "tiny")
    assert (config.model.encoder, config.model.variant) == ("vgg19", "ds_cgm")
    assert config.train.learning_rate == 0.01 and config.train.train_steps == 9
    assert config.example_gen.slices.size == (96, 96)


# --- errors before any work -----------------------------------------------------------------------

def test_a_misspelt_key_is_named_with_the_right_one(error):
    err = error("--set", "model.varient=ds")
    assert "unknown setting model.varient; did you mean model.variant?" in err, err
    err = error("--set", "modle.variant=ds")
    assert "unknown setting modle.variant; did you mean model.variant?" in err, err


def test_a_value_of_the_wrong_type_names_key_value_and_type(error):
    err = error("--set", "train.batch_size=abc")
    assert "train.batch_size='abc'" in err and "expected int" in err, err
    err = error("--set", "example_gen.slices.size=[256]")
    assert "example_gen.slices.size='[256]'" in err and "Tuple[int, int]" in err, err


def test_a_value_outside_its_choices_lists_them(error):
    err = error("--set", "model.encoder=vgg11")
    assert "model.encoder='vgg11': choose one of unet3plus, vgg16, vgg19, resnet50" in err, err
    err = error("--set", "model.loss=dice_bce")
    assert "model.loss='dice_bce'" in err and "bce_dice" in err, err


def test_combinations_that_cannot_work(error):
    err = error("--set", "example_gen.slices.size=[100,100]")
    assert "example_gen.slices.size=[100, 100]" in err and "multiple of 16" in err, err
    # A keras.applications encoder has 5 scales whatever model.filters says.
    err = error("--set", "model.encoder=resnet50", "--set", "model.filters=[8,16,32]",
                 "--set", "example_gen.slices.size=[72,72]")
    assert "multiple of 16" in err, err
    assert _config("--profile", "tiny", "--set", "model.filters=[8,16,32]", "--set",
                   "example_gen.slices.size=[72,72]").example_gen.slices.size == (72, 72)
    err = error("--set", "model.loss=bce_dice", "--set", "model.loss_weights.w_iou=1")
    assert "w_iou not a parameter of that loss; it takes w_bce, w_dice" in err, err
    err = error("--set", "train.learning_rate=0", "--set", "train.batch_size=0")
    assert "train.learning_rate=0.0: must be above 0" in err, err
    assert "train.batch_size=0: must be at least 1" in err, err


def test_a_bad_file_is_named(tmp_path, error):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  varient: ds\n")
    err = error("--config", str(path))
    assert f"unknown setting model.varient (in {path}); did you mean model.variant?" in err, err
    path.write_text("- 1\n")
    assert "expected a mapping" in error("--config", str(path))
    assert "cannot read it" in error("--config", str(tmp_path / "missing.yaml"))


def test_kubeflow_runner_refuses_the_same_way(capsys):
    assert kubeflow_runner.main(["--image", "r/i:t", "--pipeline_root", "s3://b/r",
                                 "--data_root", "s3://b/d", "--serving_dir", "s3://b/s",
                                 "--output", "/nonexistent/never.yaml",
                                 "--set", "model.varient=ds"]) == 2
    assert "did you mean model.variant?" in capsys.readouterr().err


# --- saved and replayed ---------------------------------------------------------------------------

def test_print_config_round_trips(tmp_path, capsys):
    argv = ["--profile", "tiny", "--output_dir", str(tmp_path / "out"), "--set",
            "model.variant=ds_cgm", "--set", "model.encoder=vgg16", "--no_augment",
            "--set", "example_gen.eval_cases=[volume-1,volume-2]", "--dice_lower_bound", "0.5"]
    assert local_runner.main([*argv, "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    saved = tmp_path / "settings.yaml"
    saved.write_text(printed)
    original = _config(*argv)
    assert printed == to_yaml(original)
    # The file alone, over another profile, gives the same settings.
    assert _config("--profile", "paper", "--config", str(saved)) == original
    # --output_dir given wins over the file's paths.
    moved = _config("--config", str(saved), "--output_dir", str(tmp_path / "elsewhere"))
    assert moved.pipeline_root == str(tmp_path / "elsewhere" / "pipeline")


def test_kubeflow_print_config_carries_the_settings(capsys):
    assert kubeflow_runner.main(["--image", "r/i:t", "--pipeline_root", "s3://b/r",
                                 "--data_root", "s3://b/d", "--serving_dir", "s3://b/s",
                                 "--set", "train.learning_rate=0.0005", "--classes",
                                 "liver_tumor", "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 0.0005" in out and "classes: liver_tumor" in out
    assert "pipeline_root: s3://b/r" in out


# --- the generated reference ----------------------------------------------------------------------

def test_reference_matches_the_code():
    with open(REFERENCE_PATH) as f:
        assert f.read() == render(), (
            "docs/settings_reference.md is stale: .venv/bin/python -m pipeline.settings_reference "
            "--write")


def test_every_key_has_a_meaning():
    assert [key for key in setting_keys() if not meaning(key)] == []


def test_reference_lists_every_key_and_its_choices():
    text = render()
    for key in setting_keys():
        assert f"| `{key}` |" in text, key
    assert "one of base, ds, ds_cgm" in text


# --- every variant x encoder, from the command line -----------------------------------------------

@pytest.mark.slow   # 12 models built and stepped once: ~1 min on 2 cores
def test_every_variant_and_encoder_builds_and_trains_a_step():
    """Each variant x encoder selected by --set on the tiny profile, built as run_fn builds it,
    one training step, all in this one process. 32x32 slices (--set too: the smallest size the
    five-scale encoders divide), run eagerly: tracing twelve graphs would take minutes."""
    import keras
    import numpy as np

    from models.model_config import ENCODERS, VARIANTS
    from trainer.run import build_and_compile
    rng = np.random.default_rng(0)
    for variant in VARIANTS:
        for encoder in ENCODERS:
            config = _config("--profile", "tiny", "--set", f"model.variant={variant}",
                             "--set", f"model.encoder={encoder}",
                             "--set", "example_gen.slices.size=[32,32]")
            assert (config.model.variant, config.model.encoder) == (variant, encoder)
            shape = (*config.example_gen.slices.size, config.example_gen.slices.channels)
            keras.utils.set_random_seed(0)
            model = build_and_compile(config.model, config.train, shape, False, 1)
            model.run_eagerly = True
            x = rng.random((1, *shape)).astype("float32")
            mask = (x[..., :1] > 0.5).astype("float32")
            targets = {name: (np.ones((1, 1), "float32") if name == "organ" else mask)
                       for name in model.output_names}
            before = [w.copy() for w in model.get_weights()]
            loss = model.train_on_batch(x, targets, return_dict=True)["loss"]
            assert np.isfinite(loss), (variant, encoder, loss)
            assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
            assert len(model.output_names) == {"base": 1, "ds": 5, "ds_cgm": 6}[variant]
            keras.backend.clear_session()
