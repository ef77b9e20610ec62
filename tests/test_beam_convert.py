"""The Beam conversion on real files with a bad case mixed in: nothing is lost
(input cases == converted + quarantined), every selected slice lands in exactly one split, the
written shards are valid gzip TFRecords, and a multi-process run writes the same examples as an
in-memory one."""
from __future__ import annotations

import glob
import gzip
import json
import os

import apache_beam as beam
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from components.nifti_example_gen import check_conversion, summarize_conversion
from preprocessing import features as F
from preprocessing.beam_convert import add_conversion, convert_cases
from preprocessing.case_discovery import discover_lits_cases
from preprocessing.conversion_plan import ConversionPlan
from preprocessing.conversion_report import write_lines
from preprocessing.conversion_stages import COUNTER_NAMESPACE
from preprocessing.shard_writer import compress_record, remove_temp_dir, write_examples
from preprocessing.slices import SliceConfig
from preprocessing.splits import assign_splits
from preprocessing.synthetic_ct import write_dataset

CONFIG = SliceConfig(size=(32, 32), keep_fraction=0.25)
IN_MEMORY = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]


def _convert(data_root, out_dir):
    cases, errors = discover_lits_cases(data_root)
    split_of = assign_splits([c.case_id for c in cases], 0.34)
    collected = {}
    with beam.Pipeline(options=PipelineOptions(IN_MEMORY)) as p:
        examples, quarantine, summaries = convert_cases(
            p, [(c, split_of[c.case_id]) for c in cases], errors, ["train", "eval"], CONFIG)
        for split, pcoll in examples.items():
            write_lines(pcoll | f"Ser{split}" >> beam.Map(_key), os.path.join(out_dir,
                                                                              f"{split}.jsonl"),
                        split)
        write_lines(quarantine, os.path.join(out_dir, "quarantine.jsonl"), "Q")
        write_lines(summaries, os.path.join(out_dir, "cases.jsonl"), "S")
    for split in ("train", "eval"):
        with open(os.path.join(out_dir, f"{split}.jsonl")) as f:
            collected[split] = [tuple(json.loads(line)) for line in f]
    return len(cases) + len(errors), collected


def _key(serialized: bytes) -> str:
    e = tf.train.Example.FromString(serialized)
    return json.dumps([e.features.feature[F.VOLUME_ID].bytes_list.value[0].decode(),
                       e.features.feature[F.SLICE_INDEX].int64_list.value[0]])


def test_bad_cases_are_quarantined_and_counted(tmp_path):
    data = tmp_path / "data"
    out = tmp_path / "out"
    out.mkdir()
    write_dataset(str(data), num_cases=5, in_plane=24, slices_range=(8, 10), progress=False)
    # Case 3: labels outside {0,1,2}; case 4: segmentation missing.
    seg = nib.load(data / "segmentation-3.nii.gz")
    bad = np.asanyarray(seg.dataobj).copy()
    bad[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(bad, seg.affine), data / "segmentation-3.nii.gz")
    os.remove(data / "segmentation-4.nii.gz")

    total, examples = _convert(str(data), str(out))
    summary = summarize_conversion(str(out), total)
    assert summary["input_cases"] == 5
    assert summary["cases_converted"] == 3 and summary["cases_quarantined"] == 2
    reasons = {q["case_id"]: q["reason"] for q in summary["quarantined"]}
    assert "outside" in reasons["volume-3"] and "missing segmentation" in reasons["volume-4"]
    assert all(q["file"].endswith(".nii.gz") for q in summary["quarantined"])

    # Every selected slice of every converted case is in exactly one split.
    per_case = {}
    with open(out / "cases.jsonl") as f:
        for line in f:
            c = json.loads(line)
            per_case[c["case_id"]] = c
    all_slices = examples["train"] + examples["eval"]
    assert len(all_slices) == len(set(all_slices)) == sum(
        c["slices_written"] for c in per_case.values())
    for split, items in examples.items():
        assert {v for v, _ in items} == {c for c, s in per_case.items() if s["split"] == split}

    # 2 of 5 bad is over the default 10% limit: the run fails naming the cases.
    with pytest.raises(RuntimeError, match="volume-3.*volume-4|volume-4.*volume-3"):
        check_conversion(summary, max_bad_fraction=0.1)
    check_conversion(summary, max_bad_fraction=0.5)


def test_gzip_member_records_are_one_valid_stream(tmp_path):
    records = [bytes([i]) * (100 + 37 * i) for i in range(12)]
    path = tmp_path / "x.tfrecord.gz"
    with open(path, "wb") as f:
        for r in records:
            f.write(compress_record(r, 1)[0])
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), "GZIP")] == records
    gzip.decompress(path.read_bytes())   # CRCs and lengths of every member check out


