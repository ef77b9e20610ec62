"""The compiled Kubeflow pipeline file, executed without a cluster.

kubeflow_runner.py compiles the tiny profile (`--target kfp`: PipelineSpec 2.1 alone, no
resolver; `--target vertex`: TFX's PipelineJob, schema 2.0, with the last-blessed-model
resolver). Then tests/kfp_ir_harness.py runs every task's container command from that file,
in dependency order, as a subprocess of a fresh venv holding only this project's wheel (built
here) on top of .venv's packages: the stand-in for the image (tests/kfp_image.py).

The kfp file is fed as open-source KFP 2.x feeds it (the harness's `kfp` mode, read from KFP's
backend: tests/kfp_backend.py): untyped inputs named by ML Metadata ids, the `executor-logs`
output, uuid task folders, no preCacheCheck hook, a pod's bare environment. It runs with
pipeline root, data root and serving dir in S3 (moto's server on loopback, tests/s3_server.py;
KFP takes no local root), KFP's launcher set up by the kfp-launcher ConfigMap that
docs/deploy.md gives, the tasks given the variables a pod on a cluster gets. There every task
must also survive tensorflow-io's abort at exit (tests/test_process_exit.py). The same file
without our task entrypoint (TFX's commands as TFX compiles them) fails at the first task, on
local paths (so that only KFP's way of feeding it can be the cause).
The vertex file is fed as Vertex does (the `vertex` mode); its resolvers are emulated as
resolving nothing, as on a first run.

Passes when every task exits 0, the Evaluator blesses the model (BLESSED in the blessing's uri,
`blessed` = 1 in its metadata) and the Pusher pushes a SavedModel under the serving dir.
"""
from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import kfp_ir_harness as harness
from kfp_image import REPO, build_image, run_checked

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return build_image(tmp_path_factory.mktemp("kfp_image"))


@pytest.fixture(scope="module")
def tiny_ct(image, tmp_path_factory) -> Path:
    """The tiny profile's synthetic CT set, written by the image's own package."""
    from pipeline.configs import profile_config
    s = profile_config("tiny").synthetic
    out = tmp_path_factory.mktemp("tiny_ct")
    run_checked(
        [image.python, "-m", "preprocessing.synthetic_ct", "--output", str(out),
         "--num_cases", str(s.num_cases), "--size", str(s.size), "--seed", str(s.seed),
         "--min_slices", str(s.min_slices), "--max_slices", str(s.max_slices), "--no_progress"],
        cwd=out)
    assert len(list(out.glob("volume-*.nii*"))) == s.num_cases
    return out


def _compile(target: str, output: Path, pipeline_root, data_root, serving_dir,
             extra=()) -> None:
    import kubeflow_runner
    argv = ["--target", target, "--profile", "tiny", "--image", "local/unet3plus-tfx:test",
            "--pipeline_root", str(pipeline_root), "--data_root", str(data_root),
            "--serving_dir", str(serving_dir), "--output", str(output), *extra]
    try:
        assert kubeflow_runner.main(argv) == 0
    except SystemExit as exit_:   # argparse: e.g. a flag this runner does not know
        pytest.fail(f"kubeflow_runner.main({argv}) exited {exit_.code}; see its stderr")


def _assert_blessed_and_pushed(runs, serving: Path) -> None:
    blessings = harness.produced_of_type(runs, "tfx.ModelBlessing")
    assert len(blessings) == 1, blessings
    task, _, blessing = blessings[0]
    assert (Path(blessing["uri"]) / "BLESSED").exists(), \
        f"{task} did not bless the model: {sorted(p.name for p in Path(blessing['uri']).iterdir())}"
    assert blessing["metadata"].get("blessed") == 1, blessing
    pushes = harness.produced_of_type(runs, "tfx.PushedModel")
    assert len(pushes) == 1, pushes
    task, _, pushed = pushes[0]
    assert pushed["metadata"].get("pushed") == 1, f"{task} did not push: {pushed}"
    destination = Path(pushed["metadata"]["pushed_destination"])
    assert serving.resolve() in destination.resolve().parents, (destination, serving)
    assert (destination / "saved_model.pb").exists(), sorted(serving.rglob("*"))


