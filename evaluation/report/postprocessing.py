"""The report's section on 3-D post-processing and lesions: every pooled figure of the candidate
on its own labels and after the post-processing (evaluation/model_scoring.py scores both), so a
user sees what post-processing does on their data; with a tumour channel, the LiTS lesion
figures (evaluation/lesion_metrics.py) as a table and as a plot of detection recall per lesion
size."""
from __future__ import annotations

from html import escape
from typing import Any, Dict, List, Optional, Sequence, Tuple

from evaluation.report.header import ReportData

RAW, POST = "candidate", "candidate_postprocessed"
BANDS = (("lt10mm", "< 10 mm"), ("10to20mm", "10-20 mm"), ("gt20mm", "> 20 mm"))
LESION_ROWS = (("lesion_recall", "lesion detection recall (pooled)"),
               ("lesion_precision", "lesion detection precision (pooled)"),
               *((f"lesion_recall_{band}", f"lesion recall, {label}") for band, label in BANDS),
               ("lesion_tp", "detected lesions"), ("lesion_fn", "missed lesions"),
               ("lesion_fp", "false-positive lesions"),
               ("tumour_burden_error_mean", "tumour burden error, mean"),
               ("tumour_burden_error_rmse", "tumour burden error, RMSE"))


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _delta(raw, post) -> str:
    if raw is None or post is None or isinstance(raw, int):
        return ""
    return f"{post - raw:+.4f}"


def figure_rows(global_dice: Dict[str, Any], lesions: Optional[Dict[str, Any]],
                classes: Sequence[str]) -> List[Tuple[str, Any, Any]]:
    """(what, raw, post-processed) of every pooled figure."""
    rows = []
    for cls in classes:
        for key, label in (("global_dice", "global Dice"), ("mean_dice", "mean Dice")):
            rows.append((f"{cls} {label}",
                         *(((global_dice.get(role) or {}).get(cls) or {}).get(key)
                           for role in (RAW, POST))))
    for key, label in LESION_ROWS if lesions else ():
        rows.append((label, *((lesions.get(role) or {}).get(key) for role in (RAW, POST))))
    return rows


def recall_by_size_png(lesions: Dict[str, Any]) -> bytes:
    """Grouped bars: pooled lesion recall per size band, raw and post-processed."""
    from evaluation.report.plots import BASELINE_COLOUR, CANDIDATE_COLOUR, _png, _pyplot
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(5.0, 2.8))
    for offset, role, colour, label in ((-0.2, RAW, BASELINE_COLOUR, "model's labels"),
                                        (0.2, POST, CANDIDATE_COLOUR, "post-processed")):
        values = [(lesions.get(role) or {}).get(f"lesion_recall_{band}") for band, _ in BANDS]
        ax.bar([i + offset for i in range(len(BANDS))],
               [0.0 if v is None else v for v in values], width=0.4, color=colour, label=label)
    ax.set_xticks(range(len(BANDS)), [label for _, label in BANDS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("lesion recall")
    ax.set_xlabel("reference lesion diameter (sphere of equal volume)")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def postprocessing_section(data: ReportData) -> str:
    from evaluation.report.sections import data_uri
    ve = data.volume_eval
    if not ve.cases or not ve.global_dice.get(POST):
        return ""
    inference = ve.inference or {}
    mode = "on" if inference.get("postprocess", True) else "off"
    body = "".join(f"<tr><th>{escape(what)}</th><td>{_fmt(raw)}</td><td>{_fmt(post)}</td>"
                   f'<td class="delta">{_delta(raw, post)}</td></tr>'
                   for what, raw, post in figure_rows(ve.global_dice, ve.lesions, ve.classes))
    parts = ["<section><h2>Post-processing and lesions</h2><p>The candidate on its own labels "
             "and after the 3-D post-processing (the largest liver component, enclosed holes "
             "filled, tumour only inside the liver and at least "
             f"{inference.get('min_tumour_volume_mm3', 10.0):g} mm&sup3;). predict.py's "
             f"setting for this run: <strong>{mode}</strong>; mirroring: "
             f"{escape(str(inference.get('mirror', 'none')))}. Lesions are matched at overlap "
             "above 0.5, the LiTS criterion.</p>",
             '<table class="figures" id="postprocessing"><thead><tr><th></th>'
             "<th>model's labels</th><th>post-processed</th><th>change</th></tr></thead>"
             f"<tbody>{body}</tbody></table>"]
    if ve.lesions:
        parts.append('<img id="lesion-recall" alt="lesion recall per size band" '
                     f'src="{data_uri(recall_by_size_png(ve.lesions))}">')
    return "".join(parts) + "</section>"