def test_each_spill_index_is_read_once_per_worker_not_once_per_bucket(tmp_path):
    """The merge step reads a spill file's index once, though the file holds records of every
    bucket (before: one read per bucket and file, a request each on an object store), and the
    shards still hold every record exactly once."""
    from apache_beam.metrics.metric import MetricsFilter
    records = [f"record {i} ".encode() * (1 + i % 7) for i in range(300)]
    temp, out = str(tmp_path / "tmp"), str(tmp_path / "train")
    p = beam.Pipeline(options=PipelineOptions(IN_MEMORY))
    write_examples({"train": p | beam.Create(records)}, {"train": out}, temp, {"train": 8},
                   compress_threads=1)
    result = p.run()
    result.wait_until_finish()
    spill_indexes = glob.glob(os.path.join(temp, "**", "*.index"), recursive=True)
    shards = sorted(glob.glob(os.path.join(out, "data_tfrecord-*-of-00008.gz")))
    assert len(shards) == 8   # every bucket got records, so each needed the index
    reads = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE)
                                   .with_name("spill_index_reads"))["counters"]
    assert spill_indexes and sum(c.committed for c in reads) == len(spill_indexes)
    assert sorted(r.numpy() for r in tf.data.TFRecordDataset(shards, "GZIP")) == sorted(records)


def _write_and_read(data_root, out_dir, beam_args):
    cases, errors = discover_lits_cases(data_root)
    split_of = assign_splits([c.case_id for c in cases], 0.34)
    plan = ConversionPlan([(c, split_of[c.case_id]) for c in cases], errors)
    dirs = {s: os.path.join(out_dir, s) for s in ("train", "eval")}
    temp = os.path.join(out_dir, "tmp")
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        add_conversion(p, plan, CONFIG, dirs, out_dir, temp, compress_threads=1)
    remove_temp_dir(temp)
    assert not os.path.exists(temp)
    written = {}
    for split, d in dirs.items():
        files = sorted(glob.glob(os.path.join(d, "data_tfrecord-*-of-*.gz")))
        assert files and all(os.path.basename(f) != "tmp" for f in files)
        written[split] = {_key(r.numpy()): r.numpy()
                          for r in tf.data.TFRecordDataset(files, "GZIP")}
    return plan, written


def test_multi_processing_writes_the_same_examples_as_in_memory(tmp_path):
    data = str(tmp_path / "data")
    write_dataset(data, num_cases=3, in_plane=32, slices_range=(8, 10), progress=False)
    _, in_memory = _write_and_read(data, str(tmp_path / "a"), IN_MEMORY)
    plan, multi = _write_and_read(data, str(tmp_path / "b"), [
        "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
        "--direct_num_workers=2"])
    assert in_memory.keys() == multi.keys()
    for split in in_memory:
        assert in_memory[split] == multi[split], split   # same keys and same bytes
    summary = summarize_conversion(str(tmp_path / "b"), plan.input_cases)
    assert summary["cases_converted"] == 3
    assert {s: len(v) for s, v in multi.items()} == summary["examples_per_split"]
    example = tf.train.Example.FromString(next(iter(multi["train"].values())))
    assert list(example.features.feature[F.IMAGE_SHAPE].int64_list.value) == [32, 32, 3]


def test_executor_with_a_manifest(tmp_path):
    """The TFX executor's Do, run directly: a manifest with a missing label (quarantined),
    shards per split under the artifact, the artifact's properties, no temp files left."""
    import csv

    from tfx.proto import example_gen_pb2
    from tfx.types import artifact_utils, standard_artifacts, standard_component_specs as sc
    from tfx.utils import proto_utils

    from components.nifti_example_gen import TEMP_DIR_NAME, Executor, NiftiExampleGen
    from schema.contract import CASES_FILE, CONVERSION_SUMMARY_FILE, QUARANTINE_FILE

    data = tmp_path / "data"
    write_dataset(str(data), num_cases=4, in_plane=24, slices_range=(8, 9), progress=False)
    with open(data / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        for i in range(4):
            w.writerow([f"volume-{i}.nii.gz", f"segmentation-{i}.nii.gz" if i != 3 else ""])
    settings = {"slice": SliceConfig(size=(24, 24), keep_fraction=0.2).to_dict(),
                "eval_cases": ["volume-0"], "max_bad_fraction": 0.3,
                "manifest": str(data / "cases.csv"), "compress_threads": 1}
    component = NiftiExampleGen(input_base=None, settings=settings)
    props = component.exec_properties
    assert props[sc.INPUT_BASE_KEY] == str(data)
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(props[sc.INPUT_CONFIG_KEY], input_config)
    assert input_config.splits[0].pattern == "cases.csv"

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    exec_properties = {k: v for k, v in props.items() if v is not None}
    Executor(Executor.Context(beam_pipeline_args=IN_MEMORY, tmp_dir=str(tmp_path))).Do(
        {}, {sc.EXAMPLES_KEY: [examples]}, exec_properties)
    assert examples.get_int_custom_property("cases_converted") == 3
    assert examples.get_int_custom_property("cases_quarantined") == 1
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    summary = json.loads((tmp_path / "examples" / CONVERSION_SUMMARY_FILE).read_text())
    assert summary["cases_per_split"]["eval"] == ["volume-0"]
    assert "without a label" in summary["quarantined"][0]["reason"]
    for name in (CASES_FILE, QUARANTINE_FILE):
        assert (tmp_path / "examples" / name).exists()
    assert not (tmp_path / "examples" / TEMP_DIR_NAME).exists()
    for split in ("train", "eval"):
        files = glob.glob(str(tmp_path / "examples" / f"Split-{split}" / "*"))
        assert files and all(os.path.basename(f).startswith("data_tfrecord-") for f in files)
        n = sum(1 for _ in tf.data.TFRecordDataset(files, "GZIP"))
        assert n == summary["examples_per_split"][split]
