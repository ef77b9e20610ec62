"""The report's body sections: per-volume tables, plots, TFMA's slices, worst slices and the
command that reproduces the report. Pictures are embedded as data: URIs (no file beside the
page, no network)."""
from __future__ import annotations

import base64
from html import escape

from evaluation.report import overlays, plots, tables
from evaluation.report.header import ReportData


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def volume_tables(data: ReportData) -> str:
    ve = data.volume_eval
    parts = ["<section><h2>Per volume</h2><p>Worst first (lowest candidate Dice). Click a "
             "column header to sort by it. Liver rows are flagged "
             '<span class="flag below-bar">&#9660; below bar</span> when the candidate\'s Dice '
             f"is under {data.thresholds.dice_lower_bound:.4f} and "
             '<span class="flag worse">&#8600; worse than baseline</span> when it is more than '
             f"{data.thresholds.dice_change_tolerance:.4f} under the baseline's. VOE: volume "
             "overlap error; RVD: relative volume difference; ASSD / MSD / HD95: average "
             "symmetric, maximum and 95th-percentile surface distance; n/a: undefined (an "
             "empty mask).</p>"]
    if ve.errors:
        parts.append(f'<div id="errors" class="verdict not-blessed"><strong>{len(ve.errors)} '
                     "volume(s) could not be evaluated</strong><ul>" + "".join(
                         f"<li>{escape(str(e.get('case_id')))}: {escape(str(e.get('reason')))} "
                         f"({escape(str(e.get('file')))})</li>" for e in ve.errors)
                     + "</ul></div>")
    for cls in ve.classes:
        parts.append(f"<h3>{escape(cls)}</h3>"
                     + tables.volume_table(ve.cases, cls, ve.has_baseline, data.thresholds))
    return "".join(parts) + "</section>"


def plot_section(data: ReportData) -> str:
    ve, t = data.volume_eval, data.thresholds
    if not ve.cases:
        return "<section><h2>Plots</h2><p>No volumes evaluated.</p></section>"
    paired = plots.paired_dice_png(ve.cases, ve.classes, t.dice_lower_bound,
                                   t.dice_change_tolerance)
    spread = plots.distributions_png(ve.cases, ve.classes, ve.has_baseline)
    return ("<section><h2>Plots</h2><p>Per-volume Dice, baseline to candidate (red: worse by "
            "more than the tolerance, green: better by more, grey: about the same).</p>"
            f'<img id="paired-dice" alt="per-volume Dice, baseline vs candidate" '
            f'src="{data_uri(paired)}"><p>Distributions over the volumes (box: quartiles; '
            "dots: volumes).</p>"
            f'<img id="distributions" alt="metric distributions" src="{data_uri(spread)}">'
            "</section>")


def _number(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def tfma_section(data: ReportData) -> str:
    if data.tfma is None:
        return ("<section><h2>TFMA slices</h2><p>No evaluation given: pass --evaluation "
                "&lt;.../Evaluator/evaluation/&lt;id&gt;&gt; for the Evaluator's Dice on the "
                "has_liver and has_tumor slices.</p></section>")
    rows = []
    for name, values in data.tfma.slices.items():
        rows.append(f"<tr><th>{escape(name)}</th>"
                    f"<td>{_number(values.get('dice'), '{:.4f}')}</td>"
                    f"<td>{_number(values.get('tumor_dice'), '{:.4f}')}</td>"
                    f"<td>{_number(values.get('example_count'), '{:.0f}')}</td></tr>")
    return ("<section><h2>TFMA slices</h2><p>The Evaluator's Dice, pooled over the pixels of "
            "the eval split's 2.5D slices in each slice of the data: has_liver=0 counts any "
            "predicted pixel against the model; has_tumor splits slices with and without "
            "tumour. Examples are 2D slices.</p>"
            '<table id="tfma-slices"><thead><tr><th>slice</th><th>liver Dice</th>'
            "<th>tumour Dice</th><th>examples</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></section>")


def _legend() -> str:
    swatches = "".join(
        f'<li><span class="swatch" style="background:rgb{rgb}"></span>{escape(text)}</li>'
        for rgb, text in overlays.COLOURS.values())
    return f'<ul class="legend">{swatches}</ul>'


def _worst_volume(case_id: str, worst, dice, liver_only: bool) -> str:
    figures = []
    for i, slice_number in enumerate(worst.slice_index):
        truth, prediction = worst.truth[i], worst.prediction[i]
        counts = overlays.slice_counts(truth, prediction)
        png = overlays.png_bytes(overlays.panels(worst.image[i], truth, prediction, liver_only))
        figures.append(
            f'<figure><img class="slices" alt="{escape(case_id)} slice {int(slice_number)}" '
            f'src="{data_uri(png)}"><figcaption>slice {int(slice_number)} (CT | truth | '
            f"prediction): liver Dice "
            f"{counts['dice']:.3f}, {counts['false_positive']} false positive and "
            f"{counts['false_negative']} false negative pixels</figcaption></figure>")
    title = escape(case_id) + (f" (liver Dice {dice:.4f})" if dice is not None else "")
    return (f'<div class="worst" data-case="{escape(case_id)}"><h3>{title}</h3>'
            f'<div class="row">{"".join(figures)}</div></div>')


def worst_slices_section(data: ReportData) -> str:
    ve = data.volume_eval
    if not ve.worst:
        return "<section><h2>Worst slices</h2><p>No worst_slices.npz given.</p></section>"
    low, high = overlays.WINDOW_HU
    parts = [f"<section><h2>Worst slices</h2><p>Each row: CT (window [{low:.0f}, {high:.0f}] "
             "HU) | truth | prediction coloured by error; the volume's worst slices, worst "
             "volumes first.</p>", _legend()]
    liver_only = "tumour" not in ve.classes
    ordered = [c for c in tables.sort_worst_first(ve.cases, "liver") if c["case_id"] in ve.worst]
    listed = {c["case_id"] for c in ordered}
    for case in ordered:
        dice = ((case.get("candidate") or {}).get("liver") or {}).get("dice")
        parts.append(_worst_volume(case["case_id"], ve.worst[case["case_id"]], dice, liver_only))
    for case_id in sorted(set(ve.worst) - listed):   # slices of a volume metrics.json lacks
        parts.append(_worst_volume(case_id, ve.worst[case_id], None, liver_only))
    return "".join(parts) + "</section>"


def settings_section(data: ReportData) -> str:
    """The run's effective settings (settings.yaml), folded: replayable with
    `local_runner.py --config settings.yaml`."""
    text = data.volume_eval.settings_yaml
    if not text:
        return ""
    return ("<section><h2>Settings</h2><details><summary>The run's effective settings "
            "(settings.yaml; <code>local_runner.py --config settings.yaml</code> runs them "
            f"again)</summary><pre id=\"settings\">{escape(text)}</pre></details></section>")


def command_section(data: ReportData) -> str:
    return ("<section><h2>Reproduce</h2><p>From the repository root (paths may be gs:// or "
            f"s3:// URIs):</p><pre id=\"command\">{escape(data.command)}</pre></section>")
