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
"""The study's methods that use real data, one line over the budgets each. A variant of one
(its name the family's and a suffix, e.g. `, history 2, 256 rollouts`) is drawn in the
family's color: its bar hatched, its points on the curve as stars."""
BAR_HEIGHT_PER_METHOD = 0.42
"""Inches of panel per bar: room for a label wrapped on three lines."""
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


def family_of(name: str) -> tuple[str, str]:
    """(the study family a method belongs to, its variant's suffix): `("hds beta=0.5",
    ", history 2, 256 rollouts")`; a method of no family is its own, with no suffix."""
    for family in sorted(STUDY_FAMILIES, key=len, reverse=True):
        if name == family or name.startswith(family + ","):
            return family, name[len(family) :]
    return name, ""


def study(report: dict, out_dir: Path) -> list[Path]:
    """The sim2real study over seeds: each method's solved share on the real (the Brax twin),
    mean and 95% t-interval over seeds with each seed as a dot, and the budget curve, the
    real solved share against the real transitions HDS and PODS + sysid learn from, beside
    the methods that use none as horizontal lines; one row of panels per real. A variant of a
    family (history 2, 256 rollouts) is hatched in its family's color, and a star on the
    curve.

    From `benchmarks/study.py`'s JSON. Every method of a seed is scored on that seed's same
    held-out starts; the JSON pairs them (HDS against each rival, seed by seed).
    """
    header = ("profile", "method", "budget", "figure", "mean", "low", "high", "n")
    rows = []
    profiles = report["profiles"]
    most = max(len(p["methods"]) for p in profiles.values())
    height = SCORE_PANEL_MARGIN + BAR_HEIGHT_PER_METHOD * most
    size = (style.PANEL_SIZE[0], max(style.PANEL_SIZE[1], height))
    with style.panels(len(profiles), 2, panel_size=size) as (figure, axes):
        for (profile, cells), (bars, curve) in zip(profiles.items(), axes, strict=True):
            methods = cells["methods"]
            for i, (key, cell) in enumerate(methods.items()):
                name, _, budget = key.partition(" @")
                estimate = _study_estimate(cell.get("solved_real"))
                rows.append((profile, name, budget, "solved_real", *estimate))
                family, variant = family_of(name)
                color = style.color(family)
                if np.isfinite(estimate.value):
                    bars.barh(
                        i,
                        estimate.value,
                        0.6,
                        xerr=[[estimate.value - estimate.low], [estimate.high - estimate.value]],
                        color=color,
                        alpha=0.5,
                        hatch="///" if variant else None,
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
            budgets.update(_variant_points(curve, methods))
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


def _variant_points(curve, methods: Mapping[str, Mapping]) -> set[int]:
    """The budget curve's stars: each family's variants at their budgets, with the 95%
    interval as an error bar; returns the budgets drawn."""
    budgets = set()
    for key, cell in methods.items():
        name, _, budget = key.partition(" @")
        family, variant = family_of(name)
        if not variant or family not in STUDY_FAMILIES or not budget:
            continue
        estimate = _study_estimate(cell.get("solved_real"))
        if not np.isfinite(estimate.value):
            continue
        curve.errorbar(
            [int(budget)],
            [estimate.value],
            yerr=[[estimate.value - estimate.low], [estimate.high - estimate.value]],
            fmt="*",
            ms=7,
            color=style.color(family),
            capsize=2,
            linewidth=0.8,
            label=STUDY_FAMILIES[family] + variant,
        )
        budgets.add(int(budget))
    return budgets
