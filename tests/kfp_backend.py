"""What open-source Kubeflow Pipelines 2.x does around each task, for the `kfp` mode of
tests/kfp_ir_harness.py. Read from kubeflow/pipelines, backend/src/v2 (tag 2.17.0; the same in
the releases noted); each step names the file and function it follows.

- The run's root: the run's `pipeline_root`, else the kfp-launcher ConfigMap's
  `defaultPipelineRoot`, else "minio://mlpipeline/v2/artifacts" (driver/root_dag.go,
  RootDAG; config/env.go, DefaultPipelineRoot). The spec's own `defaultPipelineRoot` is not read
  by the backend (only the UI pre-fills its run form with it). Under it, <pipeline>/<run id>
  (metadata/client.go, GetPipeline). KFP takes only gs://, s3:// and minio:// roots
  (objectstore/config.go, ParseBucketPathToConfig); this stand-in also takes a local path, as a
  volume mounted at the same place in every pod, so that a test can run without an S3 server.
- Outputs (driver/driver.go, provisionOutputs): each declared output named by its key, at
  <root>/<task>/<uuid>/<key>; with PUBLISH_LOGS="true" (the manifests' default from 2.5.0) one
  more, `executor-logs`, typed system.Artifact. The output file is
  LocalPathForURI(<root>/<task>/<uuid>)/output_metadata.json (from 2.15.0; before, and for roots
  it cannot map, /tmp/kfp_outputs/output_metadata.json).
- Inputs (driver/resolve.go, resolveUpstreamArtifacts; metadata/client.go,
  GetOutputArtifactsByExecutionId and OutputArtifact.ToRuntimeArtifact; metadata/converter.go,
  toRuntimeArtifact): the producer's recorded artifact, named by its ML Metadata id, its metadata
  as recorded, and the type `instanceSchema: ""`. Parameters: the constants, plus defaults
  (component/launcher_v2.go, addDefaultParams).
- No lifecycle hooks: nothing in backend/src runs `preCacheCheck`.
- The launcher (component/launcher_v2.go, execute): downloads every input artifact with a
  known scheme into its local path (downloadArtifacts, objectstore DownloadBlob, using the
  kfp-launcher `providers.s3.default` settings: config/s3.go, objectstore createS3BucketSession),
  creates the output folders' parents (prepareOutputFolders), runs the command with the task's
  log going to the `executor-logs` file (getLogWriter), reads the output file
  (getExecutorOutputFile), merges it over the provisioned outputs (mergeRuntimeArtifacts),
  uploads local output folders that exist (uploadOutputArtifacts, UploadBlob) and records each
  output (metadata/client.go RecordArtifact: metadata through StructValueToMLMDValue, plus
  `display_name` and `store_session_info`).
- The pod (compiler/argocompiler/common.go, commonEnvs): the image's environment plus
  KFP_POD_NAME and KFP_POD_UID; `/s3`, `/gcs`, `/minio` are empty scratch mounts. Here: PATH to
  the image's python, a fresh HOME, and only the extra variables a test names (credentials).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import kfp_tasks as spec_io
from kfp_tasks import TaskFailed, TaskRun

MINIO_DEFAULT_ROOT = "minio://mlpipeline/v2/artifacts"
EXECUTOR_LOGS = "executor-logs"
LEGACY_OUTPUT_FILE = "tmp/kfp_outputs/output_metadata.json"   # under the pod's disk
LOCAL_MOUNTS = {"gs://": "gcs", "minio://": "minio", "s3://": "s3"}   # LocalPathForURI


def run_root(pipeline_root: Optional[str], launcher_config: Optional[dict], pipeline: str,
             run_id: str) -> str:
    root = (pipeline_root or (launcher_config or {}).get("defaultPipelineRoot")
            or MINIO_DEFAULT_ROOT)
    return f"{root.rstrip('/')}/{pipeline}/{run_id}"


def local_path_for_uri(uri: str, pod_disk: Path) -> Optional[Path]:
    """Where the launcher keeps a URI on the pod's disk (None: a scheme it does not map)."""
    for scheme, mount in LOCAL_MOUNTS.items():
        if uri.startswith(scheme):
            return pod_disk / mount / uri[len(scheme):]
    return None


def mlmd_value(key: str, value):
    """A metadata value as StructValueToMLMDValue records it; None (null) is refused there."""
    if value is None:
        raise TaskFailed(f"KFP's launcher cannot record metadata {key!r}: null is unsupported "
                         "(metadata/converter.go, StructValueToMLMDValue)")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return {"list": value}
    if isinstance(value, dict):
        return {"struct": value}
    return value


