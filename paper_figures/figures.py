"""The paper's figures, one function each, drawn from finished runs or benchmark JSON.

A run figure takes `found`, the runs a sweep needs matched to their specs (in the sweep's
order: tasks, then methods, then seeds), and writes `<name>.pdf`, `<name>.png` and
`<name>.csv` into `out_dir`; the CSV holds exactly the numbers drawn, one row per point, with
its 95% bootstrap interval over seeds and the number of seeds `n`. Nothing here trains or
measures anything: `paper_figures.make` gets the runs and the JSON first.

    1. learning_curves    return during training vs epochs and vs wall-clock, per task in sim
    2. hds_beta           HDS's real solved share vs beta, beside reference methods' shares
    3. sim_vs_real        every method's solved share in sim and in real
    4. dynamics_models    k-step open-loop error of each dynamics model vs k
    5. gradient_norms     |dV/da| vs horizon, float32/float64, with and without windows
    6. sample_efficiency  real solved share vs real transitions used

Figures 2, 3 and 6 draw solved shares (`eval/solved_sim`, `eval/solved_real`: the share of
held-out starts from which a run solved the task), on an axis from 0 to 1. A run without one
(from before runs recorded it, or with no real) leaves its point out: `nan` in the table, a
note on stderr. The seventh, the study over seeds (real solved shares and the budget curve), is drawn by
`paper_figures.study_figure.study`.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator

from paper_figures import style
from paper_figures.runs import Run, RunSpec
from paper_figures.stats import Estimate, bootstrap, bootstrap_columns, on_common_grid

Found = Mapping[RunSpec, Run]
WALL_CLOCK_POINTS = 50
"""Grid points of a wall-clock curve: seeds differ in their epochs' timestamps."""
SOLVED_REAL = "eval/solved_real"
"""The summary key of the real solved share, the quantity of the real figures' rows."""
SHARE_LIMITS = (-0.02, 1.02)
"""A solved share's axis: 0 to 1, with room for a line or an interval drawn at either end."""


def _groups(found: Found) -> dict[str, dict[Any, list[tuple[RunSpec, Run]]]]:
    """task -> method -> [(spec, run)] over seeds, in the sweep's order."""
    groups: dict[str, dict[Any, list[tuple[RunSpec, Run]]]] = {}
    for spec, run in found.items():
        groups.setdefault(spec.task, {}).setdefault(spec.method, []).append((spec, run))
    return groups


def _families(methods: Mapping[Any, list], key: str) -> tuple[dict[str, list], list]:
    """Splits a task's methods into curves over the swept `key` (methods that vary it,
    grouped by name) and reference methods (the rest)."""
    curves: dict[str, list] = {}
    references = []
    for method in methods:
        if key in method.varied:
            curves.setdefault(method.name, []).append(method)
        else:
            references.append(method)
    return curves, references


def _label(method: Any, pairs: Sequence[tuple[RunSpec, Run]]) -> str:
    """A method's legend text; where the text depends on what ran, it is read from the runs.

    The oracle trains on the twin of the real it is scored against, so its label names that
    real: the profile each run records (`real/profile`, else its config's `env.real_profile`,
    else the one the figure pinned). Where its runs name no profile, or several, the method's
    own label stands.
    """
    if method.facts.get("algo") != "oracle":
        return method.label
    profiles = {run.fact("profile") or spec.profile for spec, run in pairs}
    if len(profiles) != 1 or None in profiles:
        return method.label
    (profile,) = profiles
    return f"oracle (PODS on the {profile} real's twin)"


def _solved_share_in_real(ax, task: str, xlabel: str) -> None:
    """Labels a panel of the solved share in `task`'s real against `xlabel`. The title is the
    task, which names its real where a figure pins one."""
    title = task if task.endswith(" real") else f"{task} (real)"
    ax.set(title=title, xlabel=xlabel, ylabel="solved share in real", ylim=SHARE_LIMITS)


