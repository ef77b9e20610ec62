"""Executes a compiled KFP v2 pipeline file (TFX's KubeflowV2DagRunner output) without a cluster.

A test helper for our compiled file, not an orchestrator: every task's container command runs as
a subprocess of a given Python (standing in for the image), in dependency order, fed the way a
backend feeds TFX's container entrypoint
(tfx/orchestration/kubeflow/v2/container/kubeflow_v2_run_executor.py). No caching, no retries,
one process per task. Two modes:

  vertex  as Vertex AI feeds a task (below). Resolvers return nothing (a first run).
  kfp     as open-source Kubeflow Pipelines 2.x does, read from its backend's source
          (tests/kfp_backend.py): inputs without a type and named by their ML Metadata id, the
          `executor-logs` output, uuid task folders and output_metadata.json, no lifecycle
          hooks, the launcher's download of inputs and upload of outputs, a pod's environment.

    python tests/kfp_ir_harness.py compiled.yaml --python VENV/bin/python --root DIR --mode kfp

Per task, in the vertex mode:
  1. The ExecutorInput, put in place of the `{{$}}` placeholder: constant parameters (schema
     2.0: `inputs.parameters` from `constantValue`; 2.1: `inputs.parameterValues` from
     `constant`; the entrypoint reads one or the other depending on whether
     --json_serialized_inputs_spec_args is given); input artifacts (the producers' outputs, typed
     from this component's inputDefinitions); output artifacts (a unique name, the type, a fresh
     uri under the task root, created as an object store would imply it); `outputs.outputFile` =
     <task root>/executor_output.json (the task root's name is the executor's unique id,
     <task root>/.temp its temp dir).
  2. A `lifecycle.preCacheCheck` hook (FileBasedExampleGen's driver) runs first on that input; what
     it writes to the output file (span, fingerprint, input_config, the examples' metadata) is
     merged into the ExecutorInput, and the file stays for the entrypoint, which merges it again.
  3. The container command, with cwd an empty folder and no PYTHONPATH.
  4. executor_output.json gives each output artifact's uri and metadata (the Evaluator's
     `blessed`, the Pusher's `pushed`); it carries no types, so they are re-attached from the spec.
Logs: <task root>/<step>.stdout / .stderr. A failing step raises TaskFailed with its stderr's tail.
Shared with the kfp mode: tests/kfp_tasks.py (reading the file, running one command).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from kfp_backend import KfpBackend, run_root
from kfp_tasks import (TaskFailed, TaskRun, artifact_types, component_and_executor,  # noqa: F401
                       input_parameters, load_spec, run_step, tail, task_order,
                       type_title)

OUTPUT_FILE = "executor_output.json"
VERTEX, KFP = "vertex", "kfp"
MODES = (VERTEX, KFP)


def executor_input(name: str, task: dict, component: dict, runs: Dict[str, TaskRun],
                   task_root: Path, artifact_root: Optional[str] = None) -> dict:
    """The ExecutorInput JSON (as a dict) the backend would give this task: output artifacts
    under `artifact_root` (a URI) when given, else under the local `task_root`."""
    inputs = input_parameters(name, task)
    in_types = artifact_types(component, "inputDefinitions")
    inputs["artifacts"] = {}
    for key, ref in task.get("inputs", {}).get("artifacts", {}).items():
        if "taskOutputArtifact" not in ref:
            raise NotImplementedError(f"{name}: input artifact {key} is not a task output: {ref}")
        producer, out_key = (ref["taskOutputArtifact"][k]
                             for k in ("producerTask", "outputArtifactKey"))
        produced = runs[producer].outputs[out_key]
        inputs["artifacts"][key] = {"artifacts": [dict(a, type=in_types[key]) for a in produced]}
    outputs: dict = {"artifacts": {}, "outputFile": str(task_root / OUTPUT_FILE)}
    for key, artifact_type in artifact_types(component, "outputDefinitions").items():
        if artifact_root:
            uri = f"{artifact_root}/{key}"   # an object store implies the folder
        else:
            uri = task_root / key
            uri.mkdir(parents=True)          # a local path needs it
        outputs["artifacts"][key] = {"artifacts": [{
            "name": f"harness/{task_root.parent.name}/{name}/{key}", "type": artifact_type,
            "uri": str(uri), "metadata": {}}]}
    for key in component.get("outputDefinitions", {}).get("parameters", {}):
        outputs.setdefault("parameters", {})[key] = {"outputFile": str(task_root / "params" / key)}
    return {"inputs": inputs, "outputs": outputs}


def read_output_file(name: str, step: str, output_file: Path) -> dict:
    if not output_file.exists():
        raise TaskFailed(f"task {name!r}, step {step}, exited 0 but wrote no {output_file}; "
                         f"stderr tail:\n{tail(output_file.parent / f'{step}.stderr')}")
    return json.loads(output_file.read_text())


def merge_driver_output(name: str, payload: dict, output_file: Path) -> None:
    """Applies what a preCacheCheck hook wrote: parameters, output artifacts' metadata."""
    written = read_output_file(name, "preCacheCheck", output_file)
    for field in ("parameterValues", "parameters"):
        if written.get(field):
            payload["inputs"].setdefault(field, {}).update(written[field])
    for key, artifacts in written.get("artifacts", {}).items():
        declared = payload["outputs"]["artifacts"][key]["artifacts"]
        for mine, theirs in zip(declared, artifacts.get("artifacts", [])):
            mine["metadata"] = {**mine.get("metadata", {}), **theirs.get("metadata", {})}


