"""The one look of every paper figure, and how figures and their tables are written.

Each method keeps its color in every figure (the Okabe-Ito palette, readable in color-blind
vision and in grayscale print); a mean is a line, its 95% bootstrap interval a translucent
band (or an error bar on a bar or point). Every figure is written as PDF (for the paper) and
PNG (for a quick look), next to a CSV of exactly the numbers it draws.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, and the same output on every machine

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from paper_figures.stats import Estimate  # noqa: E402

OKABE_ITO = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
COLORS = {
    "pods_order1": "#56B4E9",
    "pods_order2": "#0072B2",
    "hds_residual": "#D55E00",
    "hds_mlp": "#E69F00",
    "hds_ensemble": "#882255",
    "apg": "#CC79A7",
    "ppo": "#009E73",
    "ppo_dr": "#7F7F7F",
    "pods_sysid": "#F0E442",
    "lqr": "#8C564B",
    "oracle": "#000000",
    # Figures of benchmark measurements: dynamics models.
    "sim": "#7F7F7F",
    "mlp": "#E69F00",
    "ensemble": "#CC79A7",
    "residual": "#D55E00",
    "sysid": "#0072B2",
    # The study's methods (benchmarks/study.py names them so).
    "hds beta=0.5": "#D55E00",
    "hds beta=0.25": "#E69F00",
    "hds beta=0.5, history 2, 256 rollouts": "#882255",
    "pods": "#0072B2",
    "pods_sysid (physics)": "#009E73",
    "pods_sysid (lab)": "#56B4E9",
    "energy_lqr": "#8C564B",
    # Gradient norms.
    "float32": "#D55E00",
    "float64": "#0072B2",
}
RC = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "lines.linewidth": 1.5,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays text for journals' checkers
}
BAND_ALPHA = 0.2
PANEL_SIZE = (3.4, 2.6)
"""Inches per panel: two panels side by side fill a two-column paper's text width."""


def color(name: str) -> str:
    """A method's color; an unknown name gets a stable one from the palette."""
    if name in COLORS:
        return COLORS[name]
    return OKABE_ITO[sum(map(ord, name)) % len(OKABE_ITO)]


@contextmanager
def panels(rows: int, cols: int, *, panel_size: tuple[float, float] = PANEL_SIZE, **kwargs):
    """A figure of rows x cols panels in the paper's style; yields (figure, 2-d axes).
    `panel_size`: inches per panel, where a figure's content needs other than `PANEL_SIZE`
    (a bar per method needs height for every method)."""
    with plt.rc_context(RC):
        figure, axes = plt.subplots(
            rows,
            cols,
            figsize=(panel_size[0] * cols, panel_size[1] * rows),
            squeeze=False,
            **kwargs,
        )
        try:
            yield figure, axes
        finally:
            plt.close(figure)


def line_with_band(
    ax: Axes, x: Sequence[float], estimates: Sequence[Estimate], *, label: str, name: str, **kw
) -> None:
    """A mean line and its confidence band."""
    c = color(name)
    ax.plot(x, [e.value for e in estimates], color=c, label=label, **kw)
    ax.fill_between(
        x,
        [e.low for e in estimates],
        [e.high for e in estimates],
        color=c,
        alpha=BAND_ALPHA,
        linewidth=0,
    )


def reference_line(ax: Axes, estimate: Estimate, *, label: str, name: str) -> None:
    """A horizontal line for a method that has no x (trained without the swept quantity),
    with its confidence interval as a band across the panel."""
    if not math.isfinite(estimate.value):
        return
    c = color(name)
    ax.axhline(estimate.value, color=c, linestyle="--", linewidth=1.2, label=label)
    ax.axhspan(estimate.low, estimate.high, color=c, alpha=BAND_ALPHA / 2, linewidth=0)


def legend_below(
    figure: Figure, axes: Iterable[Axes], handles: Mapping[str, Artist] | None = None
) -> None:
    """One legend for the whole figure, below it, with every label once (`handles`: labels
    of no plotted artist, e.g. what a bar's shade means)."""
    handles = dict(handles or {})
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(
            handles.values(),
            handles.keys(),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            # As many columns as fit under the panels, about 1.7 inches each.
            ncol=max(1, min(len(handles), int(figure.get_figwidth() / 1.7))),
        )


def save(figure: Figure, out_dir: Path, name: str) -> list[Path]:
    """Writes `name`.pdf and `name`.png in `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.pdf", out_dir / f"{name}.png"]
    with plt.rc_context(RC):
        figure.tight_layout()
        for path in paths:
            # Fixed metadata: the same runs give byte-identical files.
            metadata = {"CreationDate": None} if path.suffix == ".pdf" else {"Software": None}
            figure.savefig(path, metadata=metadata)
    return paths


def write_table(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """A CSV of the numbers a figure draws; floats in full precision, NaN as `nan`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return path
