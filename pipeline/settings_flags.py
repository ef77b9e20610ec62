"""The runners' settings flags, generated from one table: --config FILE.yaml (repeatable),
--set KEY=VALUE (repeatable), --print_config, and the shortcut flags that set one key each
(--train_steps is --set train.train_steps=...). A shortcut's type and choices come from the
settings tree itself, so no choice list is typed twice.

Order, later wins: the profile, its paths, the --config files in order, the shortcut flags,
the --set overrides in order. Through the environment (the `tfx` CLI route, which runs
local_runner.py without arguments): UNET3P_CONFIG (files, separated by the OS path separator,
':' here) and UNET3P_SET (overrides, one per line or separated by ';'), and UNET3P_<FLAG> for
each shortcut (UNET3P_TRAIN_STEPS=...); they come before the command line's own.
"""
from __future__ import annotations

import argparse
import os
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pipeline import configs
from pipeline.overrides import field_type, to_yaml
from pipeline.settings_checks import SettingsError

# Shortcut flag -> (the key it sets, help). The flag's type and choices are the key's.
SHORTCUTS: Dict[str, Tuple[str, str]] = {
    "data_root": ("data_root", "folder of volume-N.nii[.gz] + segmentation-N.nii[.gz]; default: "
                               "the built-in synthetic set, generated on first use"),
    "manifest": ("example_gen.manifest", "CSV with columns image, label[, case_id] (paths "
                                         "absolute or relative to the CSV), instead of LiTS "
                                         "naming under --data_root"),
    "pipeline_root": ("pipeline_root", "where artifacts land (default <output_dir>/pipeline)"),
    "metadata_path": ("metadata_path", "the SQLite ML Metadata file"),
    "serving_dir": ("serving_dir", "where the Pusher puts blessed models"),
    "pipeline_name": ("pipeline_name", "the pipeline's name in ML Metadata"),
    "num_cases": ("synthetic.num_cases", "number of synthetic volumes (ignored with "
                                         "--data_root)"),
    "train_steps": ("train.train_steps", "training steps"),
    "batch_size": ("train.batch_size", "images per training step (over all replicas)"),
    "steps_per_epoch": ("train.steps_per_epoch", "training steps between validations and "
                                                 "checkpoints"),
    "precision": ("train.precision", "auto: measured on this machine (docs/training.md)"),
    "xla": ("train.xla", "XLA compilation (auto: on for GPUs)"),
    "input": ("train.input", "Trainer input pipeline (auto: DALI when its TensorFlow plugin "
                             "imports, else tf.data)"),
    "normalization": ("transform.normalization", "Transform's intensity normalization"),
    "classes": ("transform.classes", "targets: liver (one sigmoid channel, liver incl. tumour) "
                                     "or liver_tumor (softmax over background / liver / "
                                     "tumour)"),
    "dice_lower_bound": ("evaluation.dice_lower_bound", "eval liver Dice a model needs to be "
                                                        "blessed"),
    "dice_change_tolerance": ("evaluation.dice_change_tolerance",
                              "how much worse than the last blessed model's Dice a model may be "
                              "and still be blessed"),
}
NO_AUGMENT = ("train.augment.enabled", False)   # --no_augment


def _env_list(name: str, separators: str) -> List[str]:
    text = os.environ.get(name, "")
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    return [item.strip() for item in text.split(separators[0]) if item.strip()]


def _flag_type(key: str):
    hint = field_type(key)
    if typing.get_origin(hint) is typing.Union:   # Optional[X]
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint if hint in (int, float, str) else str


def add_settings_flags(p: argparse.ArgumentParser, shortcuts=tuple(SHORTCUTS),
                       from_env: bool = True, print_config: bool = True) -> None:
    """--config, --set, (with `print_config`) --print_config and the given shortcut flags
    (defaults from UNET3P_* when `from_env`). The benches take --config and --set alone."""
    env = os.environ.get if from_env else (lambda name, default=None: default)
    g = p.add_argument_group("settings (docs/settings_reference.md lists every key)")
    g.add_argument("--config", action="append", metavar="FILE.yaml",
                   default=_env_list("UNET3P_CONFIG", os.pathsep) if from_env else [],
                   help="settings to merge over the profile (repeatable; later files win), "
                        "e.g. the settings.yaml a run saved")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   default=_env_list("UNET3P_SET", "\n;") if from_env else [],
                   help="one setting (repeatable), e.g. --set model.variant=ds_cgm "
                        "--set model.filters=[32,64,128,256,512]")
    if print_config:
        g.add_argument("--print_config", action="store_true",
                       help="print the effective settings as YAML and exit")
    for flag in shortcuts:
        key, text = SHORTCUTS[flag]
        choices = configs.CHOICES.get(key)
        g.add_argument(f"--{flag}", type=_flag_type(key), choices=choices,
                       default=env(f"UNET3P_{flag.upper()}"),
                       help=f"{text} (--set {key}=...)")
    if "train_steps" in shortcuts:
        g.add_argument("--no_augment", action="store_true",
                       help="train without augmentation (--set train.augment.enabled=false)")


def shortcut_overrides(args: argparse.Namespace) -> List[Tuple[str, Any]]:
    """(key, value) of every shortcut given (an environment default is a string: the merge
    converts it to the key's type, or names it in its error)."""
    found = [(SHORTCUTS[flag][0], getattr(args, flag)) for flag in SHORTCUTS
             if getattr(args, flag, None) is not None]
    if getattr(args, "no_augment", False):
        found.append(NO_AUGMENT)
    return found


def config_from_args(args: argparse.Namespace, fixed: Sequence[Tuple[str, Any]] = (),
                     **make_config_args: Any) -> configs.PipelineConfig:
    """The effective settings of the parsed flags (args.profile, .config, .overrides and the
    shortcuts). `fixed`: (key, value) the runner sets from its own flags, after the files and
    before the shortcuts; `make_config_args`: the rest of make_config's arguments."""
    return configs.make_config(
        profile=args.profile, config_files=args.config,
        overrides=[*fixed, *shortcut_overrides(args), *args.overrides], **make_config_args)


EXIT_BAD_SETTINGS = 2   # as argparse's own errors


def settings_or_exit(prog: str, args: argparse.Namespace, build: Callable[[], Any]
                     ) -> Tuple[Optional[Any], Optional[int]]:
    """(the settings `build()` returns, None) to go on; (None, exit status) when they were
    refused (one error line on stderr, status 2) or only printed (--print_config, status 0)."""
    try:
        config = build()
    except SettingsError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return None, EXIT_BAD_SETTINGS
    if args.print_config:
        print(to_yaml(config), end="")
        return None, 0
    return config, None
