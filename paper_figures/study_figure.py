"""The study figure (`study`): each method's real solved share over seeds, and the budget
curve, from `benchmarks/study.py`'s JSON.

Split from `paper_figures.figures`, whose shared pieces (`_finish`, the score panels' sizes)
it draws with; `paper_figures.make` draws it and takes its caption from `study`'s docstring.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullLocator

from paper_figures import style
from paper_figures.figures import LABEL_CHARACTERS, SCORE_PANEL_MARGIN, _finish
from paper_figures.stats import Estimate

STUDY_FAMILIES = {
    "hds beta=0.5": "HDS (beta 0.5)",
    "hds beta=0.25": "HDS (beta 0.25)",
    "pods_sysid (physics)": "PODS + sysid (physics)",
    "pods_sysid (lab)": "PODS + sysid (lab family)",
}
"""The study's methods that use real data, one line over the budgets each."""
STUDY_REFERENCES = {
    "energy_lqr": "classical (energy + LQR)",
    "oracle": "oracle (PODS on the real's twin)",
    "pods": "PODS in sim",
    "ppo_dr": "PPO + DR",
    "apg": "APG",
}


def _study_estimate(spread: Mapping | None) -> Estimate:
    """A study cell's mean and 95% t-interval over seeds (the point where one seed ran)."""
    if not spread:
        return Estimate(np.nan, np.nan, np.nan, 0)
    low, high = spread["ci95"] or (spread["mean"], spread["mean"])
    # A share's t-interval may pass 0 or 1 where most seeds sit there: drawn clipped.
    return Estimate(spread["mean"], max(low, 0.0), min(high, 1.0), spread["n"])


def study(report: dict, out_dir: Path) -> list[Path]:
    """The sim2real study over seeds: each method's solved share on the real (the Brax twin),
    mean and 95% t-interval over seeds with each seed as a dot, and the budget curve, the
    real solved share against the real transitions HDS and PODS + sysid learn from, beside
    the methods that use none as horizontal lines; one row of panels per real.

    From `benchmarks/study.py`'s JSON. Every method of a seed is scored on that seed's same
    held-out starts; the JSON pairs them (HDS against each rival, seed by seed).
    """
    header = ("profile", "method", "budget", "figure", "mean", "low", "high", "n")
    rows = []
    profiles = report["profiles"]
    most = max(len(p["methods"]) for p in profiles.values())
    size = (style.PANEL_SIZE[0], max(style.PANEL_SIZE[1], SCORE_PANEL_MARGIN + 0.3 * most))
    with style.panels(len(profiles), 2, panel_size=size) as (figure, axes):
        for (profile, cells), (bars, curve) in zip(profiles.items(), axes, strict=True):
            methods = cells["methods"]
            for i, (key, cell) in enumerate(methods.items()):
                name, _, budget = key.partition(" @")
                estimate = _study_estimate(cell.get("solved_real"))
                rows.append((profile, name, budget, "solved_real", *estimate))
                color = style.color(name)
                if np.isfinite(estimate.value):
                    bars.barh(
                        i,
                        estimate.value,
                        0.6,
                        xerr=[[estimate.value - estimate.low], [estimate.high - estimate.value]],
                        color=color,
                        alpha=0.5,
                        capsize=2,
                        error_kw={"linewidth": 0.8},
                    )
                    seeds = list(cell["solved_real"]["per_seed"].values())
                    bars.plot(seeds, [i] * len(seeds), "o", color=color, ms=2.5, alpha=0.9)
            labels = [k.replace(" @", ", ") for k in methods]
            bars.set_yticks(
                range(len(methods)), [textwrap.fill(k, LABEL_CHARACTERS) for k in labels]
            )
            bars.set_ylim(len(methods) - 0.5, -0.5)
            bars.set(title=f"{profile} real (Brax twin)", xlabel="solved share", xlim=(0, 1.02))
            bars.grid(axis="y", visible=False)

            budgets: set[int] = set()
            for family, label in STUDY_FAMILIES.items():
                points = sorted(
                    (int(k.partition(" @")[2]), c)
                    for k, c in methods.items()
                    if k.partition(" @")[0] == family
                )
                if not points:
                    continue
                x = [b for b, _ in points]
                estimates = [_study_estimate(c.get("solved_real")) for _, c in points]
                style.line_with_band(
                    curve, x, estimates, label=label, name=family, marker="o", ms=3
                )
                budgets.update(x)
            for name, label in STUDY_REFERENCES.items():
                if name in methods:
                    estimate = _study_estimate(methods[name].get("solved_real"))
                    style.reference_line(curve, estimate, label=label, name=name)
            curve.set_xscale("log")
            if budgets:
                curve.set_xticks(sorted(budgets), [f"{b:,}" for b in sorted(budgets)])
                curve.xaxis.set_minor_locator(NullLocator())
            curve.set(
                title=f"{profile} real: the budget curve",
                xlabel="real transitions",
                ylabel="solved share",
                ylim=(-0.02, 1.02),
            )
        return _finish(figure, axes[:, 1:], out_dir, "study", header, rows)
