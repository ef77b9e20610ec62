"""Runs the pipeline under the TFX local orchestrator with SQLite metadata.

    python local_runner.py                      # demo profile on the built-in synthetic CT set
    python local_runner.py --data_root /data/LiTS --profile paper

Also the `tfx` CLI way (flags then come from UNET3P_* environment variables):
    tfx pipeline create --engine=local --pipeline_path=local_runner.py
    tfx run create --engine=local --pipeline_name=unet3plus-liver
"""
from __future__ import annotations

import argparse
import logging
import os
import time

from common import storage
from common.process_exit import exit_process
from pipeline import configs
from schema.contract import EVAL_REPORT_FILE


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=env("UNET3P_PROFILE", "demo"), choices=configs.PROFILES)
    p.add_argument("--data_root", default=env("UNET3P_DATA_ROOT"),
                   help="folder of volume-N.nii[.gz] + segmentation-N.nii[.gz]; default: the "
                        "built-in synthetic set, generated on first use")
    p.add_argument("--manifest", default=env("UNET3P_MANIFEST"),
                   help="CSV with columns image, label[, case_id] (paths absolute or relative "
                        "to the CSV), instead of LiTS naming under --data_root")
    p.add_argument("--output_dir", default=env("UNET3P_OUTPUT_DIR", "outputs"),
                   help="where pipeline_root, metadata and serving_dir go by default")
    p.add_argument("--pipeline_root", default=env("UNET3P_PIPELINE_ROOT"))
    p.add_argument("--metadata_path", default=env("UNET3P_METADATA_PATH"))
    p.add_argument("--serving_dir", default=env("UNET3P_SERVING_DIR"))
    p.add_argument("--pipeline_name", default=env("UNET3P_PIPELINE_NAME",
                                                  configs.PIPELINE_NAME))
    p.add_argument("--train_steps", type=int, default=env("UNET3P_TRAIN_STEPS"))
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--steps_per_epoch", type=int, default=None,
                   help="training steps between validations and checkpoints")
    p.add_argument("--num_cases", type=int, default=None,
                   help="number of synthetic volumes (ignored with --data_root)")
    choices = configs.CHOICES
    p.add_argument("--precision", choices=choices["precision"],
                   help="auto: measured on this machine (see the README's Training details)")
    p.add_argument("--xla", choices=choices["xla"])
    p.add_argument("--normalization", choices=choices["normalization"],
                   help="Transform's intensity normalization (default: window -> [0, 1])")
    p.add_argument("--classes", choices=choices["classes"], default=env("UNET3P_CLASSES"),
                   help="targets: liver (one sigmoid channel, liver incl. tumour; default) or "
                        "liver_tumor (softmax over background / liver / tumour)")
    p.add_argument("--input", choices=choices["input"], default=env("UNET3P_INPUT"),
                   help="Trainer input pipeline (default auto: DALI when its TensorFlow plugin "
                        "imports, else tf.data)")
    p.add_argument("--no_augment", action="store_true",
                   help="train without augmentation (default: rotation, scaling, elastic, "
                        "brightness/contrast, noise; see AugmentConfig in trainer/augment_config.py)")
    p.add_argument("--dice_lower_bound", type=float, default=None,
                   help="eval liver Dice a model needs to be blessed (default: the profile's)")
    p.add_argument("--dice_change_tolerance", type=float, default=None,
                   help="how much worse than the last blessed model's Dice a model may be and "
                        "still be blessed (default: the profile's)")
    p.add_argument("--no_cache", action="store_true", help="re-run every component")
    p.add_argument("--verbose", action="store_true",
                   default=env("UNET3P_VERBOSE", "") not in ("", "0"),
                   help="put every TFX, Beam and TensorFlow log line on the console too (they "
                        "always go to <output_dir>/logs/run-<timestamp>.log)")
    p.add_argument("--beam_arg", action="append", default=None, metavar="ARG",
                   help="a Beam pipeline argument (repeatable), e.g. "
                        "--beam_arg=--direct_running_mode=multi_processing")
    args = p.parse_args(argv)
    for name in ("classes", "input"):   # argparse does not check defaults from the environment
        value = getattr(args, name)
        if value is not None and value not in choices[name]:
            p.error(f"UNET3P_{name.upper()} must be one of {choices[name]}, got {value!r}")
    if args.train_steps is not None:
        args.train_steps = int(args.train_steps)
    return args


