"""Compiles the same pipeline for Kubeflow Pipelines (KFP v2 IR JSON), offline.

    python kubeflow_runner.py --image gcr.io/PROJECT/unet3plus-tfx:latest \\
        --pipeline_root gs://BUCKET/pipelines --data_root gs://BUCKET/LiTS \\
        --serving_dir gs://BUCKET/serving --output unet3plus_pipeline.json

The image must contain this package (`pip install .`), since components refer to the code by
module path (preprocessing_fn, run_fn, the ExampleGen executor). Beam steps run with the
--beam_arg values given (e.g. a DataflowRunner or a Flink/Spark job endpoint).
"""
from __future__ import annotations

import argparse
import sys

from pipeline import configs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="paper", choices=configs.PROFILES)
    p.add_argument("--image", required=True, help="container image holding this package")
    p.add_argument("--pipeline_root", required=True)
    p.add_argument("--data_root", required=True)
    p.add_argument("--serving_dir", required=True)
    p.add_argument("--train_steps", type=int)
    p.add_argument("--classes", choices=configs.CHOICES["classes"],
                   help="targets: liver (default) or liver_tumor (background / liver / tumour)")
    p.add_argument("--output", default="unet3plus_pipeline.json")
    p.add_argument("--beam_arg", action="append", default=None, metavar="ARG")
    args = p.parse_args(argv)

    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
    from pipeline.pipeline import create_pipeline

    config = configs.make_config(profile=args.profile, pipeline_root=args.pipeline_root,
                                 data_root=args.data_root, serving_dir=args.serving_dir,
                                 train_steps=args.train_steps, classes=args.classes,
                                 beam_pipeline_args=args.beam_arg)
    # Remote paths must stay as given (make_config makes local paths absolute).
    config.pipeline_root, config.data_root = args.pipeline_root, args.data_root
    config.serving_dir = args.serving_dir
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=args.image),
        output_filename=args.output)
    runner.run(create_pipeline(config))
    print(f"Compiled {config.pipeline_name} for Kubeflow Pipelines -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
