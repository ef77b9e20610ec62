"""The pipeline's settings tree, PipelineConfig: it composes each stage's settings dataclass
(each lives beside the code that reads it, with its defaults: models/model_config.py,
trainer/train_config.py, ...), plus the run's paths. Profiles set its defaults:

  tiny   the test suite's: 64x64 slices, a few volumes, a very narrow model, a few steps
  demo   `make run`: built-in synthetic CT at 128x128, a narrow UNet 3+, minutes on a CPU
  paper  the paper's setting: 320x320 input, widths 64..1024 with 64-channel skips, hybrid loss

`local_runner.py` and `kubeflow_runner.py` turn flags, --config files and --set overrides into a
PipelineConfig with `make_config` (pipeline/settings_flags.py: the flags; overrides.py: merging;
settings_checks.py: what cannot work).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

from common.storage import absolute, dirname, join
from evaluation.evaluation_config import EvalConfig
from inference.inference_config import MIRRORS, InferenceConfig
from models.model_config import ENCODERS, LOSSES, VARIANTS, ModelConfig
from preprocessing.conversion_settings import (LOCAL_BEAM_RUNNER, ConversionSettings,
                                               with_local_runner)
from preprocessing.slices import SELECTIONS, SliceConfig
from preprocessing.synthetic_ct.data_config import SyntheticDataConfig
from preprocessing.transform_config import CLASSES, NORMALIZATIONS, TransformConfig
from trainer.augment_config import AugmentConfig
from trainer.train_config import (INPUTS, LR_SCHEDULES, OPTIMIZERS, PRECISIONS, XLA_MODES,
                                  TrainConfig)

PIPELINE_NAME = "unet3plus-liver"
PROFILES = ("tiny", "demo", "tumour", "paper")
# The values a setting with a fixed set of choices takes, from the modules that use them: the
# settings checks, the runners' flags and the settings reference offer exactly these.
CHOICES = {
    "example_gen.slices.selection": SELECTIONS,
    "transform.normalization": NORMALIZATIONS,
    "transform.classes": CLASSES,
    "model.variant": VARIANTS,
    "model.encoder": ENCODERS,
    "model.loss": LOSSES,
    "train.optimizer": OPTIMIZERS,
    "train.lr_schedule": LR_SCHEDULES,
    "train.precision": PRECISIONS,
    "train.xla": XLA_MODES,
    "train.input": INPUTS,
    "inference.mirror": MIRRORS,
}


@dataclasses.dataclass
class PipelineConfig:
    pipeline_name: str = PIPELINE_NAME     # the pipeline's name in ML Metadata and on Kubeflow
    pipeline_root: str = "outputs/pipeline"   # where every artifact lands (a path or URI)
    # The local runs' SQLite ML Metadata ("" on Kubeflow: the cluster keeps its own)
    metadata_path: str = "outputs/metadata.sqlite"
    serving_dir: str = "outputs/serving_model"   # where the Pusher puts blessed models
    data_root: Optional[str] = None        # None: the built-in synthetic set under outputs/
    synthetic: SyntheticDataConfig = dataclasses.field(default_factory=SyntheticDataConfig)
    example_gen: ConversionSettings = dataclasses.field(default_factory=ConversionSettings)
    transform: TransformConfig = dataclasses.field(default_factory=TransformConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)
    # Beam: the in-process FnApiRunner. Without --runner, Beam 2.74's DirectRunner first tries
    # Prism, which downloads a binary from GitHub at run time (and falls back when offline).
    beam_pipeline_args: List[str] = dataclasses.field(default_factory=lambda: [
        LOCAL_BEAM_RUNNER, "--direct_running_mode=in_memory", "--direct_num_workers=1"])
    enable_cache: bool = True   # reuse a component's earlier outputs when its inputs are the same

    @property
    def synthetic_data_dir(self) -> str:
        return join(dirname(self.pipeline_root) or ".", self.synthetic.folder_name)

    @property
    def input_base(self) -> str:
        if self.example_gen.manifest:
            return dirname(absolute(self.example_gen.manifest))
        return self.data_root or self.synthetic_data_dir


def profile_config(profile: str) -> PipelineConfig:
    """The defaults of a profile, before flags override them."""
    if profile == "tiny":
        return PipelineConfig(
            synthetic=SyntheticDataConfig(num_cases=5, size=64, min_slices=12, max_slices=18),
            example_gen=ConversionSettings(
                slices=SliceConfig(size=(64, 64), keep_fraction=0.2), eval_fraction=0.4),
            # Small enough for CI, yet it must learn: the Evaluator's own bar of 0.8 blesses
            # it or the pipeline tests fail (measured eval liver Dice ~0.92 with seed 0).
            model=ModelConfig(filters=(8, 16, 32, 64, 128), skip_filters=8, loss="bce_dice"),
            train=TrainConfig(train_steps=120, eval_steps=2, batch_size=4, steps_per_epoch=30,
                              learning_rate=3e-3, warmup_steps=10, shuffle_buffer=32,
                              augment=AugmentConfig(enabled=False)),
            evaluation=EvalConfig(dice_lower_bound=0.8),
        )
    if profile == "demo":
        return PipelineConfig(
            synthetic=SyntheticDataConfig(num_cases=12, size=128),
            example_gen=ConversionSettings(slices=SliceConfig(size=(64, 64))),
            model=ModelConfig(filters=(8, 16, 32, 64, 128), skip_filters=8, loss="hybrid"),
            # Augmentation off: over 450 steps it cost 1.6x the training time and ~0.01 Dice
            # on this data; it pays off in long runs on real data (the paper profile).
            train=TrainConfig(train_steps=750, eval_steps=10, batch_size=8, steps_per_epoch=125,
                              learning_rate=2e-3, augment=AugmentConfig(enabled=False)),
            evaluation=EvalConfig(dice_lower_bound=0.85),
        )
    if profile == "tumour":
        # make run's size with a tumour class (make run-tumour); measured in docs/training.md.
        # The loss is what learns tumours: BCE + Dice with the Dice over the batch. Per slice,
        # each tumour-free slice (three in four) pushes the tumour channel to zero with a term
        # of its own: the paper's hybrid loss and BCE + per-slice Dice predicted no tumour
        # pixel at all. Tumour slices read 4x per pass and 1200 steps (1.5x make run's time):
        # tumour Dice 0.719 -> 0.774, lesion recall 0.6 -> 0.8 over 750 steps without repeats.
        # 16 volumes so that 4 (and their lesions) are scored.
        demo = profile_config("demo")
        return dataclasses.replace(
            demo,
            synthetic=dataclasses.replace(demo.synthetic, num_cases=16),
            transform=TransformConfig(classes="liver_tumor"),
            model=dataclasses.replace(demo.model, loss="bce_dice",
                                      loss_weights={"batch_overlap": 1.0}),
            train=dataclasses.replace(demo.train, tumour_slice_repeat=4, train_steps=1200,
                                      steps_per_epoch=150),
        )
    if profile == "paper":
        return PipelineConfig(
            synthetic=SyntheticDataConfig(num_cases=24, size=512, min_slices=40, max_slices=120),
            example_gen=ConversionSettings(slices=SliceConfig(size=(320, 320))),
            model=ModelConfig(),
            train=TrainConfig(train_steps=20000, eval_steps=200, batch_size=16,
                              steps_per_epoch=1000),
        )
    raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")


# Where a run's paths go under its output folder, unless given.
OUTPUT_DIR_LAYOUT = {"pipeline_root": "pipeline", "metadata_path": "metadata.sqlite",
                     "serving_dir": "serving_model"}


def make_config(profile: str = "demo", output_dir: str = "outputs",
                data_root: Optional[str] = None, pipeline_root: Optional[str] = None,
                metadata_path: Optional[str] = None, serving_dir: Optional[str] = None,
                enable_cache: bool = True, beam_pipeline_args: Optional[List[str]] = None,
                pipeline_name: str = PIPELINE_NAME, config_files: Sequence[str] = (),
                overrides: Sequence = ()) -> PipelineConfig:
    """The effective settings of a run: a profile's defaults, its paths under `output_dir`
    (or as given), then each YAML file of `config_files` merged in order, then `overrides`
    ("key=value" strings or (key, value) pairs; pipeline/overrides.py). Checked before it is
    returned: SettingsError names what cannot work (pipeline/settings_checks.py)."""
    from pipeline.overrides import apply_settings  # it imports this module
    from pipeline.settings_checks import check_settings
    config = profile_config(profile)
    # Local paths become absolute; URIs (gs://, s3://, ...) stay as given.
    output_dir = absolute(output_dir)
    config.pipeline_name = pipeline_name
    given = {"pipeline_root": pipeline_root, "metadata_path": metadata_path,
             "serving_dir": serving_dir}
    for key, name in OUTPUT_DIR_LAYOUT.items():
        setattr(config, key, given[key] or join(output_dir, name))
    config.data_root = data_root
    if beam_pipeline_args is not None:
        config.beam_pipeline_args = beam_pipeline_args
    config.enable_cache = enable_cache
    config = apply_settings(config, config_files, overrides)
    for name in ("pipeline_root", "metadata_path", "serving_dir", "data_root"):
        value = getattr(config, name)
        setattr(config, name, absolute(value) if value else value)
    if config.example_gen.manifest:
        config.example_gen.manifest = absolute(config.example_gen.manifest)
    config.beam_pipeline_args = with_local_runner(config.beam_pipeline_args)
    check_settings(config)
    return config