def config_from_args(args: argparse.Namespace) -> configs.PipelineConfig:
    config = configs.make_config(
        profile=args.profile, output_dir=args.output_dir, data_root=args.data_root,
        pipeline_root=args.pipeline_root, metadata_path=args.metadata_path,
        serving_dir=args.serving_dir, train_steps=args.train_steps, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch,
        precision=args.precision, xla=args.xla, normalization=args.normalization,
        classes=args.classes, input=args.input,
        manifest=storage.absolute(args.manifest) if args.manifest else None,
        num_cases=args.num_cases, dice_lower_bound=args.dice_lower_bound,
        dice_change_tolerance=args.dice_change_tolerance,
        enable_cache=not args.no_cache, beam_pipeline_args=args.beam_arg,
        pipeline_name=args.pipeline_name)
    if args.no_augment:
        config.train.augment.enabled = False
    return config


def ensure_input_data(config: configs.PipelineConfig) -> str:
    """The data root, generating the built-in synthetic set when none was given."""
    if config.example_gen.manifest:
        if not storage.isfile(config.example_gen.manifest):
            raise SystemExit(f"--manifest {config.example_gen.manifest} is not a file")
        return config.input_base
    if config.data_root:
        if not storage.isdir(config.data_root):
            raise SystemExit(f"--data_root {config.data_root} is not a directory")
        return config.data_root
    from preprocessing.synthetic_ct import ensure_dataset
    s = config.synthetic
    ensure_dataset(config.synthetic_data_dir, num_cases=s.num_cases, seed=s.seed,
                   in_plane=s.size, slices_range=(s.min_slices, s.max_slices))
    return config.synthetic_data_dir


def main(argv=None) -> int:
    args = parse_args(argv)
    from common.logs import console_logger
    from pipeline.console import setup_run_logging

    # Before TFX, Beam or TensorFlow are imported: the noise filters act at import time.
    run_log, component_lines = setup_run_logging(
        os.path.join(os.path.abspath(args.output_dir), "logs"), verbose=args.verbose)
    say = console_logger().info
    say("Full log: %s", run_log.path)
    try:
        return _run(args, component_lines, say)
    finally:
        say("Full log: %s", run_log.path)
        run_log.close()


def _run(args: argparse.Namespace, component_lines, say) -> int:
    from pipeline import console
    config = config_from_args(args)
    data_root = ensure_input_data(config)
    say("Profile %s; data %s; pipeline root %s", args.profile, data_root, config.pipeline_root)

    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline
    from pipeline.summary import collect_run_summary, format_run_summary, latest_run_id

    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    pipeline = create_pipeline(
        config, metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(config.metadata_path))
    previous_run = latest_run_id(config.metadata_path)
    # Each component's end line carries its key figure, read from this run's artifacts.
    component_lines.set_figures(console.run_figures(config.metadata_path,
                                                    newer_than=previous_run))
    start = time.time()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    # Under `tfx pipeline create` run() is only recorded, not executed: then no new run exists.
    summary = collect_run_summary(config.metadata_path, newer_than=previous_run)
    text = format_run_summary(summary)
    if summary:
        text += f"\nTotal time: {time.time() - start:.0f} s"
    if summary and summary.get("report"):
        # The artifact's report, also at a fixed place: the last line a user reads.
        report = os.path.join(os.path.abspath(args.output_dir), EVAL_REPORT_FILE)
        try:
            storage.copy(summary["report"], report)
        except OSError as e:   # the run itself succeeded: say where the artifact's copy is
            logging.getLogger(__name__).warning("Could not copy the report to %s: %s", report, e)
            report = summary["report"]
        text += f"\nEvaluation report (open in a browser): {report}"
    print(text, flush=True)
    logging.getLogger(__name__).info("Run summary:%s", text)   # the log file keeps it too
    return 0


if __name__ == "__main__":
    exit_process(main())
