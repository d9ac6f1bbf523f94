"""The sim-vs-real table of every method found under a folder of runs, seeds aggregated.

    python -m paper_figures.table outputs/hds_report [--json FILE]

Rows are methods (algorithm, order, beta, model, real budget) per task and real profile (a
gymnasium real by its id), with the env the method trained on; columns the mean over seeds,
with its 95% Student-t interval, of the solved share (of held-out starts) in real and in sim
first, the normalized real score
(S - S_random) / (S_ref - S_random) and the gap closure (S - S_pods) / (S_ref - S_pods) on
solved shares S, then the returns and the same two on returns R, each computed per seed
against the PODS-in-sim run and the reference of the same task and seed (the best policy
known on the real: the oracle or energy_lqr, whichever solves more there), then averaged; plus the real transitions, the training wall-clock, and the wall-clock at which
the training curve (`train/return` in metrics.jsonl) first reaches 90% of the way from the
random policy's sim return to the best `train/return` any run of the task logged (a run that
never gets there counts in the `reached` column, not in the mean). Runs of every size are
pooled: give it one sweep's folder.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import scipy.stats

from paper_figures.runs import Run, find_runs, task_label
from scoring import gap_closure, normalized_score

METHOD_FACTS = ("algo", "order", "beta", "model", "prediction", "budget")


def method_of(run: Run) -> tuple:
    """What distinguishes a method: the facts that apply to its algorithm."""
    algo = run.fact("algo")
    facts = {"algo": algo, "order": run.fact("order")}
    if algo in ("hds",):
        facts |= {"beta": run.fact("beta"), "model": run.fact("model")}
        if run.fact("model") == "ensemble":
            facts["prediction"] = run.fact("prediction") or "mean"
    if algo in ("hds", "pods_sysid"):
        facts["budget"] = run.fact("budget")
    return tuple((name, facts.get(name)) for name in METHOD_FACTS)


def label(method: tuple) -> str:
    facts = dict(method)
    parts = [str(facts["algo"])]
    if facts["order"] is not None and facts["algo"] in ("pods", "oracle", "hds"):
        parts.append(f"order {facts['order']}")
    if facts["beta"] is not None:
        parts.append(f"beta {facts['beta']}")
    if facts["model"] is not None:
        parts.append(str(facts["model"]))
    if facts["prediction"] == "member":
        parts[-1] += " (a member per rollout)"
    if facts["budget"] is not None:
        parts.append(f"budget {facts['budget']}")
    return ", ".join(parts)


def _stats(values: list[float]) -> dict:
    """Mean, standard deviation and the half-width of the mean's 95% Student-t interval
    (`ci95`, None for one value: a single seed says nothing about the spread)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    n = len(finite)
    std = statistics.stdev(finite) if n > 1 else 0.0
    ci95 = float(scipy.stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else None
    return {"mean": statistics.fmean(finite), "std": std, "ci95": ci95, "n": n}


def task_of(run: Run) -> str:
    """The env and the real it is scored on: a profile, or a gymnasium env by its id (which
    has no profile)."""
    if run.summary.get("real/engine") == "gym":
        return f"{run.fact('env')}, {run.summary.get('real/system') or 'gym'} real (gym)"
    return task_label(run.fact("env"), run.fact("profile"))


TARGET_FRACTION = 0.9
"""How far from the random policy's return to the best logged one a curve must get."""
NOT_IN_SIM = ("oracle",)
"""Algorithms whose `train/return` is not a return in sim (the oracle trains on `real`)."""


def sim_curve(run: Run) -> list[tuple[float, float]]:
    """(wall-clock s, train/return) at every logged point of a curve trained in sim."""
    if run.fact("algo") in NOT_IN_SIM:
        return []
    return [
        (r["train/wall_clock_s"], r["train/return"])
        for r in run.metrics
        if r.get("train/return") is not None and r.get("train/wall_clock_s") is not None
    ]


def curve_targets(runs: list[Run]) -> dict[str, float]:
    """Per task: R_random + TARGET_FRACTION (R_best - R_random) in sim, with R_best the best
    `train/return` any run of the task logged and R_random the mean random return."""
    best: dict[str, float] = {}
    random: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        env = task_of(run)
        random[env].append(run.number("eval/return_random_sim"))
        logged = [v for _, v in sim_curve(run) if math.isfinite(v)]
        if logged:
            best[env] = max(best.get(env, -math.inf), max(logged))
    targets = {}
    for env, top in best.items():
        floor = [v for v in random[env] if math.isfinite(v)]
        low = statistics.fmean(floor) if floor else 0.0
        targets[env] = low + TARGET_FRACTION * (top - low)
    return targets


def time_to(run: Run, target: float) -> float | None:
    """Wall-clock (s) of the first logged `train/return` >= target; inf if none reaches it,
    None if it logs no curve in sim (LQR trains nothing, the oracle trains on `real`)."""
    points = sim_curve(run)
    if not points:
        return None
    return next((t for t, value in points if value >= target), math.inf)


REFERENCES = ("oracle", "energy_lqr")
"""The runs that can be a real system's ceiling (`experiments.compare.REFERENCES`)."""


def best_reference(runs: dict[str, Run]) -> Run | None:
    """Of one seed's reference runs, the best policy known on the real: the one that solves
    the most held-out starts there, the higher real return breaking a tie."""

    def rank(run: Run) -> tuple[float, float]:
        solved = run.number("eval/solved_real")
        return (solved if math.isfinite(solved) else -1.0, run.number("eval/return_real"))

    candidates = [runs[name] for name in REFERENCES if name in runs]
    return max(candidates, key=rank) if candidates else None


def trained_on(runs: list[Run]) -> str:
    """The envs a method's runs trained on (`train/env`); "-" for runs from before the key."""
    envs = {run.summary.get("train/env") for run in runs} - {None}
    return ", ".join(sorted(map(str, envs))) or "-"


def rows(runs: list[Run]) -> list[dict]:
    """One row per (task, method), its columns aggregated over seeds."""
    targets = curve_targets(runs)
    by_task_seed: dict[tuple, dict[str, Run]] = defaultdict(dict)
    for run in runs:
        algo = run.fact("algo")
        if algo in ("pods", *REFERENCES):
            by_task_seed[(task_of(run), run.fact("seed"))].setdefault(algo, run)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[(task_of(run), method_of(run))].append(run)

    table = []
    for (env, method), members in sorted(groups.items(), key=lambda x: (x[0][0], label(x[0][1]))):
        columns = defaultdict(list)
        times = [time_to(run, targets[env]) for run in members if env in targets]
        times = [t for t in times if t is not None]
        for run in members:
            references = by_task_seed.get((env, run.fact("seed")), {})
            columns["return_sim"].append(run.number("eval/return_sim"))
            columns["return_real"].append(run.number("eval/return_real"))
            columns["solved_sim"].append(run.number("eval/solved_sim"))
            columns["solved_real"].append(run.number("eval/solved_real"))
            columns["real_transitions"].append(run.number("real/transitions"))
            columns["wall_clock_s"].append(run.number("train/wall_clock_s"))
            reference, pods = best_reference(references), references.get("pods")
            for figure, suffix in (("eval/solved_real", "_solved"), ("eval/return_real", "")):
                value = run.number(figure)
                floor = run.number(
                    "eval/solved_random_real" if suffix else "eval/return_random_real"
                )
                ceiling = reference.number(figure) if reference else math.nan
                sim_only = pods.number(figure) if pods else math.nan
                columns[f"score{suffix}_real"].append(normalized_score(value, floor, ceiling))
                columns[f"gap_closure{suffix}"].append(gap_closure(value, sim_only, ceiling))
        table.append(
            {
                "env": env,
                "method": label(method),
                "trained_on": trained_on(members),
                "seeds": sorted(run.fact("seed") for run in members),
                **{name: _stats(values) for name, values in columns.items()},
                "time_to_target_s": _stats(times),
                "reached_target": f"{sum(map(math.isfinite, times))}/{len(times)}"
                if times
                else "-",
            }
        )
    return table


def markdown(table: list[dict]) -> str:
    def cell(stats: dict, digits: int = 2) -> str:
        if stats["mean"] is None:
            return "-"
        if stats["ci95"] is None:
            return f"{stats['mean']:.{digits}f}"
        return f"{stats['mean']:.{digits}f} ± {stats['ci95']:.{digits}f}"

    header = (
        "| task | method | trained on | seeds | solved real | solved sim | score (solved) "
        "| gap closure "
        "(solved) | return real | return sim | real score | gap closure "
        f"| real transitions | wall-clock (s) | time to {TARGET_FRACTION:.0%} (s) | reached |"
    )
    lines = [header, "|" + " --- |" * 16]
    for row in table:
        lines.append(
            f"| {row['env']} | {row['method']} | {row['trained_on']} | {len(row['seeds'])} "
            f"| {cell(row['solved_real'])} | {cell(row['solved_sim'])} "
            f"| {cell(row['score_solved_real'])} | {cell(row['gap_closure_solved'])} "
            f"| {cell(row['return_real'], 1)} | {cell(row['return_sim'], 1)} "
            f"| {cell(row['score_real'])} | {cell(row['gap_closure'])} "
            f"| {cell(row['real_transitions'], 0)} "
            f"| {cell(row['wall_clock_s'], 0)} | {cell(row['time_to_target_s'], 0)} "
            f"| {row['reached_target']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder of run directories (any depth)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    runs = find_runs(args.runs)
    if not runs:
        print(f"error: no finished run (summary.json) under {args.runs}", file=sys.stderr)
        return 1
    table = rows(runs)
    print(markdown(table))
    print(
        "\n± is the half-width of the 95% Student-t interval of the mean over seeds; scores "
        "and gap closures per seed, on solved shares and on returns, against that seed's PODS "
        "and its best policy known on the real (the oracle or energy_lqr, whichever solves more)"
    )
    for env, target in sorted(curve_targets(runs).items()):
        print(f"{env}: time to {TARGET_FRACTION:.0%} = first train/return >= {target:.2f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