def _finish(figure, axes, out_dir: Path, name: str, header, rows, handles=None) -> list[Path]:
    style.legend_below(figure, axes.flat, handles)
    return [
        *style.save(figure, out_dir, name),
        style.write_table(out_dir / f"{name}.csv", header, rows),
    ]


# -- 1. Learning curves -----------------------------------------------------------------
def learning_curves(found: Found, out_dir: Path) -> list[Path]:
    """Training return (`train/return`, in sim) of every method vs epochs and vs wall-clock.

    Wall-clock is what a practitioner pays, epochs are what an algorithm counts, and the two
    disagree: a second-order PODS epoch does more work than a first-order one.
    """
    header = ("task", "method", "label", "x_axis", "x", "mean", "low", "high", "n")
    rows = []
    groups = _groups(found)
    with style.panels(len(groups), 2) as (figure, axes):
        for (task, methods), (ax_epoch, ax_clock) in zip(groups.items(), axes, strict=True):
            for method, pairs in methods.items():
                runs = [run for _, run in pairs]
                label = _label(method, pairs)
                if any(not run.metrics for run in runs):
                    print(
                        f"note: {label} on {task}: a run has no metrics.jsonl, "
                        "so no learning curve",
                        file=sys.stderr,
                    )
                    continue
                for ax, x_axis, curve in (
                    (ax_epoch, "epoch", _by_epoch(runs)),
                    (ax_clock, "wall_clock_s", _by_wall_clock(runs)),
                ):
                    x, estimates = curve
                    style.line_with_band(ax, x, estimates, label=label, name=method.name)
                    rows += [
                        (task, method.name, label, x_axis, x_i, *e) for x_i, e in zip(x, estimates)
                    ]
            ax_epoch.set(title=f"{task} (sim)", xlabel="epoch", ylabel="return")
            ax_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax_clock.set(
                title=f"{task} (sim)", xlabel="wall-clock (s, without compiling)", ylabel="return"
            )
        return _finish(figure, axes, out_dir, "learning_curves", header, rows)


def _by_epoch(runs: Sequence[Run]) -> tuple[list[int], list[Estimate]]:
    """The return over seeds at each epoch every seed reached."""
    series = [dict(zip(*run.series("train/return"))) for run in runs]
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    return epochs, bootstrap_columns(np.array([[s[e] for e in epochs] for s in series]))


def _by_wall_clock(runs: Sequence[Run]) -> tuple[list[float], list[Estimate]]:
    """The return over seeds against training wall-clock, compilation taken out.

    Compilation lands in a run's first epoch and depends on what the run found compiled (the
    second seed of a multirun finds the first one's functions in memory; a later process
    finds them in the persistent cache), so it would shift seeds apart by minutes. Each
    seed's clock is shifted so that its first epoch lasts as long as its median epoch. That
    takes out all one-off work of the first epoch, so for HDS also its first real-data
    collection and model fit (later refits stay in): exact only once runs log their
    compilation time apart.
    """
    curves = []
    for run in runs:
        clock = dict(zip(*run.series("train/wall_clock_s")))
        returns = dict(zip(*run.series("train/return")))
        epochs = sorted(set(clock) & set(returns))
        times = np.array([clock[e] for e in epochs])
        if times.size > 1:
            times = times - (times[0] - np.median(np.diff(times)))
        curves.append((times, np.array([returns[e] for e in epochs])))
    grid, values = on_common_grid(curves, WALL_CLOCK_POINTS)
    return [float(t) for t in grid], bootstrap_columns(values)


