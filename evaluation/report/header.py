"""The top of the report: blessed or not and why, which model and run, and the key Dice figures
(TFMA's on the eval split's slices; the full volumes' from metrics.json)."""
from __future__ import annotations

import dataclasses
from html import escape
from typing import Any, Dict, List, Optional, Tuple

from evaluation.report.inputs import Thresholds, VolumeEval


@dataclasses.dataclass
class ReportData:
    """Everything the page shows, read once by write_report."""
    volume_eval: VolumeEval
    thresholds: Thresholds
    blessed: Optional[bool]
    tfma: Optional[Any]              # tfma_slices.TfmaSummary, or None without an evaluation
    run_info: Dict[str, Any]
    inputs: Dict[str, Optional[str]]  # what was read: volume eval, evaluation, blessing URIs
    command: str


def _global(data: ReportData, model: str, cls: str, key: str) -> Optional[float]:
    return ((data.volume_eval.global_dice.get(model) or {}).get(cls) or {}).get(key)


def _bar_reasons(data: ReportData) -> List[str]:
    """Why blessed, or (when TFMA recorded no failure) where the Dice stands against the
    thresholds, from TFMA's overall Dice or, lacking an evaluation, the full volumes'."""
    t, tfma = data.thresholds, data.tfma
    if tfma is not None and tfma.overall_dice is not None:
        dice, where = tfma.overall_dice, "TFMA, eval split, pooled over its slices"
    else:
        dice = _global(data, "candidate", "liver", "global_dice")
        where = ("full volumes, global; the Evaluator gates on TFMA's Dice: give --evaluation "
                 "for it")
    reasons = []
    if dice is not None:
        side = "at or above" if dice >= t.dice_lower_bound else "BELOW"
        reasons.append(f"liver Dice {dice:.4f} ({where}) is {side} the bar "
                       f"{t.dice_lower_bound:.4f}")
    change = tfma.dice_change if tfma is not None else None
    if change is not None:
        within = "within" if change >= -t.dice_change_tolerance else "WORSE than"
        reasons.append(f"change against the baseline (last blessed model) {change:+.4f}: "
                       f"{within} the tolerance of {t.dice_change_tolerance:.4f}")
    elif tfma is not None:
        reasons.append("no baseline in the evaluation (first blessed model): the change "
                       "threshold did not apply")
    return reasons


def verdict(data: ReportData) -> Tuple[str, str, List[str]]:
    """(css class, headline, reasons)."""
    if data.blessed is None:
        return ("unknown", "Blessing not given",
                ["pass --blessing <.../Evaluator/blessing/<id>> to show it"] + _bar_reasons(data))
    if data.blessed:
        return "blessed", "BLESSED", _bar_reasons(data)
    failures = data.tfma.failures if data.tfma is not None else None
    if not failures and data.tfma is None:
        failures = ["give --evaluation <.../Evaluator/evaluation/<id>> to see which threshold "
                    "failed"] + _bar_reasons(data)
    return "not-blessed", "NOT BLESSED", failures or _bar_reasons(data)


def _fmt(value: Optional[float], fmt: str = "{:.4f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _figure_rows(data: ReportData) -> List[Tuple[str, Optional[float], Optional[float]]]:
    """(what, candidate, baseline) for the key figures table."""
    rows = []
    tfma = data.tfma
    if tfma is not None:
        overall = tfma.slices.get("overall", {})
        change = tfma.dice_change
        dice = overall.get("dice")
        rows.append(("TFMA liver Dice, overall (eval split, pooled over its slices)", dice,
                     None if dice is None or change is None else dice - change))
        if "tumor_dice" in overall:
            rows.append(("TFMA tumour Dice, overall", overall["tumor_dice"], None))
    for cls in data.volume_eval.classes:
        for key, what in (("global_dice", "global Dice (pooled over all voxels)"),
                          ("mean_dice", "mean of per-volume Dice")):
            rows.append((f"Full volumes: {cls} {what}", _global(data, "candidate", cls, key),
                         _global(data, "baseline", cls, key)))
    return rows


def key_figures(data: ReportData) -> str:
    body = []
    for what, candidate, baseline in _figure_rows(data):
        change = None if candidate is None or baseline is None else candidate - baseline
        body.append(f"<tr><th>{escape(what)}</th><td>{_fmt(candidate)}</td>"
                    f"<td>{_fmt(baseline)}</td><td>{_fmt(change, '{:+.4f}')}</td></tr>")
    return ('<table class="figures"><thead><tr><th></th><th>candidate</th><th>baseline</th>'
            '<th>change</th></tr></thead><tbody>' + "".join(body) + "</tbody></table>")


def identity(data: ReportData) -> str:
    """Which model, baseline, run and inputs this report is about."""
    ve, info = data.volume_eval, data.run_info
    items = [("Model", info.get("model_id") or ve.model_uri or "(not recorded)"),
             ("Baseline", ve.baseline_uri or "none (no earlier blessed model)"),
             ("Run", info.get("run_id") or "(not given)"),
             ("Thresholds", f"liver Dice bar {data.thresholds.dice_lower_bound:.4f}, change "
                            f"tolerance {data.thresholds.dice_change_tolerance:.4f} "
                            f"({data.thresholds.source})")]
    if ve.seconds_per_volume is not None:
        items.append(("Full-volume inference", f"{ve.seconds_per_volume:.1f} s per volume, "
                                               f"{len(ve.cases)} volumes"))
    items += [(name, uri) for name, uri in data.inputs.items() if uri]
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>"
                            for k, v in items) + "</dl>"


def header(data: ReportData) -> str:
    css, headline, reasons = verdict(data)
    items = "".join(f"<li>{escape(r)}</li>" for r in reasons)
    return (f'<header><h1>Liver segmentation: evaluation report</h1>'
            f'<div id="verdict" class="verdict {css}"><strong>{headline}</strong>'
            f"<ul>{items}</ul></div>{identity(data)}{key_figures(data)}</header>")
