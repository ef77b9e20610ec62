"""Settings that cannot work, found before any component starts: a value outside its choices or
range, and combinations the model or the data cannot take. Each problem names the key, the
value and what is allowed; `check_settings` raises them all at once."""
from __future__ import annotations

from typing import Any, Dict, List

from models.model_config import LOSS_PARAMETERS, encoder_depth
from pipeline.configs import CHOICES, PipelineConfig


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the key, the value and what is allowed
    (and, read from a file, the file)."""


def setting_value(config: Any, key: str) -> Any:
    """The value at a dotted key of a PipelineConfig or of its plain-dict form."""
    for part in key.split("."):
        config = config[part] if isinstance(config, dict) else getattr(config, part)
    return config


def choice_problems(config: Any) -> List[str]:
    """Values outside CHOICES; `config` a PipelineConfig or its plain-dict form."""
    return [f"{key}={setting_value(config, key)!r}: choose one of {', '.join(allowed)}"
            for key, allowed in CHOICES.items() if setting_value(config, key) not in allowed]


# Key -> (lowest, highest, what it must be); None: unbounded on that side. A positive-only
# value (above 0) is checked apart.
_RANGES: Dict[str, tuple] = {
    "synthetic.num_cases": (1, None, "at least 1"),
    "example_gen.slices.context": (0, None, "0 or more neighbours per side"),
    "example_gen.slices.margin": (0, None, "0 or more slices"),
    "example_gen.slices.keep_fraction": (0.0, 1.0, "a fraction in [0, 1]"),
    "example_gen.eval_fraction": (0.0, 1.0, "a fraction in [0, 1]"),
    "example_gen.max_bad_fraction": (0.0, 1.0, "a fraction in [0, 1]"),
    "example_gen.max_volumes_in_flight": (1, None, "at least 1 volume per worker process"),
    "example_gen.max_voxels": (1, None, "at least 1"),
    "example_gen.max_inflated_bytes": (1, None, "at least 1"),
    "model.skip_filters": (1, None, "at least 1"),
    "train.train_steps": (1, None, "at least 1"),
    "train.eval_steps": (1, None, "at least 1"),
    "train.batch_size": (1, None, "at least 1"),
    "train.steps_per_epoch": (1, None, "at least 1"),
    "train.cpu_replicas": (1, None, "at least 1"),
    "train.shuffle_buffer": (1, None, "at least 1"),
    "train.tumour_slice_repeat": (1, None, "at least 1 (1: every slice once per pass)"),
    "train.augment.probability": (0.0, 1.0, "a probability in [0, 1]"),
}


def range_problems(config: PipelineConfig) -> List[str]:
    problems = []
    for key, (low, high, what) in _RANGES.items():
        value = setting_value(config, key)
        if (low is not None and value < low) or (high is not None and value > high):
            problems.append(f"{key}={value!r}: must be {what}")
    if config.train.learning_rate <= 0:
        problems.append(f"train.learning_rate={config.train.learning_rate!r}: must be above 0")
    for key in ("example_gen.slices.window", "train.augment.scale_range",
                "train.augment.contrast_range"):
        low, high = setting_value(config, key)
        if low >= high:
            problems.append(f"{key}={[low, high]}: the first value must be below the second")
    size = config.example_gen.slices.size
    if min(size) < 1:
        problems.append(f"example_gen.slices.size={list(size)}: both sides at least 1 pixel")
    if len(config.model.filters) < 2 or min(config.model.filters) < 1:
        problems.append(f"model.filters={list(config.model.filters)}: at least 2 stages, each "
                        f"at least 1 filter")
    return problems


def combination_problems(config: PipelineConfig) -> List[str]:
    """Settings that are each fine but cannot work together."""
    problems = []
    model, size = config.model, config.example_gen.slices.size
    depth = encoder_depth(model.encoder, model.filters)
    step = 2 ** (depth - 1)
    if any(side % step for side in size):
        problems.append(
            f"example_gen.slices.size={list(size)} with model.encoder={model.encoder!r} and "
            f"{depth} encoder scales (model.filters): each side must be a multiple of {step}, "
            f"the model pools {depth - 1} times")
    allowed = LOSS_PARAMETERS.get(model.loss, ())
    unknown = sorted(set(model.loss_weights) - set(allowed))
    if unknown:
        problems.append(
            f"model.loss_weights={dict(model.loss_weights)} with model.loss={model.loss!r}: "
            f"{', '.join(unknown)} not a parameter of that loss; it takes "
            f"{', '.join(allowed) or 'none'}")
    return problems


def check_settings(config: PipelineConfig) -> None:
    """SettingsError listing every problem, or nothing."""
    problems = choice_problems(config)
    if not problems:   # the other checks read the chosen encoder and loss
        problems = range_problems(config) + combination_problems(config)
    if problems:
        raise SettingsError("settings that cannot work:\n  " + "\n  ".join(problems))
