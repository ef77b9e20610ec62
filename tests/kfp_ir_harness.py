"""Executes a compiled KFP v2 pipeline file (TFX's KubeflowV2DagRunner output) without a cluster.

A test helper for our compiled file, not an orchestrator: every task's container command runs as
a subprocess of a given Python (standing in for the image), in dependency order, fed the way the
KFP / Vertex backends feed TFX's container entrypoint
(tfx/orchestration/kubeflow/v2/container/kubeflow_v2_run_executor.py). No caching, no MLMD, no
retries, one container per task; resolvers return nothing (what a first run gets).

    python tests/kfp_ir_harness.py compiled.json --python VENV/bin/python --root DIR

Per task:
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
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

PLACEHOLDER = "{{$}}"
STDERR_TAIL_CHARS = 6000
OUTPUT_FILE = "executor_output.json"


class TaskFailed(AssertionError):
    """A task's step exited non-zero or did not write what the backend expects."""


@dataclasses.dataclass
class TaskRun:
    name: str
    resolver: bool = False
    steps: Dict[str, float] = dataclasses.field(default_factory=dict)   # step -> seconds
    outputs: Dict[str, List[dict]] = dataclasses.field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.steps.values())


def load_spec(path) -> Tuple[dict, dict]:
    """(PipelineSpec, runtimeConfig) of a Vertex PipelineJob wrapper or of a bare PipelineSpec."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml
        doc = yaml.safe_load(text)
    else:
        doc = json.loads(text)
    if "pipelineSpec" in doc:
        return doc["pipelineSpec"], doc.get("runtimeConfig", {})
    return doc, {}


def component_and_executor(spec: dict, task_name: str) -> Tuple[dict, dict]:
    component = spec["components"][spec["root"]["dag"]["tasks"][task_name]["componentRef"]["name"]]
    return component, spec["deploymentSpec"]["executors"][component["executorLabel"]]


def upstream(task: dict) -> Set[str]:
    """The tasks this one waits for: `dependentTasks` and the producers of its input artifacts."""
    deps = set(task.get("dependentTasks", []))
    for ref in task.get("inputs", {}).get("artifacts", {}).values():
        if "taskOutputArtifact" in ref:
            deps.add(ref["taskOutputArtifact"]["producerTask"])
    return deps


def task_order(tasks: Dict[str, dict]) -> List[str]:
    """Task names in dependency order (ties by name, so runs repeat)."""
    order: List[str] = []
    pending = dict(tasks)
    while pending:
        ready = sorted(n for n, t in pending.items() if upstream(t) <= set(order))
        if not ready:
            waiting = {n: sorted(upstream(t) - set(order)) for n, t in pending.items()}
            raise ValueError(f"tasks wait on a cycle or an unknown task: {waiting}")
        order += ready
        for name in ready:
            del pending[name]
    return order


def artifact_types(component: dict, side: str) -> Dict[str, dict]:
    """{key: artifactType} of a component's inputDefinitions or outputDefinitions."""
    return {k: v["artifactType"]
            for k, v in component.get(side, {}).get("artifacts", {}).items()}


def type_title(artifact_type: dict) -> str:
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    match = re.search(r"^title:\s*(\S+)", artifact_type.get("instanceSchema", ""), re.M)
    return match.group(1) if match else ""


def input_parameters(name: str, task: dict) -> Dict[str, dict]:
    """`parameters` (schema 2.0, from constantValue) and `parameterValues` (2.1, from constant)."""
    result: Dict[str, dict] = {}
    for key, param in task.get("inputs", {}).get("parameters", {}).items():
        value = param.get("runtimeValue", {})
        if "constant" in value:
            result.setdefault("parameterValues", {})[key] = value["constant"]
        elif "constantValue" in value:
            result.setdefault("parameters", {})[key] = value["constantValue"]
        else:
            raise NotImplementedError(f"{name}: parameter {key} is not a constant: {param}")
    return result


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


