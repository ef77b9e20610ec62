"""kubeflow_runner.py compiles the pipeline for open-source Kubeflow Pipelines 2.x and for Vertex,
offline: each file parses strictly as a KFP pipeline spec, every task runs in the given image,
every class and module a task will import exists in this package, and nothing points at this
machine. No cluster is involved."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

import kubeflow_runner
from components.kfp_executor_input import outputs_flag
from pipeline import kubeflow_target as kt
from schema import schema_sha256
from test_layers import LAYERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "registry.example/unet3plus-tfx:test"
ROOTS = ["--pipeline_root", "s3://b/root", "--data_root", "s3://b/lits",
         "--serving_dir", "s3://b/serving"]
RESOURCE_FLAGS = ["--trainer_gpus", "2", "--trainer_cpu", "8", "--trainer_memory", "64",
                  "--beam_cpu", "4", "--beam_memory", "16"]
COMPONENTS = ("NiftiExampleGen", "PackagedSchemaGen", "StatisticsGen", "ExampleValidator",
              "AnomaliesGate", "Transform", "Trainer", "Evaluator", "Pusher", "VolumeEvaluator")
OUR_PACKAGES = tuple(f"{room}." for room in LAYERS)   # the house's rooms (tests/test_layers.py)
# name in the compile fixture -> (target, flags)
VARIANTS = {
    "kfp": ("kfp", RESOURCE_FLAGS + ["--beam_arg=--runner=DataflowRunner"]),
    "kfp_plain": ("kfp", []),
    "vertex": ("vertex", RESOURCE_FLAGS),
    "vertex_plain": ("vertex", []),
    # The settings surface: a variant, a learning rate and a step count from the command line.
    "kfp_settings": ("kfp", ["--set", "model.variant=ds_cgm", "--set", "train.learning_rate=5e-4",
                             "--train_steps", "11"]),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{variant: (document as written, its PipelineSpec dict, file text)}."""
    out_dir = tmp_path_factory.mktemp("compiled")
    result = {}
    for name, (target, flags) in VARIANTS.items():
        out = out_dir / f"{name}.{'yaml' if target == 'kfp' else 'json'}"
        assert kubeflow_runner.main(["--image", IMAGE, *ROOTS, "--target", target,
                                     "--output", str(out), *flags]) == 0
        text = out.read_text()
        document = yaml.safe_load(text)          # YAML and JSON alike
        spec = document if target == "kfp" else document["pipelineSpec"]
        result[name] = (document, spec, text)
    return result


def _executors(spec):
    return spec["deploymentSpec"]["executors"]


def _containers(spec):
    return {name: e["container"] for name, e in _executors(spec).items() if "container" in e}


def _param(spec, task: str, name: str) -> str:
    """A task's constant string parameter, in schema 2.1 or 2.0 form."""
    value = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"][name]["runtimeValue"]
    return value["constant"] if "constant" in value else value["constantValue"]["stringValue"]