def read_outputs(name: str, payload: dict, output_file: Path) -> Dict[str, List[dict]]:
    """The output artifacts, as executor_output.json has them, typed again from the spec."""
    written = read_output_file(name, "executor", output_file).get("artifacts", {})
    outputs = {}
    for key, declared in payload["outputs"]["artifacts"].items():
        got = written.get(key, {}).get("artifacts") or declared["artifacts"]
        outputs[key] = [{"name": d["name"], "type": d["type"], "uri": g.get("uri", d["uri"]),
                         "metadata": g.get("metadata", {})}
                        for d, g in zip(declared["artifacts"], got)]
    return outputs


def host_env(python: str) -> Dict[str, str]:
    """The Vertex mode's task environment: this process's, without PYTHONPATH or a user site,
    the image's python first."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                        "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PATH"] = os.path.dirname(os.path.abspath(python)) + os.pathsep + env.get("PATH", "")
    return env


def run_task(name: str, task: dict, component: dict, executor: dict, runs: Dict[str, TaskRun],
             task_root: Path, python: str, artifact_root: Optional[str] = None) -> TaskRun:
    """One task as Vertex feeds it (the module docstring's steps)."""
    run = TaskRun(name)
    if "resolver" in executor:   # emulated: nothing resolved, as on a first run
        run.resolver = True
        run.outputs = {k: [] for k in artifact_types(component, "outputDefinitions")}
        return run
    if "container" not in executor:
        raise NotImplementedError(f"{name}: executor kind {sorted(executor)} is not supported")
    container = executor["container"]
    task_root.mkdir(parents=True)
    payload = executor_input(name, task, component, runs, task_root, artifact_root)
    output_file = Path(payload["outputs"]["outputFile"])
    env, cwd = host_env(python), task_root / ".cwd"
    hook = container.get("lifecycle", {}).get("preCacheCheck")
    if hook:
        run.steps["preCacheCheck"] = run_step(name, "preCacheCheck", hook.get("command", []),
                                              hook.get("args", []), payload, python, task_root,
                                              env, cwd)
        merge_driver_output(name, payload, output_file)
    run.steps["executor"] = run_step(name, "executor", container.get("command", []),
                                     container.get("args", []), payload, python, task_root,
                                     env, cwd)
    run.outputs = read_outputs(name, payload, output_file)
    return run


def _vertex_task_runner(spec: dict, runtime_config: dict, compiled, python: str,
                        root: Optional[str], run_id: str, local_root: Optional[str]):
    root = root or runtime_config.get("gcsOutputDirectory") or spec.get("defaultPipelineRoot")
    if not root:
        raise ValueError(f"{compiled} names no pipeline root: give one")
    run_path = f"{spec['pipelineInfo']['name']}/{run_id}"
    if "://" in root:
        artifact_run_root: Optional[str] = f"{root.rstrip('/')}/{run_path}"
        run_dir = Path(local_root or tempfile.mkdtemp(prefix="kfp_harness_")) / run_path
    else:
        artifact_run_root, run_dir = None, Path(root) / run_path

    def run(name, task, component, executor, runs):
        return run_task(name, task, component, executor, runs, run_dir / name, python,
                        f"{artifact_run_root}/{name}" if artifact_run_root else None)
    return run


def run_pipeline(compiled, python: str, root: Optional[str] = None, run_id: Optional[str] = None,
                 log: Callable[[str], None] = print, local_root: Optional[str] = None,
                 mode: str = VERTEX, **kfp_options) -> Dict[str, TaskRun]:
    """Runs every task of a compiled file; returns {task: TaskRun} in the order run. On a
    failing task, raises TaskFailed (the tasks run so far are in its `runs`).

    vertex: artifacts under <root>/<pipeline name>/<run id>/<task>/<output key>; root defaults to
      the file's runtimeConfig.gcsOutputDirectory or defaultPipelineRoot. With a root in object
      storage (s3://, gs://), what a launcher keeps on the pod's disk (executor_output.json,
      logs) goes under `local_root` (a new temp folder by default).
    kfp: as open-source KFP 2.x runs it (tests/kfp_backend.py): `root` is the run's pipeline
      root (None: the kfp-launcher config's, else KFP's minio:// default); each task's pod disk
      is a folder under `local_root`; kfp_options are KfpBackend's publish_logs,
      launcher_config (the kfp-launcher ConfigMap's data), secrets ({name: {key: value}}) and
      env (variables every pod gets, e.g. credentials). A local root stands for a volume
      mounted at the same path in every pod.
    """
    spec, runtime_config = load_spec(compiled)
    run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S")
    if mode == KFP:
        backend = KfpBackend(
            python, spec["pipelineInfo"]["name"],
            run_root(root, kfp_options.get("launcher_config"), spec["pipelineInfo"]["name"],
                     run_id),
            Path(local_root or tempfile.mkdtemp(prefix="kfp_pods_")) / run_id, **kfp_options)
        run_one = backend.run_task
    elif mode == VERTEX and not kfp_options:
        run_one = _vertex_task_runner(spec, runtime_config, compiled, python, root, run_id,
                                      local_root)
    else:
        raise ValueError(f"mode {mode!r} with options {sorted(kfp_options)}: modes are "
                         f"{MODES}, options only for {KFP!r}")
    tasks = spec["root"]["dag"]["tasks"]
    runs: Dict[str, TaskRun] = {}
    for name in task_order(tasks):
        component, executor = component_and_executor(spec, name)
        try:
            runs[name] = run_one(name, tasks[name], component, executor, runs)
        except TaskFailed as failure:
            failure.runs = dict(runs)
            failure.task = name
            raise
        log(f"{name}: " + ("resolver, emulated: nothing resolved" if runs[name].resolver else
                           ", ".join(f"{s} {t:.1f} s" for s, t in runs[name].steps.items())))
    return runs


def produced_of_type(runs: Dict[str, TaskRun], title: str) -> List[Tuple[str, str, dict]]:
    """(task, output key, artifact) of every artifact of that type a container task produced."""
    return [(run.name, key, artifact) for run in runs.values() if not run.resolver
            for key, artifacts in run.outputs.items() for artifact in artifacts
            if type_title(artifact["type"]) == title]


def format_timings(runs: Dict[str, TaskRun]) -> str:
    width = max(len(n) for n in runs)
    lines = [f"  {n:<{width}}  " + ("resolver (emulated)" if r.resolver else
             f"{r.seconds:6.1f} s  ({', '.join(f'{s} {t:.1f} s' for s, t in r.steps.items())})")
             for n, r in runs.items()]
    total = sum(r.seconds for r in runs.values())
    return "\n".join(["Per-task times:", *lines, f"  {'total':<{width}}  {total:6.1f} s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("compiled", help="the compiled file: a Vertex PipelineJob JSON or a "
                                    "PipelineSpec (.json, .yaml)")
    p.add_argument("--python", default=sys.executable,
                   help="the interpreter standing in for the image (default: this one)")
    p.add_argument("--root", help="pipeline root for the artifacts (default: the file's)")
    p.add_argument("--run_id", help="folder name of this run under <root>/<pipeline name>")
    p.add_argument("--mode", choices=MODES, default=VERTEX,
                   help="feed the tasks as Vertex does or as open-source KFP 2.x does")
    args = p.parse_args(argv)
    try:
        runs = run_pipeline(args.compiled, args.python, args.root, args.run_id, mode=args.mode)
    except TaskFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print(format_timings(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
