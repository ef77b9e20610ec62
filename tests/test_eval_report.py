"""evaluation/report: eval_report.html from fake inputs (realistic metrics.json and
worst_slices.npz as evaluation/volume_eval.py writes them, a TFMA ModelEvaluation and a
ModelBlessing as the Evaluator writes them), read back as text, and opened in headless
Chromium with the network off (tests/browser.py): it must render, list the worst volume first,
sort on a click, and ask the network for nothing."""
from __future__ import annotations

import html
import json
import os
import re
import shlex
import uuid
from typing import Dict, Optional

import numpy as np
import pytest

from evaluation.report import write_report
from evaluation.report.__main__ import main as report_main
import browser

BAR, TOLERANCE = 0.85, 0.01

# --- fake inputs ---------------------------------------------------------------------------------

# case id -> (candidate liver Dice, baseline liver Dice); volume-3 is the worst and below the
# 0.85 bar, volume-8 has no tumour (its tumour distances are undefined: null).
LIVER_DICE = {"volume-12": (0.962, 0.958), "volume-3": (0.781, 0.912),
              "volume-27": (0.934, 0.941), "volume-40": (0.905, 0.874),
              "volume-8": (0.948, 0.950)}
WORST_CASE = "volume-3"
NO_TUMOUR_CASE = "volume-8"
WORST_VOLUMES = ("volume-3", "volume-40", "volume-27")
SLICES_PER_VOLUME = 3


def _metrics(dice: float, rng, truth_ml: float, empty: bool = False) -> Dict[str, Optional[float]]:
    """Metrics consistent with a Dice (VOE from Jaccard = D / (2 - D)); `empty`: no truth, a few
    predicted voxels, so the surface distances and RVD are undefined."""
    if empty:
        return {"dice": 0.0, "voe": 1.0, "rvd": None, "assd_mm": None, "msd_mm": None,
                "hd95_mm": None, "truth_ml": 0.0, "pred_ml": 1.3}
    assd = (1.0 - dice) * rng.uniform(15, 25)
    rvd = float(rng.uniform(-0.08, 0.08))
    return {"dice": dice, "voe": 1.0 - dice / (2.0 - dice), "rvd": rvd, "assd_mm": assd,
            "msd_mm": assd * rng.uniform(6, 10), "hd95_mm": assd * rng.uniform(2.5, 4),
            "truth_ml": truth_ml, "pred_ml": truth_ml * (1.0 + rvd)}


def _case(case_id: str, rng, with_baseline: bool) -> dict:
    liver_ml, tumour_ml = rng.uniform(1300, 1900), rng.uniform(5, 120)
    models = {}
    for model, liver_dice in zip(("candidate", "baseline"), LIVER_DICE[case_id]):
        empty = case_id == NO_TUMOUR_CASE
        models[model] = {"liver": _metrics(liver_dice, rng, liver_ml),
                         "tumour": _metrics(liver_dice - rng.uniform(0.2, 0.4), rng,
                                            tumour_ml, empty=empty)}
    return {"case_id": case_id, "spacing_mm": [0.78, 0.78, 2.5],
            "num_slices": int(rng.integers(60, 200)), "seconds": float(rng.uniform(3, 9)),
            "candidate": models["candidate"],
            "baseline": models["baseline"] if with_baseline else None}


def _global(cases, model: str) -> dict:
    out = {}
    for cls in ("liver", "tumour"):
        dice = [c[model][cls]["dice"] for c in cases]
        out[cls] = {"global_dice": float(np.average(dice, weights=range(1, len(dice) + 1))),
                    "mean_dice": float(np.mean(dice))}
    return out