def _arg_after(args, flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parses_strictly_as_a_pipeline_spec(compiled, name):
    document, spec, text = compiled[name]
    json_format.Parse(json.dumps(spec), pb.PipelineSpec(), ignore_unknown_fields=False)
    if VARIANTS[name][0] == "kfp":
        assert spec["schemaVersion"] == "2.1.0"
        # The PipelineSpec alone, what kfp.Client().upload_pipeline takes.
        assert "pipelineSpec" not in document and "runtimeConfig" not in document
    else:
        assert spec["schemaVersion"] == "2.0.0"
        json_format.Parse(json.dumps(document), pb.PipelineJob(), ignore_unknown_fields=False)


@pytest.mark.parametrize("name", ["kfp", "vertex"])
def test_compiles_every_component(compiled, name):
    tasks = compiled[name][1]["root"]["dag"]["tasks"]
    for component in COMPONENTS:
        assert component in tasks, (component, sorted(tasks))


def test_kfp_has_no_resolver_and_no_change_threshold(compiled):
    spec = compiled["kfp"][1]
    assert not [n for n, e in _executors(spec).items() if "resolver" in e]
    assert not [t for t in spec["root"]["dag"]["tasks"] if "resolver" in t]
    eval_config = json.loads(_param(spec, "Evaluator", "eval_config"))
    assert "change_threshold" not in json.dumps(eval_config)
    assert "lower_bound" in json.dumps(eval_config)      # the absolute bar still gates


def test_vertex_keeps_the_baseline_resolvers(compiled):
    spec = compiled["vertex"][1]
    resolvers = sorted(n for n, e in _executors(spec).items() if "resolver" in e)
    assert resolvers == ["latest_blessed_model_resolver-model-blessing-resolver_executor",
                         "latest_blessed_model_resolver-model-resolver_executor"]
    assert "change_threshold" in _param(spec, "Evaluator", "eval_config")


@pytest.mark.parametrize("name", ["kfp", "vertex"])
def test_resources_from_flags(compiled, name):
    containers = _containers(compiled[name][1])
    gpu_type = kt.DEFAULT_GPU_TYPE[VARIANTS[name][0]]
    for component in kubeflow_runner.MODEL_COMPONENTS:   # the Trainer and the VolumeEvaluator
        assert containers[f"{component}_executor"]["resources"] == {
            "accelerator": {"count": "2", "type": gpu_type}, "cpuLimit": 8.0,
            "memoryLimit": 64.0}, component
    for component in kubeflow_runner.BEAM_COMPONENTS:
        assert containers[f"{component}_executor"]["resources"] == {
            "cpuLimit": 4.0, "memoryLimit": 16.0}, component
    sized = {n for n, c in containers.items() if "resources" in c}
    assert sized == {f"{c}_executor" for c in (*kubeflow_runner.MODEL_COMPONENTS,
                                               *kubeflow_runner.BEAM_COMPONENTS)}
    assert "VolumeEvaluator_executor" in sized


@pytest.mark.parametrize("name", ["kfp_plain", "vertex_plain"])
def test_no_resources_without_flags(compiled, name):
    assert not [n for n, c in _containers(compiled[name][1]).items() if "resources" in c]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_task_runs_in_the_image(compiled, name):
    containers = _containers(compiled[name][1])
    assert len(containers) == len(COMPONENTS)
    assert {c["image"] for c in containers.values()} == {IMAGE}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_task_command_goes_through_our_entrypoint(compiled, name):
    """Executors and the ExampleGen's driver run TFX's entrypoint through ours, which makes what
    open-source KFP sends readable (tests/test_kfp_executor_input.py) and keeps the task's exit
    status where tensorflow-io's s3:// support would abort the process at exit
    (tests/test_process_exit.py). It is told the component's own outputs, so it can drop the
    ones KFP adds (`executor-logs`)."""
    spec = compiled[name][1]
    declared = {c["executorLabel"]: sorted(c.get("outputDefinitions", {}).get("artifacts", {}))
                for c in spec["components"].values()}
    commands = [(label, hook["command"]) for label, executor in _executors(spec).items()
                if "container" in executor
                for hook in [executor["container"],
                             *executor["container"].get("lifecycle", {}).values()]]
    assert len(commands) == len(COMPONENTS) + 1   # + the ExampleGen's preCacheCheck driver
    for label, command in commands:
        assert command[:3] == ["python", "-m", kt.TASK_ENTRYPOINT], command
        assert command[3] == outputs_flag(declared[label]), (label, command)
        assert len(command) == 5 and command[4].startswith("tfx.orchestration.kubeflow.v2."), \
            command
    assert outputs_flag([]) in dict(commands)["AnomaliesGate_executor"]   # no outputs at all


def _named_imports(spec):
    """(modules, class or function paths) that the tasks of a spec will import."""
    modules, paths = set(), set()
    for container in _containers(spec).values():
        hooks = [container, *container.get("lifecycle", {}).values()]
        for hook in hooks:
            command = hook["command"]
            modules.update(a for a in command[command.index("-m") + 1:]
                           if not a.startswith("--"))   # our entrypoint and TFX's
        if "--executor_class_path" in container["args"]:
            paths.add(_arg_after(container["args"], "--executor_class_path"))
    paths.add(_param(spec, "Transform", "preprocessing_fn"))
    paths.add(_param(spec, "Trainer", "run_fn"))
    eval_config = json.loads(_param(spec, "Evaluator", "eval_config"))
    modules.update(m["module"] for s in eval_config["metrics_specs"] for m in s["metrics"]
                   if m.get("module"))
    return modules, paths | _custom_artifact_classes(spec)


def _custom_artifact_classes(spec):
    """The task entrypoint imports a custom artifact type's class by its schema title."""
    from tfx.orchestration.kubeflow.v2.compiler_utils import TITLE_TO_CLASS_PATH
    titles = set()
    for component in spec["components"].values():
        for direction in ("inputDefinitions", "outputDefinitions"):
            for definition in component.get(direction, {}).get("artifacts", {}).values():
                schema = definition["artifactType"].get("instanceSchema")
                if schema:
                    titles.add(yaml.safe_load(schema)["title"])
    return {t for t in titles if t not in TITLE_TO_CLASS_PATH}


@pytest.mark.parametrize("name", ["kfp", "vertex"])
def test_every_class_and_module_named_is_importable(compiled, name):
    modules, paths = _named_imports(compiled[name][1])
    assert "evaluation.tfma_dice" in modules
    assert [p for p in paths if p.startswith("trainer.")], paths       # run_fn was looked at
    assert "components.VolumeEvaluation" in paths                      # a custom artifact type
    for module in modules:
        importlib.import_module(module)
    for path in paths:
        module, attribute = path.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), attribute), path
        assert path.startswith(("tfx.",) + OUR_PACKAGES), path