def _assert_full_volume_report(runs) -> None:
    """The VolumeEvaluator ran in the image: its custom artifact type was imported by its name
    and its folder holds the metrics and the HTML report."""
    produced = harness.produced_of_type(runs, "components.VolumeEvaluation")
    assert len(produced) == 1, produced
    task, _, evaluation = produced[0]
    folder = Path(evaluation["uri"])
    assert (folder / "metrics.json").exists() and (folder / "eval_report.html").exists(), \
        f"{task}: {sorted(p.name for p in folder.iterdir())}"
    assert evaluation["metadata"].get("cases_evaluated", 0) > 0, evaluation


def _hooked_tasks(compiled: Path, runs):
    spec, _ = harness.load_spec(compiled)
    hooked = [name for name in runs if "preCacheCheck" in harness.component_and_executor(
        spec, name)[1].get("container", {}).get("lifecycle", {})]
    assert hooked, "no task has a preCacheCheck hook: the ExampleGen's driver would not run"
    return hooked


def _fingerprinted(runs, name) -> dict:
    """{examples uri: whether the driver's input fingerprint reached its metadata}."""
    examples = [a for artifacts in runs[name].outputs.values() for a in artifacts
                if harness.type_title(a["type"]) == "tfx.Examples"]
    assert examples, f"{name} produced no examples"
    return {a["uri"]: "input_fingerprint" in a["metadata"] for a in examples}


def _assert_driver_ran(compiled: Path, runs) -> None:
    """Vertex: the file-based ExampleGen's preCacheCheck driver ran and what it wrote reached
    the examples (the span and input fingerprint its cache keys on). Without the hook the
    executor still succeeds, so only this shows it."""
    for name in _hooked_tasks(compiled, runs):
        assert all(_fingerprinted(runs, name).values()), \
            f"{name}: the driver's span/fingerprint did not reach its examples"


def _assert_driver_not_run(compiled: Path, runs) -> None:
    """KFP never runs lifecycle hooks: the examples carry no input fingerprint, so new input
    data does not change KFP's cache key (docs/deploy.md, Caching on KFP)."""
    for name in _hooked_tasks(compiled, runs):
        assert not any(_fingerprinted(runs, name).values()), \
            f"{name}: an input fingerprint without the driver: did the harness run the hook?"


def _assert_portable(compiled: Path) -> None:
    """Nothing in the file points into this checkout: the image will not have it."""
    text = compiled.read_text()
    assert str(REPO) not in text, (
        f"{compiled} refers to the repository {REPO}: " + ", ".join(
            sorted({line.strip()[:160] for line in text.splitlines() if str(REPO) in line})))


def _assert_adapted_for_kfp(pods: Path) -> None:
    """Every task's log shows the task entrypoint adapting what KFP sent: the executor-logs
    output dropped, and (in StatisticsGen, the first reader of an upstream artifact) the
    untyped input typed from the component's declaration."""
    logs = {p.parent.name: p.read_text(errors="replace") for p in pods.glob("*/*/executor.stderr")}
    assert len(logs) >= 9, sorted(logs)
    for task, log in logs.items():
        assert "output 'executor-logs' (system.Artifact) dropped" in log, task
    assert "input 'examples': type tfx.Examples from the component's input" in logs[
        "StatisticsGen"]


def _without_task_entrypoint(compiled: Path, out: Path) -> Path:
    """The file as TFX compiles it: every command TFX's own `python -m MODULE`."""
    import yaml
    from pipeline.kubeflow_target import TASK_ENTRYPOINT
    spec = yaml.safe_load(compiled.read_text())
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor.get("container", {})
        for hook in [container, *container.get("lifecycle", {}).values()]:
            command = hook.get("command", [])
            if TASK_ENTRYPOINT in command:
                hook["command"] = command[:2] + command[-1:]
    out.write_text(yaml.safe_dump(spec))
    return out