def fake_slices(rng, size: int, k: int, badness: float) -> Dict[str, np.ndarray]:
    """k CT slices (HU) with body, fat, liver and a tumour; truth labels; a prediction shifted
    by `badness` (false positives on one side, negatives on the other) plus a stray blob."""
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    images, truths, predictions = [], [], []
    for i in range(k):
        grow = 1.0 + 0.1 * i
        body = ((xx - .5) / .45) ** 2 + ((yy - .5) / .36) ** 2 < 1
        muscle = ((xx - .5) / .40) ** 2 + ((yy - .5) / .31) ** 2 < 1
        liver = ((xx - .34) / (.17 * grow)) ** 2 + ((yy - .45) / (.13 * grow)) ** 2 < 1
        tumour = (xx - .31) ** 2 + (yy - .47) ** 2 < (.035 * grow) ** 2
        image = np.full((size, size), -1000.0, np.float32)
        image[body], image[muscle], image[liver], image[tumour] = -100, 45, 60, 15
        image += rng.normal(0, 12, image.shape).astype(np.float32)
        truth = (liver.astype(np.uint8) + (liver & tumour)).astype(np.uint8)
        shifted = ((xx - .34 - badness) / (.17 * grow)) ** 2 + ((yy - .45) / (.13 * grow)) ** 2 < 1
        blob = (xx - .7) ** 2 + (yy - .4) ** 2 < (badness * .5) ** 2
        prediction = (shifted | blob).astype(np.uint8)
        prediction[shifted & ((xx - .33) ** 2 + (yy - .47) ** 2 < (.03 * grow) ** 2)] = 2
        images.append(image), truths.append(truth), predictions.append(prediction)
    return {"image": np.stack(images), "truth": np.stack(truths),
            "prediction": np.stack(predictions),
            "slice_index": np.arange(40, 40 + 7 * k, 7, dtype=np.int32)}


