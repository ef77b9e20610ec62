"""The standalone converter (python -m preprocessing.convert) on a tiny set with one bad case:
the count invariant, the shards per split, the reports, the non-zero exit naming the case when
the bad fraction is over the limit, and a manifest with an inference-only case."""
from __future__ import annotations

import csv
import glob
import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features as F
from preprocessing.convert import main
from preprocessing.synthetic_ct import write_dataset

COMMON = ["--size", "24", "--keep_fraction", "0.2", "--compress_threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_data")
    write_dataset(str(root), num_cases=4, in_plane=24, slices_range=(8, 10), progress=False)
    # volume-2's segmentation has a label value outside {0, 1, 2}.
    seg = nib.load(root / "segmentation-2.nii.gz")
    bad = np.asanyarray(seg.dataobj).copy()
    bad[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(bad, seg.affine), root / "segmentation-2.nii.gz")
    return root


def _examples(folder):
    files = sorted(glob.glob(os.path.join(folder, "data-*.tfrecord.gz")))
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, "GZIP")]


def test_converts_and_counts_every_case(data, tmp_path):
    out = tmp_path / "out"
    assert main(["--data_root", str(data), "--output", str(out), "--max_bad_fraction", "0.3",
                 "--eval_cases", "volume-0", *COMMON]) == 0
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["input_cases"] == 4
    assert summary["cases_converted"] + summary["cases_quarantined"] == 4
    assert summary["cases_quarantined"] == 1
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().split("\n")
                   if line]
    assert [q["case_id"] for q in quarantined] == ["volume-2"]
    assert "outside" in quarantined[0]["reason"]
    assert quarantined[0]["file"].endswith("segmentation-2.nii.gz")
    assert summary["cases_per_split"] == {"train": ["volume-1", "volume-3"], "eval": ["volume-0"]}
    for split in ("train", "eval"):
        examples = _examples(out / split)
        assert len(examples) == summary["examples_per_split"][split] > 0
        ids = {e.features.feature[F.VOLUME_ID].bytes_list.value[0].decode() for e in examples}
        assert ids == set(summary["cases_per_split"][split])
        shape = list(examples[0].features.feature[F.IMAGE_SHAPE].int64_list.value)
        assert shape == [24, 24, 3]
    assert not (out / ".tmp").exists()
    assert json.loads((out / "slice_config.json").read_text())["size"] == [24, 24]
    # A second run into the same folder needs --overwrite.
    assert main(["--data_root", str(data), "--output", str(out), *COMMON]) == 2


def test_exits_non_zero_naming_the_bad_case(data, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        code = main(["--data_root", str(data), "--output", str(out), "--max_bad_fraction",
                     "0.1", *COMMON])
    assert code == 1
    assert "volume-2" in caplog.text and "1/4" in caplog.text
    # The report is written anyway.
    assert json.loads((out / "conversion_summary.json").read_text())["cases_quarantined"] == 1


def test_manifest_with_an_inference_only_case(data, tmp_path):
    manifest = tmp_path / "cases.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "case_id"])
        w.writerow([os.path.relpath(data / "volume-0.nii.gz", tmp_path),
                    os.path.relpath(data / "segmentation-0.nii.gz", tmp_path), "a"])
        w.writerow([str(data / "volume-1.nii.gz"), str(data / "segmentation-1.nii.gz"), "b"])
        w.writerow([str(data / "volume-3.nii.gz"), "", "c"])
    out = tmp_path / "out"
    assert main(["--manifest", str(manifest), "--output", str(out), "--allow_unlabeled",
                 "--eval_cases", "c", "--max_bad_fraction", "0", *COMMON]) == 0
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["cases_converted"] == 3 and summary["unlabelled_cases"] == ["c"]
    evals = _examples(out / "eval")
    lines = (out / "cases.jsonl").read_text().splitlines()
    cases = {c["case_id"]: c for c in map(json.loads, lines)}
    assert len(evals) == cases["c"]["num_slices"] == cases["c"]["slices_written"]  # every slice
    assert all(F.LABEL not in e.features.feature and F.HAS_LIVER not in e.features.feature
               for e in evals)
    assert all(F.LABEL in e.features.feature for e in _examples(out / "train"))