def s3_client(launcher_config: Optional[dict], secrets: Dict[str, Dict[str, str]]):
    """The launcher's S3 client from the kfp-launcher ConfigMap's `providers` (None without it:
    then KFP's launcher only knows the standard AWS environment)."""
    if not launcher_config or "providers" not in launcher_config:
        return None
    import boto3
    import yaml
    from botocore.config import Config
    default = yaml.safe_load(launcher_config["providers"])["s3"]["default"]
    endpoint = default["endpoint"]
    if "://" not in endpoint:
        endpoint = ("http://" if default.get("disableSSL") else "https://") + endpoint
    ref = default["credentials"]["secretRef"]
    secret = secrets[ref["secretName"]]
    style = "path" if default.get("forcePathStyle", True) else "virtual"
    return boto3.client("s3", endpoint_url=endpoint, region_name=default.get("region"),
                        aws_access_key_id=secret[ref["accessKeyKey"]],
                        aws_secret_access_key=secret[ref["secretKeyKey"]],
                        config=Config(s3={"addressing_style": style}))


def _bucket_key(uri: str):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key.rstrip("/")


@dataclasses.dataclass
class KfpBackend:
    """Runs tasks as KFP's driver and launcher would; `records` is its ML Metadata."""
    python: str
    pipeline: str
    root: str                       # <pipeline root>/<pipeline>/<run id>
    local_root: Path                # the pods' disks, one folder per task
    publish_logs: bool = True
    launcher_config: Optional[dict] = None
    secrets: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    records: Dict[int, dict] = dataclasses.field(default_factory=dict)
    _ids: "itertools.count" = dataclasses.field(default_factory=lambda: itertools.count(1))
    _s3: object = None   # the launcher's S3 client, made on the first transfer

    def launcher_s3(self):
        if self._s3 is None:
            self._s3 = s3_client(self.launcher_config, self.secrets)
        return self._s3

    def pod_env(self, pod_disk: Path, task: str) -> Dict[str, str]:
        home = pod_disk / "home"
        home.mkdir(parents=True, exist_ok=True)
        pod = f"{self.pipeline}-{task}".lower().replace("_", "-")
        return {"PATH": os.path.dirname(os.path.abspath(self.python)) + ":/usr/bin:/bin",
                "HOME": str(home), "HOSTNAME": pod, "KFP_POD_NAME": pod,
                "KFP_POD_UID": str(uuid.uuid4()), "LANG": "C.UTF-8", **self.env}

    def provision_outputs(self, task: str, component: dict, pod_disk: Path) -> dict:
        task_root = f"{self.root}/{task}/{uuid.uuid4()}"
        declared = spec_io.artifact_types(component, "outputDefinitions")
        if self.publish_logs:
            declared[EXECUTOR_LOGS] = {"schemaTitle": "system.Artifact"}
        outputs: dict = {"artifacts": {key: {"artifacts": [
            {"name": key, "uri": f"{task_root}/{key}", "type": artifact_type}]}
            for key, artifact_type in declared.items()}}
        params = component.get("outputDefinitions", {}).get("parameters", {})
        if params:
            outputs["parameters"] = {key: {"outputFile": str(pod_disk / "tmp/kfp/outputs" / key)}
                                     for key in params}
        local_task_root = local_path_for_uri(task_root, pod_disk)
        outputs["outputFile"] = str(local_task_root / "output_metadata.json"
                                    if local_task_root else pod_disk / LEGACY_OUTPUT_FILE)
        return outputs

    def resolve_inputs(self, name: str, task: dict, component: dict,
                       runs: Dict[str, TaskRun]) -> dict:
        inputs = spec_io.input_parameters(name, task)
        if "parameters" in inputs:   # schema 2.0's constantValue: KFP's driver refuses it
            raise TaskFailed(f"{name}: KFP's driver does not implement parameter runtime value "
                             "spec constantValue (schema 2.0); compile with --target kfp")
        values = inputs.setdefault("parameterValues", {})
        for key, param in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if key not in values and "defaultValue" in param:
                values[key] = param["defaultValue"]
        inputs["artifacts"] = {}
        for key, ref in task.get("inputs", {}).get("artifacts", {}).items():
            producer = ref["taskOutputArtifact"]["producerTask"]
            out_key = ref["taskOutputArtifact"]["outputArtifactKey"]
            inputs["artifacts"][key] = {"artifacts": [
                self.as_input(int(a["name"])) for a in runs[producer].outputs[out_key]]}
        return inputs

    def as_input(self, record_id: int) -> dict:
        record = self.records[record_id]
        return {"name": str(record_id), "uri": record["uri"],
                "metadata": dict(record["custom_properties"]), "type": {"instanceSchema": ""}}

    def record(self, key: str, artifact: dict) -> int:
        custom = {k: mlmd_value(k, v) for k, v in artifact.get("metadata", {}).items()}
        custom.setdefault("display_name", key)
        custom.setdefault("store_session_info", json.dumps(
            {"Provider": "s3" if self.launcher_config else "minio", "Params": {}}))
        record_id = next(self._ids)
        self.records[record_id] = {"uri": artifact["uri"], "type": artifact["type"],
                                   "custom_properties": custom}
        return record_id

    def transfer(self, name: str, uri: str, local: Path, direction: str) -> None:
        """The launcher's DownloadBlob (every object under the prefix) or UploadBlob."""
        if not uri.startswith("s3://"):
            return   # gs:// and minio:// are not exercised here
        client = self.launcher_s3()
        if client is None:
            raise TaskFailed(
                f"task {name!r}: KFP's launcher must {direction} {uri} with its own S3 client, and "
                "without a kfp-launcher ConfigMap (providers.s3.default) it knows only the "
                "standard AWS environment: AWS's endpoint, not an S3-compatible server's "
                "(docs/deploy.md)")
        bucket, key = _bucket_key(uri)
        if direction == "download":
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            for obj in (o for page in pages for o in page.get("Contents", [])):
                if obj["Key"] == key or obj["Key"].startswith(key + "/"):
                    target = local / os.path.relpath(obj["Key"], key) if obj["Key"] != key \
                        else local
                    target.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, obj["Key"], str(target))
        elif local.is_file():
            client.upload_file(str(local), bucket, key)
        else:
            for path in (p for p in local.rglob("*") if p.is_file()):
                client.upload_file(str(path), bucket, f"{key}/{path.relative_to(local)}")

    def run_task(self, name: str, task: dict, component: dict, executor: dict,
                 runs: Dict[str, TaskRun]) -> TaskRun:
        if "container" not in executor:
            raise TaskFailed(f"{name}: KFP's compiler rejects {sorted(executor)} executors "
                             "(compiler/visitor.go: resolver executors not implemented)")
        container, run = executor["container"], TaskRun(name)
        pod_disk = self.local_root / name
        pod_disk.mkdir(parents=True)
        payload = {"inputs": self.resolve_inputs(name, task, component, runs),
                   "outputs": self.provision_outputs(name, component, pod_disk)}
        for key, artifact_list in payload["inputs"]["artifacts"].items():
            for artifact in artifact_list["artifacts"]:
                local = local_path_for_uri(artifact["uri"], pod_disk)
                if local is not None:
                    self.transfer(name, artifact["uri"], local, "download")
        output_file = Path(payload["outputs"]["outputFile"])
        output_file.parent.mkdir(parents=True, exist_ok=True)
        for artifact_list in payload["outputs"]["artifacts"].values():
            local = local_path_for_uri(artifact_list["artifacts"][0]["uri"], pod_disk)
            if local is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
        try:
            run.steps["executor"] = spec_io.run_step(
                name, "executor", container.get("command", []), container.get("args", []),
                payload, self.python, pod_disk, self.pod_env(pod_disk, name), pod_disk / "cwd")
        finally:
            self.write_log(payload, pod_disk)
        written = json.loads(output_file.read_text()) if output_file.exists() else {}
        run.outputs = self.upload_and_record(name, payload, written, pod_disk)
        return run

    def write_log(self, payload: dict, pod_disk: Path) -> None:
        """The executor-logs file (getLogWriter: the task's stdout and stderr)."""
        logs = payload["outputs"]["artifacts"].get(EXECUTOR_LOGS)
        local = logs and local_path_for_uri(logs["artifacts"][0]["uri"], pod_disk)
        if local:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(b"".join((pod_disk / f"executor.{s}").read_bytes()
                                       for s in ("stdout", "stderr")
                                       if (pod_disk / f"executor.{s}").exists()))

    def upload_and_record(self, name: str, payload: dict, written: dict,
                          pod_disk: Path) -> Dict[str, List[dict]]:
        """Each output as recorded in ML Metadata (a log that was never written is not)."""
        recorded: Dict[str, List[dict]] = {}
        for key, artifact_list in payload["outputs"]["artifacts"].items():
            artifact = dict(artifact_list["artifacts"][0], metadata={})
            got = (written.get("artifacts", {}).get(key, {}).get("artifacts") or [{}])[0]
            if key != EXECUTOR_LOGS:   # mergeRuntimeArtifacts
                artifact["uri"] = got.get("uri") or artifact["uri"]
                artifact["metadata"].update(got.get("metadata", {}))
            local = local_path_for_uri(artifact["uri"], pod_disk)
            if local is not None and local.exists():
                self.transfer(name, artifact["uri"], local, "upload")
            elif key == EXECUTOR_LOGS:
                continue
            recorded[key] = [self.artifact(self.record(key, artifact))]
        return recorded

    def artifact(self, record_id: int) -> dict:
        """A recorded artifact as the harness reports outputs: uri, type, metadata."""
        record = self.records[record_id]
        return {"name": str(record_id), "uri": record["uri"], "type": record["type"],
                "metadata": dict(record["custom_properties"])}
