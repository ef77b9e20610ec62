"""The executors of StatisticsGen, Transform and Evaluator, reading examples in batches sized by
bytes rather than by count.

TFXIO reads batches of 1..1000 records sized by timing, whatever their byte size: with 320x320
image examples one batch reached ~0.7 GB of records and StatisticsGen ~4 GB of RSS
(bench/statistics_memory.py). Batches of ~20 MiB keep the peak flat. tfx_bsl reads its absl flag
`tfxio_use_byte_size_batching` while a component builds its Beam graph, i.e. inside the
executor's Do, in whatever process runs it: the local runner's, or a Kubeflow task's container.
Setting it there (and only for the duration of Do) gives every runner the same batching; the
batch sizes are fixed in the graph, so Beam workers need no flag of their own.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from absl import flags
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.statistics_gen import executor as statistics_gen_executor
from tfx.components.transform import executor as transform_executor
from tfx.dsl.components.base import executor_spec

FLAG = "tfxio_use_byte_size_batching"


@contextlib.contextmanager
def byte_size_batching() -> Iterator[None]:
    """tfx_bsl's byte-size batching on for the block, restored after it."""
    from tfx_bsl.coders import batch_util  # noqa: F401  (defines the flag)
    if not flags.FLAGS.is_parsed():
        # tfx_bsl reads the flag's default until absl has parsed; parse nothing but the name.
        flags.FLAGS(sys.argv[:1], known_only=True)
    before = getattr(flags.FLAGS, FLAG)
    setattr(flags.FLAGS, FLAG, True)
    try:
        yield
    finally:
        setattr(flags.FLAGS, FLAG, before)


class StatisticsGenExecutor(statistics_gen_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        with byte_size_batching():
            super().Do(input_dict, output_dict, exec_properties)


class TransformExecutor(transform_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        with byte_size_batching():
            super().Do(input_dict, output_dict, exec_properties)


class EvaluatorExecutor(evaluator_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        with byte_size_batching():
            super().Do(input_dict, output_dict, exec_properties)


# TFX's executor class -> ours.
_REPLACEMENTS = {
    statistics_gen_executor.Executor: StatisticsGenExecutor,
    transform_executor.Executor: TransformExecutor,
    evaluator_executor.Executor: EvaluatorExecutor,
}


def with_byte_size_batching(component):
    """The component (a StatisticsGen, Transform or Evaluator), its executor replaced by the
    byte-size batching subclass; beam args and extra flags carried over."""
    old = component.executor_spec
    replacement = _REPLACEMENTS.get(getattr(old, "executor_class", None))
    if replacement is None:
        raise ValueError(f"{component.id}: no byte-size batching executor for "
                         f"{getattr(old, 'executor_class', old)!r}; known: "
                         f"{sorted(c.__module__ for c in _REPLACEMENTS)}")
    new = executor_spec.BeamExecutorSpec(replacement)
    new.beam_pipeline_args = list(old.beam_pipeline_args)
    new.extra_flags = list(old.extra_flags)
    component.executor_spec = new
    return component
