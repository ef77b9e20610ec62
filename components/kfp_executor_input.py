"""Makes the ExecutorInput that open-source Kubeflow Pipelines 2.x sends readable by TFX 1.16's
container entrypoint (tfx/orchestration/kubeflow/v2/container/kubeflow_v2_run_executor.py), which
was written for what Vertex AI sends. components/task_entrypoint.py applies it to the arguments
of every task before TFX parses them. What KFP's backend (kubeflow/pipelines, backend/src/v2)
sends differently, and what is done about it:

1. An output TFX did not declare. With PUBLISH_LOGS="true" (the install manifests' default from
   KFP 2.5.0) `provisionOutputs` in driver/driver.go adds an `executor-logs` output typed
   `system.Artifact`; TFX imports every output's type by name and stops with "ImportError: Could
   not import system.Artifact". KFP's launcher writes that artifact itself (the task's log), so
   outputs the component does not declare are dropped from what TFX sees.
2. Upstream artifacts without a type. `GetOutputArtifactsByExecutionId` in metadata/client.go
   leaves the schema empty ("TODO(Bobgy): figure out how to get schema") and
   `OutputArtifact.ToRuntimeArtifact` sends it as `instanceSchema: ""`; TFX reads the title of
   that schema and fails ("'NoneType' object has no attribute 'get'"). The type comes back from
   the component's own input definitions, which every pipeline-spec-2.1 task carries in
   --json_serialized_inputs_spec_args.
3. Metadata changed by KFP's ML Metadata round trip. The launcher records an output's metadata as
   MLMD custom properties (`StructValueToMLMDValue`, metadata/converter.go): a list becomes the
   struct {"list": [...]}, a struct {"struct": {...}}, and `RecordArtifact` adds `display_name`
   and `store_session_info`. The wrappers are taken off again and KFP's bookkeeping keys dropped,
   so an input artifact reads as its producer wrote it (booleans stay numbers 0/1, which TFX
   reads as it reads its own integer flags).

Nothing is changed for an input that already reads correctly (Vertex's), and each change is
reported in one line, so a task's log says what was adapted.
"""
from __future__ import annotations

import json
import re
from typing import Collection, List, Optional, Sequence, Tuple

INVOCATION_FLAG = "--json_serialized_invocation_args"
INPUTS_SPEC_FLAG = "--json_serialized_inputs_spec_args"
# Ours, before TFX's module in every compiled task command: the component's output keys.
OUTPUTS_FLAG = "--outputs"
# Keys KFP's launcher adds to every artifact it records (metadata/client.go, RecordArtifact) or
# uses for itself at run time (component/launcher_v2.go, `_kfp_workspace`).
KFP_BOOKKEEPING_KEYS = ("display_name", "store_session_info", "_kfp_workspace")
# StructValueToMLMDValue's wrappers: the key and the JSON kind it wraps.
MLMD_WRAPPERS = {"list": list, "struct": dict}


class ExecutorInputError(ValueError):
    """The task's arguments cannot be made readable; the message says which part and why."""


def flag_value(argv: Sequence[str], flag: str) -> Tuple[Optional[int], Optional[str]]:
    """(index of the argument that holds the value, the value) of `flag V` or `flag=V`."""
    for i, arg in enumerate(argv):
        if arg == flag:
            if i + 1 >= len(argv):
                raise ExecutorInputError(f"{flag} has no value")
            return i + 1, argv[i + 1]
        if arg.startswith(flag + "="):
            return i, arg[len(flag) + 1:]
    return None, None


def type_title(artifact_type: Optional[dict]) -> str:
    """The schema title of an ArtifactTypeSchema as JSON ('' when it names none)."""
    if not artifact_type:
        return ""
    if artifact_type.get("schemaTitle"):
        return artifact_type["schemaTitle"]
    match = re.search(r"^title:\s*(\S+)", artifact_type.get("instanceSchema") or "", re.M)
    return match.group(1) if match else ""


def _unwrapped(value):
    """A metadata value as its producer wrote it, without the MLMD round trip's wrapper."""
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), = value.items()
        if isinstance(inner, MLMD_WRAPPERS.get(key, ())):
            return inner
    return value