def test_tfx_entrypoint_alone_fails_on_kfp(image, tiny_ct, tmp_path):
    """The regression the task entrypoint fixes: TFX 1.16's entrypoint, fed as KFP feeds it,
    fails at the first task on the executor-logs output (PUBLISH_LOGS, the default from KFP
    2.5.0), and without it at the first task that reads an upstream artifact."""
    compiled = tmp_path / "pipeline.yaml"
    _compile("kfp", compiled, tmp_path / "root", tiny_ct, tmp_path / "serving")
    plain = _without_task_entrypoint(compiled, tmp_path / "tfx_only.yaml")
    spec, _ = harness.load_spec(plain)
    first = harness.task_order(spec["root"]["dag"]["tasks"])[0]
    with pytest.raises(harness.TaskFailed, match="Could not import system.Artifact") as failed:
        harness.run_pipeline(plain, image.python, root=str(tmp_path / "root"), run_id="logs",
                             mode="kfp", local_root=str(tmp_path / "pods"), log=print)
    assert failed.value.task == first and not failed.value.runs
    with pytest.raises(harness.TaskFailed, match="'NoneType' object has no attribute 'get'") \
            as failed:
        harness.run_pipeline(plain, image.python, root=str(tmp_path / "root"), run_id="nologs",
                             mode="kfp", local_root=str(tmp_path / "pods"), log=print,
                             publish_logs=False)
    assert failed.value.task == "StatisticsGen", failed.value.task
    assert set(failed.value.runs) == {"NiftiExampleGen", "PackagedSchemaGen"}


def docs_launcher_config(endpoint: str) -> dict:
    """The kfp-launcher ConfigMap's data as docs/deploy.md gives it, ENDPOINT filled in."""
    import re
    import yaml
    text = (REPO / "docs" / "deploy.md").read_text()
    blocks = [yaml.safe_load(textwrap.dedent(b)) for b in re.findall(r"```yaml\n(.*?)```",
                                                                      text, re.S)]
    maps = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "ConfigMap"
            and b["metadata"]["name"] == "kfp-launcher"]
    assert len(maps) == 1, "docs/deploy.md must give the kfp-launcher ConfigMap once"
    data = maps[0]["data"]
    assert "ENDPOINT" in data["providers"]
    return dict(data, providers=data["providers"].replace("ENDPOINT", endpoint))


BUCKET = "unet3plus-kfp"


def _run(label: str, mode: str, compiled: Path, image, **options):
    runs = harness.run_pipeline(compiled, image.python, run_id="run-1", mode=mode,
                                log=lambda line: print(f"[{label}] {line}", flush=True),
                                **options)
    print(f"[{label}]", harness.format_timings(runs), flush=True)
    return runs


@pytest.fixture(scope="module")
def executed(image, tiny_ct, tmp_path_factory):
    """Both compiled files executed at once (each task is mostly one busy thread, so two runs
    overlap on two cores instead of queueing): the vertex file on local disk, the kfp file with
    pipeline root, data root and serving dir in S3. The S3 server stays up for the tests."""
    from s3_server import s3_server
    vertex_dir, kfp_dir = tmp_path_factory.mktemp("vertex"), tmp_path_factory.mktemp("kfp")
    with s3_server(BUCKET) as s3:
        s3.upload_folder(str(tiny_ct), BUCKET, "lits")
        vertex = vertex_dir / "pipeline.json"
        _compile("vertex", vertex, vertex_dir / "pipeline_root", tiny_ct, vertex_dir / "serving")
        kfp = kfp_dir / "pipeline.yaml"
        _compile("kfp", kfp, f"s3://{BUCKET}/root", f"s3://{BUCKET}/lits",
                 f"s3://{BUCKET}/serving", [f"--beam_arg=--s3_endpoint_url={s3.endpoint}"])
        launcher_config = docs_launcher_config(s3.endpoint.split("://", 1)[1])
        secrets = {"mlpipeline-minio-artifact": {"accesskey": s3.env["AWS_ACCESS_KEY_ID"],
                                                 "secretkey": s3.env["AWS_SECRET_ACCESS_KEY"]}}
        with ThreadPoolExecutor(2) as pool:
            vertex_runs = pool.submit(_run, "vertex", "vertex", vertex, image,
                                      root=str(vertex_dir / "pipeline_root"),
                                      local_root=str(vertex_dir / "pods"))
            kfp_runs = pool.submit(_run, "kfp on s3", "kfp", kfp, image, root=f"s3://{BUCKET}/root",
                                   local_root=str(kfp_dir / "pods"),
                                   launcher_config=launcher_config, secrets=secrets,
                                   env=s3.env)
            # Fixtures print to the captured output: a failure shows each task's lines.
            results = {"vertex": (vertex, vertex_runs.result(), vertex_dir / "serving"),
                       "kfp": (kfp, kfp_runs.result(), kfp_dir / "pods")}
        yield results, s3