@pytest.mark.parametrize("name", ["kfp", "vertex"])
def test_reading_components_use_the_byte_size_batching_executors(compiled, name):
    containers = _containers(compiled[name][1])
    for component in ("StatisticsGen", "Transform", "Evaluator"):
        args = containers[f"{component}_executor"]["args"]
        assert _arg_after(args, "--executor_class_path") == \
            f"components.byte_size_batching.{component}Executor"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_schema_comes_from_the_package_not_this_machine(compiled, name):
    _, spec, text = compiled[name]
    assert REPO not in text
    assert _param(spec, "PackagedSchemaGen", "expected_sha256") == schema_sha256()
    assert "ImportSchemaGen" not in text


@pytest.mark.parametrize("name", ["kfp", "vertex"])
def test_roots_appear_as_given(compiled, name):
    document, spec, _ = compiled[name]
    if VARIANTS[name][0] == "kfp":
        assert spec["defaultPipelineRoot"] == "s3://b/root"
    else:
        assert document["runtimeConfig"]["gcsOutputDirectory"] == "s3://b/root"
    assert _param(spec, "NiftiExampleGen", "input_base") == "s3://b/lits"
    push = json.loads(_param(spec, "Pusher", "push_destination"))
    assert push["filesystem"]["base_directory"] == "s3://b/serving"


def test_dataflow_workers_get_the_image(compiled):
    for name, container in _containers(compiled["kfp"][1]).items():
        assert f"--sdk_container_image={IMAGE}" in container["args"], name
    for name, container in _containers(compiled["kfp_plain"][1]).items():
        assert not [a for a in container["args"] if "container_image" in a], name


@pytest.mark.parametrize("beam_args, added", [
    (["--runner=DataflowRunner", "--project=p"], ["--sdk_container_image=IMG"]),
    (["--runner", "dataflow"], ["--sdk_container_image=IMG"]),
    (["--runner=apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"],
     ["--sdk_container_image=IMG"]),
    (["--runner=FlinkRunner", "--flink_master=f:8081"],
     ["--environment_type=DOCKER", "--environment_config=IMG"]),
    (["--runner=SparkRunner"], ["--environment_type=DOCKER", "--environment_config=IMG"]),
    (["--runner=PortableRunner", "--job_endpoint=j:8099"],
     ["--environment_type=DOCKER", "--environment_config=IMG"]),
    # Local runners, and packaging the user chose, stay as given.
    (["--runner=FnApiRunner"], []),
    (["--runner=DirectRunner", "--direct_num_workers=4"], []),
    (["--direct_running_mode=multi_processing"], []),
    (["--runner=DataflowRunner", "--setup_file=./setup.py"], []),
    (["--runner=DataflowRunner", "--extra_package", "dist/x.tar.gz"], []),
    (["--runner=DataflowRunner", "--sdk_container_image=other"], []),
    (["--runner=FlinkRunner", "--environment_type=LOOPBACK"], []),
    (["--runner=SparkRunner", "--environment_config=other"], []),
])
def test_worker_packaging(beam_args, added):
    args, note = kt.with_worker_packaging(beam_args, "IMG")
    assert args == beam_args + added
    assert (note is not None) == (kt.beam_runner(beam_args) in ("dataflow", "flink", "spark",
                                                                "portable"))
    if added:
        assert " ".join(added) in note


