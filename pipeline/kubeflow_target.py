"""What a Kubeflow compile needs beyond the TFX graph: the two targets and the file each takes,
the containers' resources, and the packaging Beam workers need to import this project.

  kfp     open-source Kubeflow Pipelines 2.x: pipeline spec schema 2.1, the PipelineSpec alone
          (what `kfp.Client().upload_pipeline` takes), no TFX resolver (KFP's backend does not
          implement resolver executors), so the Evaluator blesses on the absolute Dice bar only.
          Vertex AI takes this file too.
  vertex  Vertex AI Pipelines: the PipelineJob wrapper TFX writes (schema 2.0.0), with the
          resolver of the last blessed model, so the Evaluator also gates on the change vs. it.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from common import storage
from components.kfp_executor_input import outputs_flag
from preprocessing.conversion_settings import beam_flag_values, beam_runner

KFP, VERTEX = "kfp", "vertex"
TARGETS = (KFP, VERTEX)
DEFAULT_TARGET = KFP
# KFP passes the type to Kubernetes as the resource name; Vertex names the accelerator model.
DEFAULT_GPU_TYPE = {KFP: "nvidia.com/gpu", VERTEX: "NVIDIA_TESLA_A100"}
# YAML: every KFP 2.x release takes it (older API servers refuse a .json upload).
DEFAULT_OUTPUT = {KFP: "unet3plus_pipeline.yaml", VERTEX: "unet3plus_pipeline.json"}

# Beam runners whose workers run elsewhere and must be able to import this package.
_DATAFLOW_RUNNERS = ("dataflow",)
_PORTABLE_RUNNERS = ("flink", "spark", "portable")
# Any of these means the user already said how workers get the code (or their environment).
_PACKAGING_FLAGS = ("--setup_file", "--extra_package", "--sdk_container_image",
                    "--worker_harness_container_image", "--environment_config",
                    "--environment_type")


def runs_resolvers(target: str) -> bool:
    """Whether the target's orchestrator runs TFX Resolver nodes (the baseline model)."""
    return target == VERTEX


def runner_config_kwargs(target: str) -> Dict[str, object]:
    """Extra KubeflowV2DagRunnerConfig arguments: open-source KFP needs pipeline spec 2.1."""
    return {"use_pipeline_spec_2_1": target == KFP}


# Every task command goes through this module, which makes what open-source KFP sends readable by
# TFX (components/kfp_executor_input.py) and ends the process with the task's own exit status
# where tensorflow-io's s3:// support would abort it at exit (common/process_exit.py).
TASK_ENTRYPOINT = "components.task_entrypoint"


def _through_task_entrypoint(command: List[str], output_keys: Optional[List[str]]) -> List[str]:
    """["python", "-m", M] -> ["python", "-m", TASK_ENTRYPOINT, "--outputs=K,...", M] (no
    --outputs where the component is unknown: then every output is kept); other commands
    unchanged."""
    if len(command) == 3 and command[1] == "-m" and command[2] != TASK_ENTRYPOINT:
        declared = [outputs_flag(output_keys)] if output_keys is not None else []
        return [command[0], "-m", TASK_ENTRYPOINT, *declared, command[2]]
    return command


def _output_keys_by_executor(pipeline_spec: dict) -> Dict[str, List[str]]:
    """{executor label: the output artifact keys its component declares}."""
    return {component["executorLabel"]: sorted(component.get("outputDefinitions", {})
                                               .get("artifacts", {}))
            for component in pipeline_spec.get("components", {}).values()
            if "executorLabel" in component}


def route_tasks_through_entrypoint(pipeline_spec: dict) -> None:
    """Puts TASK_ENTRYPOINT, with the component's output keys, in front of every container
    command of the spec (executors and their preCacheCheck hooks), in place."""
    output_keys = _output_keys_by_executor(pipeline_spec)
    for label, executor in pipeline_spec.get("deploymentSpec", {}).get("executors", {}).items():
        container = executor.get("container")
        if not container:
            continue
        for hook in [container] + list(container.get("lifecycle", {}).values()):
            if hook.get("command"):
                hook["command"] = _through_task_entrypoint(list(hook["command"]),
                                                           output_keys.get(label))


def pipeline_document(job: dict, target: str, pipeline_root: str) -> dict:
    """The document to upload, from the PipelineJob dict KubeflowV2DagRunner builds."""
    route_tasks_through_entrypoint(job["pipelineSpec"])
    if target == VERTEX:
        return job
    spec = dict(job["pipelineSpec"])
    # The wrapper's runtimeConfig.gcsOutputDirectory is dropped with it; the spec's own default
    # root is what a KFP run uses unless the run names another.
    spec["defaultPipelineRoot"] = pipeline_root
    return spec


def write_document(document: dict, path: str) -> None:
    """YAML for a .yaml/.yml path, JSON otherwise (both sorted, for stable diffs)."""
    if path.endswith((".yaml", ".yml")):
        import yaml
        text = yaml.safe_dump(document, sort_keys=True, default_flow_style=False)
    else:
        text = json.dumps(document, sort_keys=True, indent=1)
    storage.write_text(path, text)


def resource_spec(cpu: Optional[float] = None, memory_gb: Optional[float] = None,
                  gpus: int = 0, gpu_type: Optional[str] = None):
    """A container ResourceSpec (limits; memory in GB, the spec's unit), or None when nothing is
    asked for, so the orchestrator's defaults apply."""
    if not (cpu or memory_gb or gpus):
        return None
    from kfp.pipeline_spec import pipeline_spec_pb2
    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if cpu:
        spec.cpu_limit = float(cpu)
    if memory_gb:
        spec.memory_limit = float(memory_gb)
    if gpus:
        if not gpu_type:
            raise ValueError("a GPU count needs a GPU type")
        spec.accelerator.type = gpu_type
        spec.accelerator.count = int(gpus)
    return spec


def with_worker_packaging(args: Optional[Sequence[str]], image: str
                          ) -> Tuple[Optional[List[str]], Optional[str]]:
    """(beam args, note): for a runner whose workers run outside the task's container, the
    image as the workers' environment, unless the args already say how workers get the code.
    The note says what was added (None when nothing was)."""
    if args is None:
        return None, None
    args = list(args)
    runner = beam_runner(args)
    if runner not in _DATAFLOW_RUNNERS + _PORTABLE_RUNNERS:
        return args, None
    given = [f for f in _PACKAGING_FLAGS if beam_flag_values(args, f)]
    if given:
        return args, (f"Beam workers ({runner}): packaging left as given ({', '.join(given)}); "
                      "they must be able to import this project's package.")
    if runner in _DATAFLOW_RUNNERS:
        added = [f"--sdk_container_image={image}"]
    else:
        added = ["--environment_type=DOCKER", f"--environment_config={image}"]
    return args + added, (f"Beam workers ({runner}) run in the image so they can import this "
                          f"project: added {' '.join(added)}")