def write_volume_eval(folder: str, size: int = 96, with_baseline: bool = True,
                      liver_only: bool = False, seed: int = 0) -> str:
    """metrics.json for the five LIVER_DICE cases and worst_slices.npz for WORST_VOLUMES;
    liver_only: a one-channel model's evaluation (no tumour class, predictions 0/1)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    cases = [_case(case_id, rng, with_baseline) for case_id in LIVER_DICE]
    metrics = {"model": {"uri": "/runs/pipeline/Trainer/model/42"},
               "baseline": {"uri": "/runs/pipeline/Trainer/model/17"} if with_baseline else None,
               "classes": ["liver", "tumour"], "cases": cases,
               "global": {"candidate": _global(cases, "candidate"),
                          "baseline": _global(cases, "baseline") if with_baseline else None},
               "seconds_per_volume": 5.4,
               "errors": [{"case_id": "volume-99", "file": "/data/volume-99.nii.gz",
                           "reason": "truncated gzip file"}]}
    if liver_only:
        metrics["classes"] = ["liver"]
        for entry in cases + [metrics["global"]]:
            for model in ("candidate", "baseline"):
                (entry[model] or {}).pop("tumour", None)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    arrays = {}
    for n, case_id in enumerate(WORST_VOLUMES):
        for part, array in fake_slices(rng, size, SLICES_PER_VOLUME, .08 - .02 * n).items():
            arrays[f"{case_id}__{part}"] = np.minimum(array, 1) if (
                liver_only and part == "prediction") else array
    np.savez_compressed(os.path.join(folder, "worst_slices.npz"), **arrays)
    return folder


def write_blessing(folder: str, blessed: bool) -> str:
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "BLESSED" if blessed else "NOT_BLESSED"), "w").close()
    return folder


# slice -> (candidate liver Dice, tumour Dice, examples); the candidate is DICE_CHANGE from the
# baseline (within the tolerance).
DICE_CHANGE = -0.005
TFMA_SLICES = {(): (0.8312, 0.55, 412), (("has_liver", 0),): (0.0, 1.0, 101),
               (("has_liver", 1),): (0.8420, 0.55, 311), (("has_tumor", 0),): (0.85, 1.0, 280),
               (("has_tumor", 1),): (0.80, 0.55, 132),
               (("volume_id", b"volume-3"),): (0.77, 0.4, 60)}


def _metrics_for_slice(slice_key, values, with_baseline: bool):
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2 as m
    dice, tumour, count = values
    record = m.MetricsForSlice(slice_key=m.SliceKey(single_slice_keys=[
        m.SingleSliceKey(column=column, **{"bytes_value" if isinstance(v, bytes)
                                           else "int64_value": v}) for column, v in slice_key]))
    models = {"candidate": dice, "baseline": dice - DICE_CHANGE} if with_baseline else {"": dice}
    for model, liver in models.items():
        for name, value, diff in (("dice", liver, False), ("tumor_dice", tumour, False),
                                  ("example_count", count, False)):
            record.metric_keys_and_values.add(
                key=m.MetricKey(name=name, model_name=model, is_diff=diff),
                value=m.MetricValue(double_value={"value": value}))
    if with_baseline:
        record.metric_keys_and_values.add(
            key=m.MetricKey(name="dice", model_name="candidate", is_diff=True),
            value=m.MetricValue(double_value={"value": DICE_CHANGE}))
    return record


def write_evaluation(folder: str, blessed: bool, with_baseline: bool = True) -> str:
    """A ModelEvaluation as TFMA writes it: eval_config.json (the pipeline's own config),
    metrics and validations TFRecords; not blessed: the overall Dice failed the bar."""
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow_model_analysis import version
    from tensorflow_model_analysis.proto import config_pb2
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2 as m
    from tensorflow_model_analysis.proto import validation_result_pb2 as v
    from evaluation.tfma_config import make_eval_config
    os.makedirs(folder, exist_ok=True)
    run = config_pb2.EvalRun(eval_config=make_eval_config(BAR, TOLERANCE, classes="liver_tumor"),
                             version=version.VERSION, data_location="eval", file_format="")
    with open(os.path.join(folder, "eval_config.json"), "w") as f:
        f.write(json_format.MessageToJson(run))
    with tf.io.TFRecordWriter(os.path.join(folder, "metrics-00000-of-00001.tfrecord")) as w:
        for key, values in TFMA_SLICES.items():
            w.write(_metrics_for_slice(key, values, with_baseline).SerializeToString())
    result = v.ValidationResult(validation_ok=blessed)
    if not blessed:
        result.metric_validations_per_slice.add(slice_key=m.SliceKey()).failures.add(
            metric_key=m.MetricKey(name="dice", model_name="candidate"),
            metric_value=m.MetricValue(double_value={"value": TFMA_SLICES[()][0]}),
            metric_threshold=config_pb2.MetricThreshold(
                value_threshold=config_pb2.GenericValueThreshold(lower_bound={"value": BAR})))
    with tf.io.TFRecordWriter(os.path.join(folder, "validations.tfrecord")) as w:
        w.write(result.SerializeToString())
    return folder


# --- reading the page back -----------------------------------------------------------------------

def first_row_case(page: str, table: str = "volumes-liver") -> str:
    body = page.split(f'id="{table}"', 1)[1].split("<tbody>", 1)[1]
    return html.unescape(re.search(r'<tr data-case="([^"]*)"', body).group(1))


def external_references(page: str):
    """Every src/href that is not an embedded data: URI or a #fragment, and any http(s) text."""
    attributes = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', page, re.I)
    return ([a for a in attributes if not a.startswith(("data:", "#"))]
            + re.findall(r"https?://", page, re.I))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """The report with everything given: volumes, a failed evaluation, NOT_BLESSED."""
    root = tmp_path_factory.mktemp("report")
    volume_eval = write_volume_eval(str(root / "volume_eval"))
    evaluation = write_evaluation(str(root / "evaluation"), blessed=False)
    blessing = write_blessing(str(root / "blessing"), blessed=False)
    path = write_report(volume_eval, str(root / "eval_report.html"), evaluation, blessing,
                        run_info={"run_id": "2026-12-01T15:00:00.123"})
    with open(path) as f:
        return path, f.read()


# --- the page's content --------------------------------------------------------------------------

def test_not_blessed_says_why_and_shows_everything(full_report):
    path, page = full_report
    verdict = page.split('id="verdict"', 1)[1].split("</div>", 1)[0]
    assert "NOT BLESSED" in verdict and "dice (overall) 0.8312 is below the bar 0.8500" in verdict
    assert "2026-12-01T15:00:00.123" in page and "/runs/pipeline/Trainer/model/42" in page
    assert "the Evaluator&#x27;s config stored with the evaluation" in page   # the bar's source
    assert first_row_case(page) == WORST_CASE
    worst_row = re.search(rf'<tr data-case="{WORST_CASE}"[^>]*>', page).group(0)
    assert "below-bar" in worst_row and "worse" in worst_row
    assert re.search(r'<tr data-case="volume-12">', page)            # a good volume: no flag
    tfma = page.split('id="tfma-slices"', 1)[1].split("<tbody>", 1)[1].split("</table>", 1)[0]
    assert ["overall", "has_liver=0", "has_liver=1", "has_tumor=0", "has_tumor=1"] == \
        re.findall(r"<tr><th>([^<]*)</th>", tfma) and "<td>132</td>" in tfma
    assert page.count('class="worst"') == len(WORST_VOLUMES)
    assert page.count('<img class="slices"') == len(WORST_VOLUMES) * SLICES_PER_VOLUME
    assert 'id="paired-dice"' in page and 'id="distributions"' in page
    assert "volume-99: truncated gzip file (/data/volume-99.nii.gz)" in page
    assert external_references(page) == []
    size_mb = os.path.getsize(path) / 1e6
    print(f"report size {size_mb:.3f} MB")
    assert size_mb < 1.0


def test_null_distances_show_as_undefined(full_report):
    _, page = full_report
    row = re.search(rf'<tr data-case="{NO_TUMOUR_CASE}".*?</tr>',
                    page.split('id="volumes-tumour"', 1)[1]).group(0)
    assert row.count('title="undefined">n/a</td>') == 8   # RVD, ASSD, MSD, HD95 x2 models


def test_blessed_with_baseline_change(tmp_path):
    volume_eval = write_volume_eval(str(tmp_path / "volume_eval"))
    path = write_report(volume_eval, str(tmp_path / "r.html"),
                        write_evaluation(str(tmp_path / "evaluation"), blessed=True),
                        write_blessing(str(tmp_path / "blessing"), blessed=True),
                        run_info={"dice_lower_bound": 0.8})
    page = open(path).read()
    verdict = page.split('id="verdict"', 1)[1].split("</div>", 1)[0]
    assert "BLESSED" in verdict and "NOT" not in verdict
    assert "0.8312 (TFMA, eval split, pooled over its slices) is at or above the bar 0.8000" \
        in verdict
    assert "change against the baseline (last blessed model) -0.0050: within" in verdict
    assert "given on the command line" in page


def test_liver_only_without_baseline_evaluation_or_blessing(tmp_path):
    volume_eval = write_volume_eval(str(tmp_path / "volume_eval"), with_baseline=False,
                                    liver_only=True)
    page = open(write_report(volume_eval, str(tmp_path / "r.html"))).read()
    assert "Blessing not given" in page and "pipeline defaults (EvalConfig)" in page
    assert first_row_case(page) == WORST_CASE and 'id="volumes-tumour"' not in page
    assert 'class="baseline"' not in page and 'class="delta"' not in page
    assert page.count('<img class="slices"') == len(WORST_VOLUMES) * SLICES_PER_VOLUME
    assert external_references(page) == []


def test_prediction_colours():
    """Per pixel: found liver, found tumour, false positive, false negative, wrong class; a
    liver-only model is judged on liver (truth tumour predicted liver is found liver)."""
    from evaluation.report import overlays
    truth = np.array([[1, 2, 0, 1, 2, 2]], np.uint8)
    prediction = np.array([[1, 2, 1, 0, 1, 0]], np.uint8)

    def kinds(t, p):
        masks = overlays.error_masks(t, p)
        return [next((name for mask, name in masks if mask[0, i]), None) for i in range(6)]
    assert kinds(truth, prediction) == ["liver", "tumour", "false_positive", "false_negative",
                                        "wrong_class", "false_negative"]
    row = overlays.panels(np.zeros((1, 6), np.float32), truth, np.minimum(prediction, 1),
                          liver_only=True)
    liver_rgb = np.asarray(overlays.COLOURS["liver"][0])
    prediction_panel = row[0, -6:].astype(float)
    blended = (1 - overlays.ALPHA) * overlays.windowed(np.zeros((1, 1)))[0, 0] \
        + overlays.ALPHA * liver_rgb
    assert np.allclose(prediction_panel[4], blended, atol=1)   # tumour called liver: found


def test_cli_command_in_the_page_reproduces_it(tmp_path, capsys):
    volume_eval = write_volume_eval(str(tmp_path / "volume_eval"), size=40)
    os.remove(os.path.join(volume_eval, "worst_slices.npz"))
    output = str(tmp_path / "eval report.html")          # a space: the command must quote it
    assert report_main(["--volume_eval", volume_eval, "--output", output,
                        "--blessing", write_blessing(str(tmp_path / "b"), True)]) == 0
    assert "MB)" in capsys.readouterr().out
    first = open(output, "rb").read()
    assert b"No worst_slices.npz given" in first
    command = html.unescape(re.search(r'<pre id="command">(.*?)</pre>', first.decode()).group(1))
    argv = shlex.split(command)
    assert argv[:3] == [".venv/bin/python", "-m", "evaluation.report"]
    os.remove(output)
    assert report_main(argv[3:]) == 0
    assert open(output, "rb").read() == first


def test_every_input_and_the_output_may_be_a_uri(tmp_path):
    """Past runs' artifacts may live in object storage: all of it through ram:// (tf.io.gfile,
    as gs:// and s3://) gives the page a local run gives."""
    from common import storage
    ram = f"ram://{uuid.uuid4().hex}"
    local = {"volume_eval": write_volume_eval(str(tmp_path / "volume_eval"), size=40),
             "evaluation": write_evaluation(str(tmp_path / "evaluation"), blessed=False),
             "blessing": write_blessing(str(tmp_path / "blessing"), blessed=False)}
    for name, folder in local.items():
        for entry in os.listdir(folder):
            storage.copy(os.path.join(folder, entry), f"{ram}/{name}/{entry}")
    path = write_report(f"{ram}/volume_eval", f"{ram}/out/eval_report.html",
                        f"{ram}/evaluation", f"{ram}/blessing")
    page = storage.read_text(path)
    assert path == f"{ram}/out/eval_report.html" and first_row_case(page) == WORST_CASE
    assert "NOT BLESSED" in page and 'id="tfma-slices"' in page
    assert page.count('<img class="slices"') == len(WORST_VOLUMES) * SLICES_PER_VOLUME


# --- in a browser, network off -------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    binary = browser.find_chromium()
    if binary is None:
        pytest.skip("no headless Chromium on PATH (" + ", ".join(browser.CANDIDATES) + "); on "
                    "Debian: apt-get install chromium-headless-shell")
    return binary


def test_opens_offline_in_chromium(chromium, full_report, tmp_path):
    from PIL import Image
    path, page = full_report
    with browser.RecordingProxy() as proxy:
        png = browser.screenshot(chromium, path, str(tmp_path / "shot.png"), proxy)
        dom = browser.dump_dom(chromium, path, proxy)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (browser.WINDOW[1], browser.WINDOW[0])
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200        # text, tables, pictures
    assert (pixels.min(axis=-1) < 250).mean() > 0.05                    # not a blank page
    assert first_row_case(dom) == WORST_CASE
    assert proxy.requests == []


def test_click_on_a_header_sorts_in_chromium(chromium, full_report, tmp_path):
    """The inline sort, driven by a click a test script adds: case id ascending, then again
    (descending), on the liver table."""
    _, page = full_report
    click = ('<script>var th = document.querySelector(\'#volumes-liver th[data-col="0"]\');'
             "th.click(); th.click();</script></body>")
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.replace("</body>", click))
    with browser.RecordingProxy() as proxy:
        dom = browser.dump_dom(chromium, str(clicked), proxy)
    assert first_row_case(dom) == max(LIVER_DICE)     # "volume-8" sorts last as text
    assert 'data-col="0" title="sort" data-dir="desc"' in dom
    assert proxy.requests == []


def test_the_proxy_sees_what_a_page_asks_for(chromium, tmp_path):
    """The check itself: a page with external references gets them recorded."""
    page = tmp_path / "external.html"
    page.write_text('<html><body><img src="http://example.invalid/a.png">'
                    '<script src="https://cdn.example.invalid/b.js"></script></body></html>')
    with browser.RecordingProxy() as proxy:
        browser.dump_dom(chromium, str(page), proxy)
    assert "GET http://example.invalid/a.png" in proxy.requests
    assert any(r.startswith("CONNECT cdn.example.invalid:443") for r in proxy.requests)