# -- 2. HDS: real solved share vs beta -------------------------------------------------------
def hds_beta(found: Found, out_dir: Path) -> list[Path]:
    """HDS's solved share in `real` (the share of held-out starts it swings up and holds)
    against beta, the share of its rollouts in the learned model, for each model kind; mean
    over seeds with a 95% bootstrap interval. The methods that have no beta are horizontal
    lines (with their interval as a band): PODS trained in sim, PODS on a system-identified
    sim, PPO with domain randomization, and the oracle trained on `real` itself."""
    header = ("task", "method", "label", "beta", "quantity", "mean", "low", "high", "n")
    rows = []
    groups = _groups(found)
    with style.panels(1, len(groups)) as (figure, axes):
        for (task, methods), ax in zip(groups.items(), axes[0], strict=True):
            curves, references = _families(methods, "algo.beta")
            for name, family in curves.items():
                betas = [float(m.value("algo.beta")) for m in family]
                estimates = [_solved(methods[m], "real") for m in family]
                label = _label(family[0], methods[family[0]])
                style.line_with_band(ax, betas, estimates, label=label, name=name, marker="o", ms=3)
                rows += [(task, name, label, b, SOLVED_REAL, *e) for b, e in zip(betas, estimates)]
            for method in references:
                estimate = _solved(methods[method], "real")
                label = _label(method, methods[method])
                style.reference_line(ax, estimate, label=label, name=method.name)
                rows.append((task, method.name, label, "", SOLVED_REAL, *estimate))
            _solved_share_in_real(ax, task, "β (share of rollouts in the model)")
        return _finish(figure, axes, out_dir, "hds_beta", header, rows)


def _estimate(pairs: Sequence[tuple[RunSpec, Run]], key: str) -> Estimate:
    """A summary number over seeds (NaN where a run has none)."""
    return bootstrap([run.number(key) for _, run in pairs])


def _mean(pairs: Sequence[tuple[RunSpec, Run]], key: str) -> float:
    return float(np.mean([run.number(key) for _, run in pairs]))


def _solved(pairs: Sequence[tuple[RunSpec, Run]], testbed: str) -> Estimate:
    """The solved share in `testbed` (`sim` or `real`) over seeds. A run without one (made
    before runs recorded it, or with no real) makes the estimate NaN, which draws nothing;
    stderr names its seeds."""
    key = f"eval/solved_{testbed}"
    lacking = [spec.seed for spec, run in pairs if not np.isfinite(run.number(key))]
    if lacking:
        spec = pairs[0][0]
        print(
            f"note: {spec.method.label} on {spec.task}: no {key} in the runs of seeds "
            f"{lacking}, so no point",
            file=sys.stderr,
        )
    return _estimate(pairs, key)


# -- 3. Sim vs real ---------------------------------------------------------------------
SCORE_ROW_HEIGHT = 0.32
"""Inches of `sim_vs_real` panel height per method: a pair of bars and a two-line label."""
SCORE_PANEL_MARGIN = 0.9
"""Inches of a `sim_vs_real` panel that are not rows: its title, ticks and axis label."""
LABEL_CHARACTERS = 20
"""Characters per line of a method's name beside its bars; a longer name wraps."""


def sim_vs_real(found: Found, out_dir: Path) -> list[Path]:
    """Every method's solved share in sim (light bar) and in real (solid bar): the share of
    held-out starts it swings up and holds, mean over seeds with a 95% bootstrap interval.

    A share is on one scale for every method, task and testbed (0: no start solved, 1:
    every one), with no reference run; the drop from a light to a solid bar is the method's
    sim2real gap.
    """
    header = ("task", "method", "label", "testbed", "quantity", "mean", "low", "high", "n")
    rows = []
    groups = _groups(found)
    # One row per method, its name horizontal beside its bars: the panel grows with the
    # methods, and the names take width, not the height the bars need.
    most = max(len(methods) for methods in groups.values())
    size = (style.PANEL_SIZE[0], SCORE_PANEL_MARGIN + SCORE_ROW_HEIGHT * most)
    height = 0.38
    with style.panels(1, len(groups), panel_size=size) as (figure, axes):
        for (task, methods), ax in zip(groups.items(), axes[0], strict=True):
            names = []
            for i, (method, pairs) in enumerate(methods.items()):
                label = _label(method, pairs)
                names.append(textwrap.fill(label, LABEL_CHARACTERS))
                for offset, testbed, alpha in (
                    (-height / 2, "sim", 0.4),
                    (height / 2, "real", 1.0),
                ):
                    estimate = _solved(pairs, testbed)
                    quantity = f"eval/solved_{testbed}"
                    rows.append((task, method.name, label, testbed, quantity, *estimate))
                    if np.isfinite(estimate.value):
                        ax.barh(
                            i + offset,
                            estimate.value,
                            height,
                            xerr=[
                                [estimate.value - estimate.low],
                                [estimate.high - estimate.value],
                            ],
                            color=style.color(method.name),
                            alpha=alpha,
                            capsize=2,
                            error_kw={"linewidth": 0.8},
                        )
            ax.set_yticks(range(len(methods)), names)
            ax.set_ylim(len(methods) - 0.5, -0.5)  # the sweep's first method on top
            ax.set(title=task, xlabel="solved share", xlim=(0, SHARE_LIMITS[1]))
            ax.grid(axis="y", visible=False)
        handles = {"sim": Patch(color="0.4", alpha=0.4), "real": Patch(color="0.4")}
        return _finish(figure, axes, out_dir, "sim_vs_real", header, rows, handles)


