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
from common.interrupts import EXIT_INTERRUPTED, signal_name, terminate_as_interrupt
from common.process_exit import exit_process
from common.run_lock import RunLockHeld, locked_outputs
from pipeline import configs
from pipeline.overrides import to_yaml
from pipeline.settings_flags import add_settings_flags
from pipeline.settings_flags import config_from_args as config_from_settings_args
from pipeline.settings_flags import settings_or_exit
from schema.contract import EVAL_REPORT_FILE, SETTINGS_FILE

DEFAULT_OUTPUT_DIR = "outputs"


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=env("UNET3P_PROFILE", "demo"), choices=configs.PROFILES)
    p.add_argument("--output_dir", default=env("UNET3P_OUTPUT_DIR"),
                   help="where pipeline_root, metadata, serving_dir and logs go (default "
                        "outputs; given, it also wins over the paths of a --config file)")
    add_settings_flags(p)
    p.add_argument("--no_cache", action="store_true", help="re-run every component")
    p.add_argument("--verbose", action="store_true",
                   default=env("UNET3P_VERBOSE", "") not in ("", "0"),
                   help="put every TFX, Beam and TensorFlow log line on the console too (they "
                        "always go to <output_dir>/logs/run-<timestamp>.log)")
    p.add_argument("--beam_arg", action="append", default=None, metavar="ARG",
                   help="a Beam pipeline argument (repeatable), e.g. "
                        "--beam_arg=--direct_running_mode=multi_processing")
    return p.parse_args(argv)


def output_dir(args: argparse.Namespace) -> str:
    return os.path.abspath(args.output_dir or DEFAULT_OUTPUT_DIR)


def config_from_args(args: argparse.Namespace) -> configs.PipelineConfig:
    """The effective settings; SettingsError (pipeline/settings_checks.py) names what is wrong."""
    fixed = []   # flags of this runner's own: given, they win over a --config file
    if args.output_dir:
        fixed += [(key, storage.join(output_dir(args), name))
                  for key, name in configs.OUTPUT_DIR_LAYOUT.items()]
    if args.no_cache:
        fixed.append(("enable_cache", False))
    if args.beam_arg is not None:
        fixed.append(("beam_pipeline_args", args.beam_arg))
    return config_from_settings_args(args, fixed, output_dir=output_dir(args))


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
    # A setting that cannot work starts nothing.
    config, status = settings_or_exit("local_runner.py", args, lambda: config_from_args(args))
    if config is None:
        return status
    from common.logs import console_logger
    from pipeline.console import setup_run_logging

    # Before TFX, Beam or TensorFlow are imported: the noise filters act at import time.
    run_log, component_lines = setup_run_logging(os.path.join(output_dir(args), "logs"),
                                                 verbose=args.verbose)
    say = console_logger().info
    say("Full log: %s", run_log.path)
    start = time.time()
    try:
        with terminate_as_interrupt(), locked_outputs(
                (config.metadata_path, False, "the metadata database"),
                (config.pipeline_root, True, "the pipeline root")):
            return _run(args, config, component_lines, say)
    except RunLockHeld as e:
        console_logger().error("Not started: %s", e)
        return 2
    except KeyboardInterrupt as e:
        console_logger().error(
            "Interrupted by %s after %.0f s. The components that finished are recorded in %s "
            "and are not run again: run the same command to resume.", signal_name(e),
            time.time() - start, config.metadata_path)
        return EXIT_INTERRUPTED
    finally:
        say("Full log: %s", run_log.path)
        run_log.close()


def _run(args: argparse.Namespace, config: configs.PipelineConfig, component_lines, say) -> int:
    from pipeline import console
    data_root = ensure_input_data(config)
    settings_file = storage.join(config.pipeline_root, SETTINGS_FILE)
    storage.makedirs(config.pipeline_root)
    storage.write_text(settings_file, to_yaml(config))   # replayable: --config <this file>
    say("Profile %s; data %s; pipeline root %s; settings %s", args.profile, data_root,
        config.pipeline_root, settings_file)

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
        report = os.path.join(output_dir(args), EVAL_REPORT_FILE)
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
