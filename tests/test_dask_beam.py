"""The converter on Beam's DaskRunner against a real Dask cluster (a LocalCluster of 2 worker
processes on the loopback interface, no dashboard): the same examples, byte for byte per case,
and the same quarantine report and summary as the in-process runner, with the work spread over
both workers.

The worker processes import this project the way a cluster's workers must: it is installed in
the environment they start from (here the venv's editable install; docs/scaling.md for real
clusters). Beam 2.74's DaskRunner runs only the pipeline's last step, feeds every consumer of a
multi-output ParDo all its outputs and drops what finish_bundle emits; each would lose or mix
cases here (preprocessing/beam_convert.py says how the conversion avoids them)."""
from __future__ import annotations

import collections
import glob
import json
import os

import distributed
import pytest
import tensorflow as tf
from distributed.diagnostics.plugin import SchedulerPlugin

from preprocessing import features as F
from preprocessing.conversion_settings import conversion_beam_args
from preprocessing.convert import main
from preprocessing.slices import SliceConfig
from preprocessing.synthetic_ct import write_dataset

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
COMMON = ["--size", "32", "--keep_fraction", "0.3", "--max_bad_fraction", "0.3",
          "--eval_cases", "volume-0"]
BAD_CASE = "volume-3"


class _TaskWorkers(SchedulerPlugin):
    """Which worker finished each task (the scheduler runs in this process)."""

    def __init__(self):
        self.workers = set()

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "processing" and finish == "memory" and kwargs.get("worker"):
            self.workers.add(kwargs["worker"])


@pytest.fixture(scope="module")
def cluster():
    # Loopback only, no dashboard, and the scheduler's plain HTTP server (health, metrics), which
    # dashboard_address=None leaves on port 8787, on a free port: nothing listens beyond this
    # host and no fixed port can clash with another cluster's.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as c:
        yield c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_data")
    write_dataset(str(root), num_cases=5, in_plane=40, slices_range=(8, 12), progress=False)
    # A truncated volume: the case is quarantined on either runner.
    path = root / f"{BAD_CASE}.nii.gz"
    path.write_bytes(path.read_bytes()[:400])
    return root


def _examples_by_case(out, pattern="{split}/data-*.tfrecord.gz"):
    """Serialized examples per (split, volume id), sorted (shard order and layout may vary)."""
    by_case = collections.defaultdict(list)
    for split in ("train", "eval"):
        files = sorted(glob.glob(os.path.join(out, pattern.format(split=split))))
        for record in tf.data.TFRecordDataset(files, "GZIP"):
            data = record.numpy()
            example = tf.train.Example.FromString(data)
            case = example.features.feature[F.VOLUME_ID].bytes_list.value[0].decode()
            by_case[(split, case)].append(data)
    return {key: sorted(records) for key, records in by_case.items()}


def _report(out, name):
    """A JSON-lines report's records, in a fixed order."""
    with open(os.path.join(out, name)) as f:
        return sorted((json.loads(line) for line in f if line.strip()),
                      key=lambda r: json.dumps(r, sort_keys=True))


@pytest.mark.slow   # a local Dask cluster
def test_dask_runner_writes_what_the_in_process_runner_writes(cluster, data, tmp_path):
    local, dask = str(tmp_path / "local"), str(tmp_path / "dask")
    assert main(["--data_root", str(data), "--output", local, *COMMON]) == 0
    tasks = _TaskWorkers()
    cluster.scheduler.add_plugin(tasks, name="task-workers")
    code = main(["--data_root", str(data), "--output", dask, *COMMON,
                 f"--beam_arg=--runner={DASK_RUNNER}",
                 f"--beam_arg=--dask_client_address={cluster.scheduler_address}"])

    expected, got = _examples_by_case(local), _examples_by_case(dask)
    assert sorted(got) == sorted(expected)   # the same cases in the same splits
    for key in expected:
        assert got[key] == expected[key], f"{key}: examples differ"
    assert len(expected) == 4 and ("eval", "volume-0") in expected
    quarantine = _report(dask, "quarantine.jsonl")
    assert quarantine == _report(local, "quarantine.jsonl")
    assert [q["case_id"] for q in quarantine] == [BAD_CASE]
    assert _report(dask, "cases.jsonl") == _report(local, "cases.jsonl")
    with open(os.path.join(dask, "conversion_summary.json")) as a, \
            open(os.path.join(local, "conversion_summary.json")) as b:
        assert json.load(a) == json.load(b)
    assert code == 0
    assert len(tasks.workers) == 2, f"the tasks ran on {tasks.workers} only"
    assert not glob.glob(os.path.join(dask, ".tmp*"))


@pytest.mark.slow   # a local Dask cluster
def test_example_gen_executor_on_dask(cluster, data, tmp_path):
    """NiftiExampleGen's executor, as TFX runs it, with the pipeline's Beam args naming the
    DaskRunner: the same examples and reports as with the in-process runner."""
    from tfx.types import standard_artifacts, standard_component_specs as sc

    from components.nifti_example_gen import Executor, NiftiExampleGen

    slices = SliceConfig(size=(32, 32), keep_fraction=0.3).to_dict()
    props = NiftiExampleGen(str(data), {"slice": slices, "eval_cases": ["volume-0"],
                                        "max_bad_fraction": 0.3}).exec_properties
    outputs = {}
    for name, args in (("local", ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]),
                       ("dask", [f"--runner={DASK_RUNNER}",
                                 f"--dask_client_address={cluster.scheduler_address}"])):
        examples = standard_artifacts.Examples()
        examples.uri = str(tmp_path / name)
        Executor(Executor.Context(beam_pipeline_args=args, tmp_dir=str(tmp_path))).Do(
            {}, {sc.EXAMPLES_KEY: [examples]}, {k: v for k, v in props.items() if v is not None})
        assert examples.get_int_custom_property("cases_quarantined") == 1
        outputs[name] = (_examples_by_case(examples.uri, "Split-{split}/data_tfrecord-*.gz"),
                         _report(examples.uri, "quarantine.jsonl"),
                         _report(examples.uri, "cases.jsonl"))
    assert len(outputs["local"][0]) == 4
    assert outputs["dask"] == outputs["local"]


def test_dask_args_get_one_case_per_task():
    dask = [f"--runner={DASK_RUNNER}", "--dask_client_address=tcp://scheduler:8786"]
    assert conversion_beam_args(dask) == dask + ["--dask_partition_size=1"]
    assert conversion_beam_args(["--runner", DASK_RUNNER]) == [
        "--runner", DASK_RUNNER, "--dask_partition_size=1"]
    given = dask + ["--dask_npartitions=8"]
    assert conversion_beam_args(given) == given   # the user's partitioning stands
    for other in (["--runner=DataflowRunner", "--project=p"], ["--runner=FlinkRunner"], []):
        assert conversion_beam_args(other) == other
