"""Compiles the same pipeline for Kubeflow Pipelines 2.x (default) or Vertex AI Pipelines, offline.

    python kubeflow_runner.py --image REGISTRY/unet3plus-tfx:TAG \\
        --pipeline_root s3://mlpipeline/unet3plus --data_root s3://data/LiTS \\
        --serving_dir s3://models/unet3plus [--trainer_gpus 1]       # -> unet3plus_pipeline.yaml
    python kubeflow_runner.py --target vertex --image REGION-docker.pkg.dev/P/R/unet3plus-tfx:TAG \\
        --pipeline_root gs://B/root --data_root gs://B/LiTS --serving_dir gs://B/serving

--target kfp writes the PipelineSpec alone (schema 2.1), what `kfp.Client().upload_pipeline`
takes; KFP cannot run TFX resolvers, so the Evaluator blesses on the absolute Dice bar only.
--target vertex writes TFX's PipelineJob file, with the last blessed model as the baseline.
Every task runs in --image, which must hold this project installed as a package (the Dockerfile
builds one; see docs/deploy.md). Beam steps run with the --beam_arg values given; a Dataflow,
Flink, Spark or portable runner gets the image as its workers' environment unless told otherwise.
"""
from __future__ import annotations

import argparse

from common.process_exit import exit_process
from pipeline import configs
from pipeline import kubeflow_target as kt
from pipeline.settings_flags import (SHORTCUTS, add_settings_flags, config_from_args,
                                     settings_or_exit)

# The shortcut flags that mean something on a cluster (the paths are this runner's own flags).
KFP_SHORTCUTS = tuple(f for f in SHORTCUTS if f not in (
    "data_root", "pipeline_root", "serving_dir", "metadata_path", "num_cases"))
# Components whose containers --beam_cpu/--beam_memory size. Not NiftiExampleGen: TFX's
# ExampleGen builder drops platform config (tfx issue 6146).
BEAM_COMPONENTS = ("StatisticsGen", "Transform", "Evaluator")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=kt.DEFAULT_TARGET, choices=kt.TARGETS,
                   help="kfp: open-source Kubeflow Pipelines 2.x (Vertex takes it too); "
                        "vertex: Vertex AI Pipelines, with the baseline-model comparison")
    p.add_argument("--profile", default="paper", choices=configs.PROFILES)
    p.add_argument("--image", required=True, help="container image holding this package")
    p.add_argument("--pipeline_root", required=True, help="gs://, s3:// or a path every task "
                                                          "sees; where artifacts land")
    p.add_argument("--data_root", required=True, help="folder of volume-N / segmentation-N "
                                                       "NIfTI files, as the tasks see it")
    p.add_argument("--serving_dir", required=True, help="where the Pusher puts blessed models")
    p.add_argument("--output", help="default: " + ", ".join(
        f"{kt.DEFAULT_OUTPUT[t]} ({t})" for t in kt.TARGETS) + "; .yaml/.yml or .json")
    p.add_argument("--beam_arg", action="append", default=None, metavar="ARG",
                   help="a Beam pipeline argument (repeatable), e.g. "
                        "--beam_arg=--runner=DataflowRunner; default: in-process in each task")
    _add_resource_flags(p)
    # The settings surface of local_runner.py, without its local paths and environment defaults:
    # the compiled file carries the effective settings.
    add_settings_flags(p, shortcuts=KFP_SHORTCUTS, from_env=False)
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def _add_resource_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("container resources (limits; the orchestrator's defaults if unset)")
    g.add_argument("--trainer_gpus", type=int, default=0, help="GPUs for the Trainer")
    g.add_argument("--gpu_type", help="accelerator type; default " + ", ".join(
        f"{v} ({t})" for t, v in kt.DEFAULT_GPU_TYPE.items()))
    g.add_argument("--trainer_cpu", type=float, help="CPU limit of the Trainer")
    g.add_argument("--trainer_memory", type=float, help="memory limit of the Trainer, GB")
    g.add_argument("--beam_cpu", type=float,
                   help="CPU limit of " + ", ".join(BEAM_COMPONENTS))
    g.add_argument("--beam_memory", type=float,
                   help="memory limit of " + ", ".join(BEAM_COMPONENTS) + ", GB")


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("trainer_gpus", "trainer_cpu", "trainer_memory", "beam_cpu", "beam_memory"):
        value = getattr(args, name)
        if value is not None and value < 0:
            p.error(f"--{name} must not be negative, got {value}")
    if args.gpu_type and not args.trainer_gpus:
        p.error("--gpu_type needs --trainer_gpus")
    args.gpu_type = args.gpu_type or kt.DEFAULT_GPU_TYPE[args.target]
    args.output = args.output or kt.DEFAULT_OUTPUT[args.target]
    if args.pipeline_root.startswith("minio://"):
        # KFP's own default root scheme; TFX reads and writes through tf.io.gfile, which has none.
        p.error("--pipeline_root minio://... is not readable by TFX; give the same bucket as "
                "s3://BUCKET/... and point S3_ENDPOINT at MinIO (docs/deploy.md)")


MODEL_COMPONENTS = ("Trainer", "VolumeEvaluator")


def _apply_resources(pipeline, args: argparse.Namespace) -> None:
    trainer = kt.resource_spec(args.trainer_cpu, args.trainer_memory, args.trainer_gpus,
                               args.gpu_type)
    beam = kt.resource_spec(args.beam_cpu, args.beam_memory)
    for component in pipeline.components:
        # The VolumeEvaluator runs the model over every slice of the eval volumes (and the
        # baseline's): it gets the Trainer's machine.
        if component.id in MODEL_COMPONENTS and trainer is not None:
            component.with_platform_config(trainer)
        elif component.id in BEAM_COMPONENTS and beam is not None:
            component.with_platform_config(beam)


def settings(args: argparse.Namespace, beam_args) -> configs.PipelineConfig:
    """The effective settings: the profile, --config files, this runner's paths and Beam args
    (which win over a file's), the shortcut flags, --set."""
    # metadata_path "": the cluster keeps its own ML Metadata (and no local path of the machine
    # that compiled gets into the file).
    fixed = [("pipeline_root", args.pipeline_root), ("data_root", args.data_root),
             ("serving_dir", args.serving_dir), ("metadata_path", "")]
    if beam_args is not None:
        fixed.append(("beam_pipeline_args", beam_args))
    return config_from_args(args, fixed)


def compile_pipeline(args: argparse.Namespace, config: configs.PipelineConfig) -> dict:
    """The document to upload for args.target."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from pipeline.pipeline import create_pipeline

    pipeline = create_pipeline(config, with_baseline=kt.runs_resolvers(args.target))
    _apply_resources(pipeline, args)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            default_image=args.image, **kt.runner_config_kwargs(args.target)))
    job = runner.run(pipeline, write_out=False)
    return kt.pipeline_document(job, args.target, config.pipeline_root)


def main(argv=None) -> int:
    args = parse_args(argv)
    beam_args, note = kt.with_worker_packaging(args.beam_arg, args.image)
    config, status = settings_or_exit("kubeflow_runner.py", args,
                                      lambda: settings(args, beam_args))
    if config is None:
        return status
    if note:
        print(note)
    document = compile_pipeline(args, config)
    kt.write_document(document, args.output)
    print(f"Compiled {config.pipeline_name} for {args.target} -> {args.output}")
    return 0


if __name__ == "__main__":
    exit_process(main())