# -- 4. Dynamics models -----------------------------------------------------------------
DYNAMICS_MODELS = {
    "sim": "sim (no learning)",
    "mlp": "MLP",
    "ensemble": "ensemble",
    "residual": "residual",
    "sysid": "sysid",
}
"""The models drawn, and their labels (benchmarks/dynamics_models.py measures a few more
variants, ablations of `mlp`, which the figure leaves to the JSON)."""


def dynamics_models(
    reports: Sequence[dict], out_dir: Path, sysid: Sequence[dict] = ()
) -> list[Path]:
    """Open-loop k-step RMSE vs k on held-out real trajectories, one panel per training-set
    size, from `benchmarks/dynamics_models.py` JSON (one report per seed).

    `sysid` reports (`benchmarks/sysid.py`, one per seed) hold the identified simulator's
    error per training size, in the same shape as a model's (`{"k": [...], "rmse": [...]}`)
    under `results.<size>.identified_sim`; without them the figure has no sysid line.
    """
    if not reports:
        raise ValueError("no dynamics_models reports")
    sizes = list(reports[0]["results"])
    header = ("train_transitions", "model", "label", "k", "mean", "low", "high", "n")
    rows = []
    with style.panels(1, len(sizes)) as (figure, axes):
        for size, ax in zip(sizes, axes[0], strict=True):
            drawn_ks: set[int] = set()
            for model, label in DYNAMICS_MODELS.items():
                source = sysid if model == "sysid" else reports
                errors = [e for e in (_k_step(r, model, size) for r in source) if e is not None]
                if not errors:
                    continue
                ks = errors[0]["k"]
                if any(e["k"] != ks for e in errors):
                    raise ValueError(
                        f"{model}: reports measured different k ({[e['k'] for e in errors]})"
                    )
                estimates = bootstrap_columns(np.array([e["rmse"] for e in errors]))
                style.line_with_band(ax, ks, estimates, label=label, name=model, marker="o", ms=3)
                rows += [(size, model, label, k, *e) for k, e in zip(ks, estimates)]
                drawn_ks.update(ks)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sorted(drawn_ks), [str(k) for k in sorted(drawn_ks)])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(
                title=f"{int(size):,} real transitions", xlabel="k (steps open loop)", ylabel="RMSE"
            )
        return _finish(figure, axes, out_dir, "dynamics_models", header, rows)


def _k_step(report: dict, model: str, size: str) -> dict | None:
    """A model's k-step error for one training size from a benchmark report, if it has one.
    The plain simulator's is measured once, independent of the training size."""
    if model == "sim":
        return report.get("sim")
    key = "identified_sim" if model == "sysid" else model
    return report.get("results", {}).get(size, {}).get(key)


