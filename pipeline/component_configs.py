"""Each component's custom_config, built in one place from a PipelineConfig: create_pipeline(),
the benches and the tests that run a component's function directly all call these, so none of
them rebuilds a recipe by hand (and none gets a window or shape of its own)."""
from __future__ import annotations

from typing import Any, Dict, List

from pipeline.configs import PipelineConfig
from trainer.train_config import STEPS_FROM_TRAIN_ARGS


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
            "slice": config.example_gen.slices.to_dict()}
