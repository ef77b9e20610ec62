"""The whole page: one self-contained HTML file (inline CSS and JS, pictures as data: URIs, the
system's fonts), so it opens by double-click, from disk, with no network and no server."""
from __future__ import annotations

from evaluation.report import sections
from evaluation.report.header import ReportData, header
from evaluation.report.postprocessing import postprocessing_section
from evaluation.report.tables import SORT_SCRIPT

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em;
       color: #222; background: #fff; max-width: 1500px; }
h1 { font-size: 1.5em; margin: 0 0 .5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
.verdict { padding: .6em 1em; border-radius: 6px; margin-bottom: 1em; }
.verdict strong { font-size: 1.3em; } .verdict ul { margin: .3em 0 0; }
.blessed { background: #e3f4e1; border: 2px solid #2ca02c; }
.not-blessed { background: #fde0e0; border: 2px solid #d62728; }
.unknown { background: #f3f3f3; border: 2px solid #999; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dt { font-weight: 600; }
dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .2em .45em; text-align: right; }
th { background: #f4f4f4; }
td.case, th[data-col="0"], table.figures th, #tfma-slices th { text-align: left; }
table.sortable th[data-col] { cursor: pointer; user-select: none; }
table.sortable th[data-dir="asc"]::after { content: " \\25B2"; }
table.sortable th[data-dir="desc"]::after { content: " \\25BC"; }
td.baseline { color: #555; } td.delta { font-style: italic; }
tr.worse td { background: #fff3d6; } tr.below-bar td { background: #fde0e0; }
.flag { font-weight: 700; font-size: .85em; white-space: nowrap; }
.flag.below-bar { color: #b00000; } .flag.worse { color: #8a5a00; }
.worst .row { display: flex; flex-wrap: wrap; gap: 0 1.2em; }
img.slices { width: 100%; image-rendering: pixelated; display: block; }
figure { margin: .4em 0 1em; width: 560px; max-width: 100%; }
figcaption { font-size: .85em; color: #444; }
.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .3em 1.2em; }
.swatch { display: inline-block; width: 1em; height: 1em; margin-right: .35em;
          vertical-align: middle; border: 1px solid #0004; }
pre { background: #f6f6f6; padding: .6em; white-space: pre-wrap; word-break: break-all; }
"""


def render_page(data: ReportData) -> str:
    body = "".join([header(data), sections.volume_tables(data), sections.plot_section(data),
                    postprocessing_section(data),
                    sections.tfma_section(data), sections.worst_slices_section(data),
                    sections.settings_section(data), sections.command_section(data)])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>Evaluation report</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n"
            f"<script>{SORT_SCRIPT}</script>\n</body></html>\n")