# -- 5. Gradient norms ------------------------------------------------------------------
def gradient_norms(report: dict, out_dir: Path) -> list[Path]:
    """Median |dV/da| over random initial states vs the rollout horizon, from
    `benchmarks/gradient_norms.py` JSON, with a 95% bootstrap interval of the median.

    A gradient that overflowed (null in the JSON) counts as its dtype's largest finite value
    (it is at least that large), so a median can still be taken; the table says how many
    overflowed at each horizon.
    """
    header = ("dtype", "gradient_window", "horizon", "median", "low", "high", "n", "nonfinite")
    rows = []
    with style.panels(1, 1) as (figure, axes):
        ax = axes[0][0]
        for result in report["results"]:
            dtype, window = result["dtype"], result["gradient_window"]
            largest = float(np.finfo(dtype).max)
            norms = np.array(
                [[largest if x is None else x for x in row] for row in result["norms"]]
            )
            estimates = bootstrap_columns(norms.T, statistic=np.median)
            label = f"{dtype}, " + ("no window" if window is None else f"window {window}")
            style.line_with_band(
                ax,
                result["horizons"],
                estimates,
                label=label,
                name=dtype,
                linestyle="-" if window is None else "--",
                marker="o",
                ms=3,
            )
            rows += [
                (dtype, "" if window is None else window, h, *e, bad)
                for h, e, bad in zip(result["horizons"], estimates, result["nonfinite"])
            ]
        ax.set_yscale("log")
        ax.set(
            title=f"{report.get('testbed', '')}: gradient of the return",
            xlabel="horizon (steps)",
            ylabel="median |dV/da|",
        )
        return _finish(figure, axes, out_dir, "gradient_norms", header, rows)


# -- 6. Sample efficiency -----------------------------------------------------------------
def sample_efficiency(found: Found, out_dir: Path) -> list[Path]:
    """Solved share in real (the share of held-out starts swung up and held) against the real
    transitions a method used, for the methods that learn from real data at several budgets,
    mean over seeds with a 95% bootstrap interval; a method trained without real data is a
    horizontal line. x is the mean of the transitions the runs report (`real/transitions`),
    which a method may leave below its budget; the ticks mark the budgets."""
    header = (
        *("task", "method", "label", "budget", "real_transitions", "quantity"),
        *("mean", "low", "high", "n"),
    )
    rows = []
    groups = _groups(found)
    with style.panels(1, len(groups)) as (figure, axes):
        for (task, methods), ax in zip(groups.items(), axes[0], strict=True):
            curves, references = _families(methods, "real.budget")
            swept: set[int] = set()
            for name, family in curves.items():
                budgets = [int(m.value("real.budget")) for m in family]
                used = [_mean(methods[m], "real/transitions") for m in family]
                estimates = [_solved(methods[m], "real") for m in family]
                label = _label(family[0], methods[family[0]])
                style.line_with_band(ax, used, estimates, label=label, name=name, marker="o", ms=3)
                rows += [
                    (task, name, label, b, u, SOLVED_REAL, *e)
                    for b, u, e in zip(budgets, used, estimates)
                ]
                swept.update(budgets)
            for method in references:
                estimate = _solved(methods[method], "real")
                used = _mean(methods[method], "real/transitions")
                label = _label(method, methods[method])
                style.reference_line(ax, estimate, label=label, name=method.name)
                rows.append((task, method.name, label, "", used, SOLVED_REAL, *estimate))
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^3, 3x10^3, ... overlap
            if swept:
                # A log axis over one decade or less labels one power of ten at most: the
                # budgets, labelled in full, say where each point was measured.
                ax.set_xticks(sorted(swept), [f"{b:,}" for b in sorted(swept)])
                ax.xaxis.set_minor_locator(NullLocator())
            _solved_share_in_real(ax, task, "real transitions used")
        return _finish(figure, axes, out_dir, "sample_efficiency", header, rows)


RUN_FIGURES: dict[str, Callable[[Found, Path], list[Path]]] = {
    "learning_curves": learning_curves,
    "hds_beta": hds_beta,
    "sim_vs_real": sim_vs_real,
    "sample_efficiency": sample_efficiency,
}