def test_vertex_target_runs_blesses_and_pushes(executed):
    compiled, runs, serving = executed[0]["vertex"]
    document = json.loads(compiled.read_text())
    assert document["pipelineSpec"]["schemaVersion"] == "2.0.0"
    assert any(run.resolver for run in runs.values()), "vertex compiles the baseline resolver"
    _assert_driver_ran(compiled, runs)
    _assert_blessed_and_pushed(runs, serving)
    _assert_full_volume_report(runs)
    _assert_portable(compiled)


def test_kfp_target_runs_blesses_and_pushes_on_object_storage(executed):
    """The kfp file as KFP runs it, with pipeline root, data root and serving dir in S3 (moto's
    server on loopback, as MinIO or SeaweedFS on a cluster; KFP takes no local root): KFP's
    launcher, set up by the docs' kfp-launcher ConfigMap and the `mlpipeline-minio-artifact`
    secret, downloads each task's inputs to the pod's /s3 and uploads its log; every task reads
    and writes its artifacts in the bucket, exits 0 (components.task_entrypoint keeps the
    status tensorflow-io's s3:// would abort at exit), and a blessed model lands in the serving
    bucket."""
    (compiled, runs, pods), s3 = executed[0]["kfp"], executed[1]
    bucket = BUCKET
    blessings = harness.produced_of_type(runs, "tfx.ModelBlessing")
    assert len(blessings) == 1 and blessings[0][2]["uri"].startswith(f"s3://{bucket}/root/")
    assert blessings[0][2]["metadata"].get("blessed") == 1, blessings
    blessing_key = blessings[0][2]["uri"].split(f"s3://{bucket}/", 1)[1]
    assert f"{blessing_key}/BLESSED" in s3.keys(bucket, blessing_key)
    pushed = harness.produced_of_type(runs, "tfx.PushedModel")[0][2]
    destination = pushed["metadata"].get("pushed_destination", "")
    assert destination.startswith(f"s3://{bucket}/serving/"), pushed
    serving_key = destination.split(f"s3://{bucket}/", 1)[1]
    assert f"{serving_key.rstrip('/')}/saved_model.pb" in s3.keys(bucket, serving_key)
    evaluation = harness.produced_of_type(runs, "components.VolumeEvaluation")[0][2]
    folder = evaluation["uri"].split(f"s3://{bucket}/", 1)[1]
    assert {f"{folder}/metrics.json", f"{folder}/eval_report.html"} <= set(
        s3.keys(bucket, folder))
    # The launcher's side: the Pusher's inputs were downloaded to its pod's /s3, and every
    # task's log was uploaded beside its outputs.
    assert list((pods / "run-1" / "Pusher" / "s3" / bucket).rglob("saved_model.pb"))
    logs = [k for k in s3.keys(bucket, "root/") if k.endswith("/executor-logs")]
    assert len(logs) == len(runs), logs
    assert harness.load_spec(compiled)[0]["schemaVersion"] == "2.1.0"
    assert not any(run.resolver for run in runs.values()), "kfp cannot run resolvers"
    _assert_driver_not_run(compiled, runs)
    _assert_adapted_for_kfp(pods)
    _assert_portable(compiled)