def _readable_metadata(key: str, artifact: dict, changes: List[str]) -> None:
    metadata = artifact.get("metadata")
    if not metadata:
        return
    dropped = sorted(k for k in KFP_BOOKKEEPING_KEYS if k in metadata)
    unwrapped = sorted(k for k, v in metadata.items() if _unwrapped(v) is not v)
    artifact["metadata"] = {k: _unwrapped(v) for k, v in metadata.items()
                            if k not in KFP_BOOKKEEPING_KEYS}
    if dropped:
        changes.append(f"input {key!r}: dropped KFP's metadata {', '.join(dropped)}")
    if unwrapped:
        changes.append(f"input {key!r}: unwrapped ML Metadata's list/struct wrapper of "
                       f"{', '.join(unwrapped)}")


def _typed_inputs(executor_input: dict, inputs_spec: Optional[dict],
                  changes: List[str]) -> None:
    declared = {k: v.get("artifactType") for k, v in
                (inputs_spec or {}).get("artifacts", {}).items()}
    for key, artifact_list in executor_input.get("inputs", {}).get("artifacts", {}).items():
        for artifact in artifact_list.get("artifacts", []):
            _readable_metadata(key, artifact, changes)
            if type_title(artifact.get("type")):
                continue
            if not type_title(declared.get(key)):
                raise ExecutorInputError(
                    f"input artifact {key!r} (uri {artifact.get('uri')!r}) arrived without a "
                    f"type, and {INPUTS_SPEC_FLAG} declares none for it: compile the pipeline "
                    "with pipeline spec 2.1 (kubeflow_runner.py --target kfp)")
            artifact["type"] = declared[key]
            changes.append(f"input {key!r}: type {type_title(declared[key])} from the "
                           "component's input definitions (KFP sent none)")


def _declared_outputs_only(executor_input: dict, declared_outputs: Collection[str],
                           changes: List[str]) -> None:
    outputs = executor_input.get("outputs", {}).get("artifacts", {})
    for key in sorted(set(outputs) - set(declared_outputs)):
        artifacts = outputs.pop(key).get("artifacts") or [{}]
        title = type_title(artifacts[0].get("type")) or "no type"
        changes.append(f"output {key!r} ({title}) dropped: the component does not declare it "
                       "(KFP's launcher adds it and writes it itself)")


def readable_executor_input(executor_input: dict, inputs_spec: Optional[dict] = None,
                            declared_outputs: Optional[Collection[str]] = None
                            ) -> Tuple[dict, List[str]]:
    """(the ExecutorInput TFX can read, one line per change made) of an ExecutorInput as a dict
    (changed in place). `declared_outputs`: the component's output keys; None keeps them all."""
    changes: List[str] = []
    if declared_outputs is not None:
        _declared_outputs_only(executor_input, declared_outputs, changes)
    _typed_inputs(executor_input, inputs_spec, changes)
    return executor_input, changes


def _parsed(flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExecutorInputError(f"{flag} is not JSON ({error}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ExecutorInputError(f"{flag} is not a JSON object: {text[:200]!r}")
    return value


def readable_args(args: Sequence[str], declared_outputs: Optional[Collection[str]] = None
                  ) -> Tuple[List[str], List[str]]:
    """(TFX's entrypoint arguments with a readable ExecutorInput, the changes made). Arguments
    without an ExecutorInput come back as they are."""
    args = list(args)
    index, text = flag_value(args, INVOCATION_FLAG)
    if index is None:
        return args, []
    _, spec_text = flag_value(args, INPUTS_SPEC_FLAG)
    inputs_spec = _parsed(INPUTS_SPEC_FLAG, spec_text) if spec_text else None
    executor_input, changes = readable_executor_input(
        _parsed(INVOCATION_FLAG, text), inputs_spec, declared_outputs)
    if changes:
        value = json.dumps(executor_input)
        args[index] = value if args[index] == text else f"{INVOCATION_FLAG}={value}"
    return args, changes


def outputs_flag(keys: Sequence[str]) -> str:
    """The task entrypoint's argument that declares a component's output keys."""
    return f"{OUTPUTS_FLAG}={','.join(keys)}"


def parse_outputs_flag(value: str) -> List[str]:
    return [key for key in value.split(",") if key]