def task_env(python: str) -> Dict[str, str]:
    """The environment of a container: no PYTHONPATH or user site, the image's python first."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                        "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PATH"] = os.path.dirname(os.path.abspath(python)) + os.pathsep + env.get("PATH", "")
    return env


def tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no stderr file)"
    return text[-chars:]


def run_step(name: str, step: str, command: List[str], args: List[str], payload: dict,
             python: str, task_root: Path) -> float:
    """Runs one container command with the ExecutorInput in place of `{{$}}`; returns seconds."""
    if not command:
        raise NotImplementedError(f"{name} ({step}): no command (an image entrypoint is assumed)")
    text = json.dumps(payload)
    argv = [python if i == 0 and c in ("python", "python3") else c for i, c in enumerate(command)]
    argv += [a.replace(PLACEHOLDER, text) for a in args]
    left = [a for a in command + args if "{{$" in a and a != PLACEHOLDER]
    if left:
        raise NotImplementedError(f"{name} ({step}): placeholders other than {PLACEHOLDER}: {left}")
    cwd = task_root / ".cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    out, err = task_root / f"{step}.stdout", task_root / f"{step}.stderr"
    start = time.perf_counter()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        code = subprocess.call(argv, cwd=cwd, env=task_env(python), stdout=stdout, stderr=stderr)
    seconds = time.perf_counter() - start
    if code != 0:
        raise TaskFailed(f"task {name!r}, step {step}, exited {code} after {seconds:.0f} s "
                         f"(logs: {err}); stderr tail:\n{tail(err)}")
    return seconds


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


def run_task(name: str, task: dict, component: dict, executor: dict, runs: Dict[str, TaskRun],
             task_root: Path, python: str, artifact_root: Optional[str] = None) -> TaskRun:
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
    hook = container.get("lifecycle", {}).get("preCacheCheck")
    if hook:
        run.steps["preCacheCheck"] = run_step(name, "preCacheCheck", hook.get("command", []),
                                              hook.get("args", []), payload, python, task_root)
        merge_driver_output(name, payload, output_file)
    run.steps["executor"] = run_step(name, "executor", container.get("command", []),
                                     container.get("args", []), payload, python, task_root)
    run.outputs = read_outputs(name, payload, output_file)
    return run


def run_pipeline(compiled, python: str, root: Optional[str] = None, run_id: Optional[str] = None,
                 log: Callable[[str], None] = print,
                 local_root: Optional[str] = None) -> Dict[str, TaskRun]:
    """Runs every task of a compiled file; returns {task: TaskRun} in the order run. Artifacts
    land under <root>/<pipeline name>/<run id>/<task>/<output key>; root defaults to the file's
    runtimeConfig.gcsOutputDirectory (Vertex) or defaultPipelineRoot. With a root in object
    storage (s3://, gs://), what a launcher keeps on the pod's disk (executor_output.json,
    logs, output parameters) goes under `local_root` (a new temp folder by default)."""
    spec, runtime_config = load_spec(compiled)
    root = root or runtime_config.get("gcsOutputDirectory") or spec.get("defaultPipelineRoot")
    if not root:
        raise ValueError(f"{compiled} names no pipeline root: give one")
    run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S")
    if "://" in root:
        run_path = f"{spec['pipelineInfo']['name']}/{run_id}"
        artifact_run_root: Optional[str] = f"{root.rstrip('/')}/{run_path}"
        run_root = Path(local_root or tempfile.mkdtemp(prefix="kfp_harness_")) / run_path
    else:
        artifact_run_root = None
        run_root = Path(root) / spec["pipelineInfo"]["name"] / run_id
    tasks = spec["root"]["dag"]["tasks"]
    runs: Dict[str, TaskRun] = {}
    for name in task_order(tasks):
        component, executor = component_and_executor(spec, name)
        runs[name] = run_task(name, tasks[name], component, executor, runs, run_root / name, python,
                              f"{artifact_run_root}/{name}" if artifact_run_root else None)
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
    args = p.parse_args(argv)
    try:
        runs = run_pipeline(args.compiled, args.python, args.root, args.run_id)
    except TaskFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print(format_timings(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
