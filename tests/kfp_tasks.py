"""Reading a compiled KFP pipeline file and running one container command of it: what both
feeding modes of tests/kfp_ir_harness.py share (the Vertex-like one there, the KFP backend's in
tests/kfp_backend.py)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

from components.kfp_executor_input import type_title  # noqa: F401 - the harness's too

PLACEHOLDER = "{{$}}"
STDERR_TAIL_CHARS = 6000


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


def tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no stderr file)"
    return text[-chars:]


def run_step(name: str, step: str, command: List[str], args: List[str], payload: dict,
             python: str, task_root: Path, env: Dict[str, str], cwd: Path) -> float:
    """Runs one container command with the ExecutorInput in place of `{{$}}`; returns seconds."""
    if not command:
        raise NotImplementedError(f"{name} ({step}): no command (an image entrypoint is assumed)")
    text = json.dumps(payload)
    argv = [python if i == 0 and c in ("python", "python3") else c for i, c in enumerate(command)]
    argv += [a.replace(PLACEHOLDER, text) for a in args]
    left = [a for a in command + args if "{{$" in a and a != PLACEHOLDER]
    if left:
        raise NotImplementedError(f"{name} ({step}): placeholders other than {PLACEHOLDER}: {left}")
    cwd.mkdir(parents=True, exist_ok=True)
    out, err = task_root / f"{step}.stdout", task_root / f"{step}.stderr"
    start = time.perf_counter()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        code = subprocess.call(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
    seconds = time.perf_counter() - start
    if code != 0:
        raise TaskFailed(f"task {name!r}, step {step}, exited {code} after {seconds:.0f} s "
                         f"(logs: {err}); stderr tail:\n{tail(err)}")
    return seconds
