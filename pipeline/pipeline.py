"""create_pipeline(): the TFX graph, the same for every runner.

NiftiExampleGen -> StatisticsGen + ExampleValidator (against schema/schema.pbtxt, copied from the
installed package by PackagedSchemaGen) -> AnomaliesGate (stops the run on any anomaly) ->
Transform -> Trainer -> Evaluator (vs. the latest blessed model) -> Pusher, and VolumeEvaluator
(every slice of the eval volumes, LiTS metrics, eval_report.html). One small builder per
stage; create_pipeline() wires them. StatisticsGen, Transform and Evaluator read examples in
byte-sized batches (components/byte_size_batching.py) under every runner.
"""
from __future__ import annotations

from typing import Optional

from tfx import v1 as tfx
from tfx.orchestration import pipeline as tfx_pipeline

from components.anomalies_gate import validation_components
from components.atomic_pusher import with_atomic_push
from components.byte_size_batching import with_byte_size_batching
from components.nifti_example_gen import NiftiExampleGen
from components.packaged_schema_gen import PackagedSchemaGen
from components.volume_evaluator import volume_evaluator
from evaluation.tfma_config import make_eval_config
from pipeline.component_configs import trainer_custom_config, transform_custom_config
from pipeline.configs import PipelineConfig
from pipeline.overrides import to_yaml
from preprocessing.transform_config import TransformConfig
from schema import schema_sha256

TRANSFORM_FN = "preprocessing.transform.preprocessing_fn"
RUN_FN = "trainer.run.run_fn"


def _transform(config: PipelineConfig, examples, schema):
    transform = tfx.components.Transform(
        examples=examples, schema=schema, preprocessing_fn=TRANSFORM_FN,
        custom_config=transform_custom_config(config),
        # Transform's own pre/post statistics would summarize every pixel of every image
        # tensor (slow, and large in memory); StatisticsGen already describes the raw data,
        # where images are single bytes features (length stats only).
        disable_statistics=True,
        # Materialized on purpose: Trainer and Evaluator read the transformed examples, so the
        # decode + normalize runs once per example instead of once per epoch.
        materialize=True)
    return with_byte_size_batching(transform)


def _trainer(config: PipelineConfig, transform, schema):
    return tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema,
        train_args=tfx.proto.TrainArgs(num_steps=config.train.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=config.train.eval_steps),
        custom_config=trainer_custom_config(config))


def _baseline_resolver():
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")


def _evaluate_and_push(config: PipelineConfig, transform, trainer, classes: str,
                       with_baseline: bool):
    """The candidate against the last blessed model (with_baseline) or against the absolute
    Dice bar alone, the Pusher that ships only a blessed one, and the full-volume evaluation
    with its report."""
    # Without a baseline the compiled config holds no change threshold: it says what is checked.
    eval_config = make_eval_config(
        config.evaluation.dice_lower_bound,
        config.evaluation.dice_change_tolerance if with_baseline else None, classes=classes)
    model_resolver = _baseline_resolver() if with_baseline else None
    evaluator = with_byte_size_batching(tfx.components.Evaluator(
        examples=transform.outputs["transformed_examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"] if model_resolver else None,
        eval_config=eval_config))
    pusher = with_atomic_push(tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=config.serving_dir))))
    # Full volumes, every slice, LiTS metrics and the HTML report: read by people, not a gate.
    full_volumes = volume_evaluator(
        trainer.outputs["model"], config.input_base, config.example_gen,
        baseline_model=model_resolver.outputs["model"] if model_resolver else None,
        tfma_evaluation=evaluator.outputs["evaluation"], blessing=evaluator.outputs["blessing"],
        settings_yaml=to_yaml(config), inference=config.inference)
    return [c for c in (model_resolver, evaluator, pusher, full_volumes) if c is not None]


def create_pipeline(config: PipelineConfig, metadata_connection_config=None,
                    beam_pipeline_args: Optional[list] = None,
                    with_baseline: bool = True) -> tfx_pipeline.Pipeline:
    """with_baseline=False leaves out the resolver of the last blessed model (for orchestrators
    that cannot run TFX resolvers, e.g. open-source Kubeflow Pipelines): the Evaluator then
    blesses on the absolute Dice bar alone."""
    # Fails here, at compile time, rather than inside the Transform run.
    classes = TransformConfig.from_dict(config.transform.to_dict()).classes

    example_gen = NiftiExampleGen(input_base=config.input_base, settings=config.example_gen)
    schema_gen = PackagedSchemaGen(expected_sha256=schema_sha256())
    examples, schema = example_gen.outputs["examples"], schema_gen.outputs["schema"]
    checks = validation_components(examples, schema)   # StatisticsGen, ExampleValidator, gate
    with_byte_size_batching(checks[0])                  # the StatisticsGen
    transform = _transform(config, examples, schema)
    # Bad data stops the run here: Transform waits for the validation gate.
    transform.add_upstream_node(checks[-1])
    trainer = _trainer(config, transform, schema)
    return tfx_pipeline.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[example_gen, schema_gen, *checks, transform, trainer,
                    *_evaluate_and_push(config, transform, trainer, classes, with_baseline)],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=(beam_pipeline_args if beam_pipeline_args is not None
                            else config.beam_pipeline_args),
    )