def test_worker_packaging_leaves_no_args_alone():
    assert kt.with_worker_packaging(None, "IMG") == (None, None)


@pytest.mark.parametrize("flags", [
    ["--gpu_type", "nvidia.com/gpu"],               # a type without a count
    ["--trainer_cpu", "-1"],
    ["--target", "argo"],
    ["--pipeline_root", "minio://mlpipeline/v2/artifacts"],   # not readable by tf.io.gfile
])
def test_bad_flags_are_refused(flags, tmp_path):
    with pytest.raises(SystemExit):
        kubeflow_runner.parse_args(["--image", IMAGE, *ROOTS, "--output",
                                    str(tmp_path / "p.yaml"), *flags])


def test_task_entrypoint_registers_s3():
    """The s3:// filesystem (MinIO, S3) is there in every task before TFX touches an artifact:
    the TFX entrypoint imports tensorflow_transform, which imports tensorflow-io."""
    code = ("import tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor\n"
            "import tensorflow as tf\n"
            "assert 's3' in tf.io.gfile.get_registered_schemes(), "
            "tf.io.gfile.get_registered_schemes()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]


def _task_parameter(spec, task: str, name: str) -> str:
    return spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"][name]["runtimeValue"][
        "constant"]


def test_the_compiled_file_carries_the_effective_settings(compiled):
    """--set and shortcut flags reach the tasks: the Trainer's custom_config and TrainArgs, and
    the full settings.yaml the VolumeEvaluator keeps and shows in its report."""
    spec = compiled["kfp_settings"][1]
    custom = json.loads(_task_parameter(spec, "Trainer", "custom_config"))
    assert custom["model"]["variant"] == "ds_cgm"
    assert custom["train"]["learning_rate"] == 5e-4
    assert "train_steps" not in custom["train"]       # it travels once, as TrainArgs
    assert json.loads(_task_parameter(spec, "Trainer", "train_args"))["num_steps"] == 11
    assert "variant: ds_cgm" in custom["settings_yaml"]
    settings = yaml.safe_load(_task_parameter(spec, "VolumeEvaluator", "settings_yaml"))
    assert settings["model"]["variant"] == "ds_cgm" and settings["train"]["train_steps"] == 11
    assert settings["pipeline_root"] == "s3://b/root"
    plain = yaml.safe_load(_task_parameter(compiled["kfp_plain"][1], "VolumeEvaluator",
                                           "settings_yaml"))
    assert plain["model"]["variant"] == "base"


# --- the kfp SDK's own view (its venv: .venv-kfp, made by make setup) ---------------------------
KFP_SDK_PYTHON = os.path.join(REPO, os.environ.get("KFP_VENV", ".venv-kfp"), "bin", "python")
DEPLOY_DOC = os.path.join(REPO, "docs", "deploy.md")


