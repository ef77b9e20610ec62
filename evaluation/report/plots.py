"""The report's plots as PNG bytes (matplotlib, Agg: no display needed): per-volume Dice,
candidate against baseline as a slope plot, and the distribution of every metric."""
from __future__ import annotations

import io
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

DPI = 80   # small PNGs; the page shows them at their own size
CANDIDATE_COLOUR, BASELINE_COLOUR = "#d95f02", "#7570b3"
# (metric key, axis title) in the order the distribution plot shows them.
DISTRIBUTION_METRICS = (("dice", "Dice"), ("voe", "VOE"), ("rvd", "RVD"),
                        ("assd_mm", "ASSD (mm)"), ("msd_mm", "MSD (mm)"),
                        ("hd95_mm", "HD95 (mm)"))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")   # before pyplot: no display on servers and in CI
    import matplotlib.pyplot as plt
    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def metric_values(cases: Sequence[Dict[str, Any]], model: str, cls: str, key: str
                  ) -> List[Optional[float]]:
    """One value per case (None where the model, class or value is missing)."""
    return [((case.get(model) or {}).get(cls) or {}).get(key) for case in cases]


def _slope_axis(ax, cases, cls: str, bar: Optional[float], tolerance: float):
    candidate = metric_values(cases, "candidate", cls, "dice")
    baseline = metric_values(cases, "baseline", cls, "dice")
    for case, c, b in zip(cases, candidate, baseline):
        if c is None:
            continue
        if b is None:   # no baseline for this volume: the candidate alone
            ax.plot([1], [c], "o", color=CANDIDATE_COLOUR, alpha=0.8)
            continue
        worse, better = c < b - tolerance, c > b + tolerance
        colour = "#d62728" if worse else "#2ca02c" if better else "#888888"
        ax.plot([0, 1], [b, c], "-o", color=colour, alpha=0.8, linewidth=1.2, markersize=4)
        if worse:
            ax.annotate(case["case_id"], (1, c), xytext=(4, 0), textcoords="offset points",
                        fontsize=7, va="center", color=colour)
    if bar is not None:
        ax.axhline(bar, color="black", linestyle="--", linewidth=0.8)
        ax.annotate(f"bar {bar:.2f}", (0.5, bar), xytext=(0, 3), textcoords="offset points",
                    fontsize=7, ha="center")
    ax.set_xticks([0, 1], ["baseline", "candidate"])
    ax.set_xlim(-0.3, 1.5)
    ax.set_title(f"{cls} Dice per volume")


def paired_dice_png(cases, classes: Sequence[str], bar: float, tolerance: float) -> bytes:
    """Slope plot per class: one line per volume from its baseline Dice to its candidate Dice,
    red when worse than the baseline by more than the tolerance, green when better. The bar
    is drawn on liver only: it is what blesses."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(classes), figsize=(3.6 * len(classes), 3.6),
                                squeeze=False)
    for ax, cls in zip(axes[0], classes):
        _slope_axis(ax, cases, cls, bar if cls == "liver" else None, tolerance)
    axes[0][0].set_ylabel("Dice")
    figure.tight_layout()
    return _png(figure)


def _distribution_axis(ax, cases, cls: str, key: str, title: str, with_baseline: bool):
    models = ["candidate"] + (["baseline"] if with_baseline else [])
    data = [np.array([v for v in metric_values(cases, m, cls, key) if v is not None], float)
            for m in models]
    positions = list(range(len(models)))
    shown = [(p, d) for p, d in zip(positions, data) if d.size]
    if shown:
        ax.boxplot([d for _, d in shown], positions=[p for p, _ in shown], widths=0.5,
                   showfliers=False)
    rng = np.random.default_rng(0)   # fixed jitter: the same report twice is the same file
    for p, d, colour in zip(positions, data, (CANDIDATE_COLOUR, BASELINE_COLOUR)):
        ax.plot(p + rng.uniform(-0.12, 0.12, d.size), d, "o", color=colour, alpha=0.7,
                markersize=3)
    ax.set_xticks(positions, [m[:4] + "." for m in models])
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.set_title(f"{cls} {title}", fontsize=9)
    ax.tick_params(labelsize=7)


def distributions_png(cases, classes: Sequence[str], with_baseline: bool) -> bytes:
    """A box plot with the volumes as dots for every metric and class (a row per class);
    undefined values (null distances of empty masks) are left out."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(classes), len(DISTRIBUTION_METRICS),
                                figsize=(1.9 * len(DISTRIBUTION_METRICS), 2.4 * len(classes)),
                                squeeze=False)
    for row, cls in zip(axes, classes):
        for ax, (key, title) in zip(row, DISTRIBUTION_METRICS):
            _distribution_axis(ax, cases, cls, key, title, with_baseline)
    figure.tight_layout()
    return _png(figure)
