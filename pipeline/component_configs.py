"""Each component's custom_config, built in one place from a PipelineConfig: create_pipeline(),
the benches and the tests that run a component's function directly all call these, so none of
them rebuilds a recipe by hand (and none gets a window or shape of its own)."""
from __future__ import annotations

from typing import Any, Dict, List

from pipeline.configs import PipelineConfig
from pipeline.overrides import plain_to_yaml, to_plain, to_yaml
from trainer.train_config import STEPS_FROM_TRAIN_ARGS

# Settings that cannot change the model: left out of the record the Trainer exports with it, so
# that changing one of them (a Dice bar, a path, the cache) does not invalidate the cached
# Trainer.
NOT_FOR_THE_MODEL = ("evaluation", "serving_dir", "metadata_path", "enable_cache",
                     "beam_pipeline_args")


def image_shape(config: PipelineConfig) -> List[int]:
    """[height, width, channels] of the examples the ExampleGen writes."""
    slices = config.example_gen.slices
    return [slices.size[0], slices.size[1], slices.channels]


def transform_custom_config(config: PipelineConfig) -> Dict[str, Any]:
    """What preprocessing_fn reads (TransformConfig.from_custom_config): the example shape, the
    ExampleGen's HU window and the TransformConfig fields."""
    return {"image_shape": image_shape(config),
            "window": list(config.example_gen.slices.window),
            **config.transform.to_dict()}


def trainer_custom_config(config: PipelineConfig) -> Dict[str, Any]:
    """What run_fn reads (trainer/run.py). The step counts reach run_fn once, through TFX's
    TrainArgs / EvalArgs (fn_args.train_steps, fn_args.eval_steps), so they are left out here."""
    train = {k: v for k, v in config.train.to_dict().items() if k not in STEPS_FROM_TRAIN_ARGS}
    return {"model": config.model.to_dict(),
            "train": train,
            "image_shape": image_shape(config),
            "slice": config.example_gen.slices.to_dict(),
            "settings_yaml": model_settings_yaml(config)}


def model_settings_yaml(config: PipelineConfig) -> str:
    """The settings that produce the model, as YAML: every section but NOT_FOR_THE_MODEL. Passed
    back with --config, the missing keys take the profile's (or the command line's) values."""
    settings = to_plain(config)
    return plain_to_yaml({k: v for k, v in settings.items() if k not in NOT_FOR_THE_MODEL})