def _kfp_sdk_check(path, calls=None, tmp_path=None):
    """tests/kfp_sdk_check.py's verdict on a file, in the kfp SDK's venv."""
    if not os.path.exists(KFP_SDK_PYTHON):
        pytest.fail(f"{KFP_SDK_PYTHON} is missing: `make setup` creates it "
                    "(scripts/setup_kfp_sdk.sh)")
    argv = [KFP_SDK_PYTHON, os.path.join(REPO, "tests", "kfp_sdk_check.py"), str(path)]
    if calls is not None:
        calls_file = tmp_path / "calls.json"
        calls_file.write_text(json.dumps(calls))
        argv.append(str(calls_file))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no verdict (exit {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", ["kfp", "kfp_settings"])
def test_kfp_sdk_loads_it_and_the_api_server_would_take_it(compiled, name, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(compiled[name][2])
    verdict = _kfp_sdk_check(path)
    assert verdict["ok"], verdict
    assert verdict["kfp"] == "2.17.3" and verdict["schema_version"] == "2.1.0"
    assert set(COMPONENTS) <= set(verdict["tasks"]), verdict


def test_the_api_server_check_refuses_the_vertex_file(compiled, tmp_path):
    """Vertex's PipelineJob wrapper (schema 2.0.0) is what KFP's API server refuses."""
    path = tmp_path / "pipeline.json"
    path.write_text(compiled["vertex"][2])
    verdict = _kfp_sdk_check(path)
    assert not verdict["ok"] and "pipeline spec" in verdict["error"], verdict


def _docs_kfp_calls():
    """The kfp.Client calls of docs/deploy.md's Python blocks: [{call, args, kwargs}]."""
    import ast
    import re
    calls = []
    for block in re.findall(r"```python\n(.*?)```", open(DEPLOY_DOC).read(), re.S):
        if "kfp.Client" not in block:
            continue
        for node in ast.walk(ast.parse(textwrap.dedent(block))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            target = node.func.value
            if isinstance(target, ast.Name) and target.id == "kfp" and node.func.attr == "Client":
                call = "Client.__init__"
            elif isinstance(target, ast.Name) and target.id == "client":
                call = f"Client.{node.func.attr}"
            else:
                continue
            calls.append({"call": call, "args": len(node.args),
                          "kwargs": [k.arg for k in node.keywords]})
    return calls


def test_the_docs_upload_and_run_calls_match_the_sdk(tmp_path, compiled):
    calls = _docs_kfp_calls()
    names = {c["call"] for c in calls}
    assert {"Client.__init__", "Client.upload_pipeline",
            "Client.create_run_from_pipeline_package"} <= names, calls
    run = next(c for c in calls if c["call"] == "Client.create_run_from_pipeline_package")
    assert "pipeline_root" in run["kwargs"], "KFP's backend ignores the file's own root"
    path = tmp_path / "pipeline.yaml"
    path.write_text(compiled["kfp"][2])
    verdict = _kfp_sdk_check(path, calls, tmp_path)
    assert verdict["ok"] and len(verdict["calls"]) == len(calls), verdict
    broken = [dict(calls[0], kwargs=calls[0]["kwargs"] + ["no_such_argument"])]
    assert not _kfp_sdk_check(path, broken, tmp_path)["ok"]


# What the runbook's cluster commands must name, as KFP's install manifests and launcher have it
# (kubeflow/pipelines 2.17.0: manifests/kustomize/base/pipeline/ml-pipeline-apiserver-deployment
# .yaml sets PUBLISH_LOGS on the `ml-pipeline` Deployment; backend/src/v2/config/env.go names the
# `kfp-launcher` ConfigMap and the `mlpipeline-minio-artifact` secret's keys; config/s3.go the
# provider fields).
API_SERVER_DEPLOYMENT, PUBLISH_LOGS = "deployment/ml-pipeline", "PUBLISH_LOGS"
S3_DEFAULT_FIELDS = {"endpoint", "disableSSL", "region", "forcePathStyle", "credentials",
                     "maxRetries"}


def test_the_runbooks_cluster_commands_and_configmap():
    import re
    import shlex
    text = open(DEPLOY_DOC).read()
    # Commands: a line of a code block, or an inline code span, that starts with kubectl.
    kubectl = [shlex.split(line.split("#")[0])
               for line in re.findall(r"(?:^|`)(kubectl [^`\n]+)", text, re.M)]
    assert len(kubectl) >= 3, kubectl
    for argv in kubectl:
        if "apply" in argv:
            assert argv[argv.index("-f") + 1] == "kfp-launcher.yaml", argv
        else:
            assert argv[argv.index("set"):] == ["set", "env", API_SERVER_DEPLOYMENT,
                                                f"{PUBLISH_LOGS}=false"], argv
            assert argv[argv.index("-n") + 1] == "kubeflow", argv
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    config_map = next(b for b in blocks if isinstance(b, dict) and b.get("kind") == "ConfigMap")
    assert config_map["metadata"]["name"] == "kfp-launcher"
    default = yaml.safe_load(config_map["data"]["providers"])["s3"]["default"]
    assert set(default) <= S3_DEFAULT_FIELDS, set(default) - S3_DEFAULT_FIELDS
    assert default["disableSSL"] is True and default["forcePathStyle"] is True
    assert default["credentials"] == {"fromEnv": False, "secretRef": {
        "secretName": "mlpipeline-minio-artifact", "accessKeyKey": "accesskey",
        "secretKeyKey": "secretkey"}}
    assert config_map["data"]["defaultPipelineRoot"].startswith("s3://")
