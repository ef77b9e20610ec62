"""The per-volume tables (one per class): worst first, candidate and baseline side by side,
liver rows below the bar or worse than the baseline flagged, every column sortable by a click
(SORT_SCRIPT, inline vanilla JS: the page must open from disk with no network). The rows are
written already sorted, so the order is right even with JavaScript off."""
from __future__ import annotations

from html import escape
from typing import Any, Dict, List, Optional, Sequence, Tuple

from evaluation.report.inputs import Thresholds

# (key in metrics.json, header, format) of the metrics shown for candidate (and baseline).
METRICS: Tuple[Tuple[str, str, str], ...] = (
    ("dice", "Dice", "{:.4f}"), ("voe", "VOE", "{:.4f}"), ("rvd", "RVD", "{:+.3f}"),
    ("assd_mm", "ASSD mm", "{:.2f}"), ("msd_mm", "MSD mm", "{:.2f}"),
    ("hd95_mm", "HD95 mm", "{:.2f}"), ("pred_ml", "volume ml", "{:.1f}"))
MISSING = "n/a"   # null in metrics.json: a distance to an empty mask is undefined


def table_id(cls: str) -> str:
    return f"volumes-{cls}"


def _value(case: Dict[str, Any], model: str, cls: str, key: str) -> Optional[float]:
    return ((case.get(model) or {}).get(cls) or {}).get(key)


def _cell(value: Optional[float], fmt: str, css: str = "") -> str:
    """A number cell; data-v is what the sort compares (empty: sorts last either way)."""
    attrs = f' class="{css}"' if css else ""
    if value is None:
        return f'<td data-v=""{attrs} title="undefined">{MISSING}</td>'
    return f'<td data-v="{value!r}"{attrs}>{fmt.format(value)}</td>'


def sort_worst_first(cases: Sequence[Dict[str, Any]], cls: str) -> List[Dict[str, Any]]:
    """Lowest candidate Dice first; volumes without one last, then by case id."""
    def key(case):
        dice = _value(case, "candidate", cls, "dice")
        return (dice is None, dice if dice is not None else 0.0, case["case_id"])
    return sorted(cases, key=key)


def _flags(case, cls: str, thresholds: Thresholds) -> List[Tuple[str, str]]:
    """(css class, marker text) of a row: on liver, below the bar and worse than baseline."""
    if cls != "liver":
        return []
    dice = _value(case, "candidate", cls, "dice")
    base = _value(case, "baseline", cls, "dice")
    flags = []
    if dice is not None and dice < thresholds.dice_lower_bound:
        flags.append(("below-bar", "&#9660; below bar"))
    if dice is not None and base is not None and dice < base - thresholds.dice_change_tolerance:
        flags.append(("worse", "&#8600; worse than baseline"))
    return flags


def _row(case, cls: str, models: Sequence[str], thresholds: Thresholds) -> str:
    flags = _flags(case, cls, thresholds)
    markers = "".join(f' <span class="flag {css}">{text}</span>' for css, text in flags)
    case_id = escape(str(case["case_id"]))
    cells = [f'<td data-v="{case_id}" class="case">{case_id}{markers}</td>',
             _cell(case.get("num_slices"), "{:d}")]
    for key, _, fmt in METRICS:
        cells += [_cell(_value(case, m, cls, key), fmt, m) for m in models]
        if key == "dice" and len(models) == 2:
            c, b = (_value(case, m, cls, "dice") for m in models)
            cells.append(_cell(None if c is None or b is None else c - b, "{:+.4f}", "delta"))
    cells.append(_cell(_value(case, "candidate", cls, "truth_ml"), "{:.1f}"))
    row_class = " ".join(css for css, _ in flags)
    return (f'<tr data-case="{case_id}"' + (f' class="{row_class}"' if row_class else "")
            + ">" + "".join(cells) + "</tr>")


def _header(models: Sequence[str]) -> str:
    """Two header rows: metric groups, then the clickable columns (data-col = cell index)."""
    top = ['<th rowspan="2" data-col="0" title="sort">case</th>',
           '<th rowspan="2" data-col="1" title="sort">slices</th>']
    bottom, col = [], 2
    for key, label, _ in METRICS:
        span = len(models) + (1 if key == "dice" and len(models) == 2 else 0)
        top.append(f'<th colspan="{span}">{label}</th>')
        for model in models:
            initial = ' data-dir="asc"' if key == "dice" and model == "candidate" else ""
            bottom.append(f'<th data-col="{col}"{initial} class="{model}">{model[:4]}.</th>')
            col += 1
        if span > len(models):
            bottom.append(f'<th data-col="{col}" class="delta">&Delta;</th>')
            col += 1
    top.append(f'<th rowspan="2" data-col="{col}" title="sort">truth ml</th>')
    return f"<thead><tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr></thead>"


def volume_table(cases, cls: str, with_baseline: bool, thresholds: Thresholds) -> str:
    models = ("candidate", "baseline") if with_baseline else ("candidate",)
    rows = "\n".join(_row(c, cls, models, thresholds) for c in sort_worst_first(cases, cls))
    return (f'<table id="{table_id(cls)}" class="sortable">{_header(models)}\n'
            f"<tbody>\n{rows}\n</tbody></table>")


SORT_SCRIPT = """
// Click a column header to sort by it; a second click reverses. Empty cells (n/a) stay last.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th[data-col]").forEach(function (th) {
    th.addEventListener("click", function () {
      var col = Number(th.dataset.col), ascending = th.dataset.dir !== "asc";
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var d = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
        return ascending ? d : -d;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      table.querySelectorAll("th[data-dir]").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = ascending ? "asc" : "desc";
    });
  });
});
"""
