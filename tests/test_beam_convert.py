"""The Beam conversion on real files with a bad case mixed in: nothing is lost
(input cases == converted + quarantined) and every selected slice lands in exactly one split."""
from __future__ import annotations

import json
import os

import apache_beam as beam
import nibabel as nib
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from components.nifti_example_gen import check_conversion, summarize_conversion
from preprocessing import features as F
from preprocessing.beam_convert import convert_cases, write_lines
from preprocessing.nifti import discover_lits_cases
from preprocessing.slices import SliceConfig
from preprocessing.splits import assign_splits
from preprocessing.synthetic_ct import write_dataset

CONFIG = SliceConfig(size=(32, 32), keep_fraction=0.25)


def _convert(data_root, out_dir):
    cases, errors = discover_lits_cases(data_root)
    split_of = assign_splits([c.case_id for c in cases], 0.34)
    collected = {}
    options = PipelineOptions(["--direct_running_mode=in_memory"])
    with beam.Pipeline(options=options) as p:
        examples, quarantine, summaries = convert_cases(
            p, [(c, split_of[c.case_id]) for c in cases], errors, ["train", "eval"], CONFIG)
        for split, pcoll in examples.items():
            write_lines(pcoll | f"Ser{split}" >> beam.Map(
                lambda e: json.dumps([e.features.feature[F.VOLUME_ID].bytes_list.value[0]
                                      .decode(),
                                      e.features.feature[F.SLICE_INDEX].int64_list.value[0]])),
                        os.path.join(out_dir, f"{split}.jsonl"), split)
        write_lines(quarantine, os.path.join(out_dir, "quarantine.jsonl"), "Q")
        write_lines(summaries, os.path.join(out_dir, "cases.jsonl"), "S")
    for split in ("train", "eval"):
        with open(os.path.join(out_dir, f"{split}.jsonl")) as f:
            collected[split] = [tuple(json.loads(line)) for line in f]
    return len(cases) + len(errors), collected


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
