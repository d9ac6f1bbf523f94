"""paper_figures: every figure drawn from synthetic run directories with known numbers, its
table checked against them; --runs on incomplete runs names what is missing. No training."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from paper_figures import figures, make, style
from paper_figures.runs import Run, RunSpec, facts_of_overrides, find_runs, same_value, select
from paper_figures.stats import Estimate, bootstrap, bootstrap_columns, on_common_grid
from paper_figures.sweeps import (
    HDS_MLP,
    HDS_RESIDUAL,
    ORACLE,
    PODS_1,
    PODS_2,
    PODS_SYSID,
    PPO_DR,
    PRESETS,
    FigureSweep,
    figure_sweeps,
)

TASK = "cartpole_balance"
SEEDS = (0, 1, 2)


def write_run(root: Path, method, seed: int, summary: dict, *, env=TASK, metrics=()) -> Path:
    """A finished run directory of `method`: config from its overrides, `summary` on top."""
    path = root / f"{method.slug}_{env}_seed{seed}"
    (path / ".hydra").mkdir(parents=True)
    system, task = env.rsplit("_", 1)
    config = {"algo": {}, "env": {"system": system, "task": task}, "seed": seed, "real": {}}
    for override in method.overrides:
        key, _, value = override.partition("=")
        value = yaml.safe_load(value)
        if key == "algo":
            config["algo"]["name"] = value
        elif key == "model":
            config["model"] = {"kind": value}
        else:
            group, field = key.split(".")
            config[group][field] = value
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    full = {"algo": config["algo"]["name"], "env": env, "seed": seed, **summary}
    (path / "summary.json").write_text(json.dumps(full))
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return path


def read_table(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def check_row(row: dict, samples) -> None:
    """The row's mean is the mean of `samples`, and its interval brackets it."""
    assert float(row["mean"]) == pytest.approx(np.mean(samples), rel=1e-12, abs=1e-12)
    assert float(row["low"]) <= float(row["mean"]) <= float(row["high"])
    assert int(row["n"]) == len(samples)


def found_for(root: Path, sweep: FigureSweep):
    selection = select(find_runs(root), sweep.specs())
    assert not selection.missing, [s.describe() for s in selection.missing]
    return selection.found


def outputs_written(paths, name: str) -> Path:
    names = {p.name for p in paths}
    assert names == {f"{name}.pdf", f"{name}.png", f"{name}.csv"}
    assert all(p.stat().st_size > 0 for p in paths)
    return next(p for p in paths if p.suffix == ".csv")


# -- Statistics ---------------------------------------------------------------------------
def test_bootstrap_of_a_constant_is_that_constant():
    assert bootstrap([0.1] * 5) == Estimate(0.1, 0.1, 0.1, 5)
    assert bootstrap([3.7], statistic=np.median) == Estimate(3.7, 3.7, 3.7, 1)
    (column,) = bootstrap_columns(np.full((4, 1), -2.3))
    assert column == Estimate(-2.3, -2.3, -2.3, 4)


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    samples = [1.0, 4.0, 2.5, 9.0, 3.0]
    estimate = bootstrap(samples)
    assert estimate.value == pytest.approx(np.mean(samples))
    assert min(samples) <= estimate.low < estimate.value < estimate.high <= max(samples)
    assert bootstrap(samples) == estimate
    wider = bootstrap(samples, level=0.99)
    assert wider.low <= estimate.low and wider.high >= estimate.high


def test_bootstrap_columns_gives_nan_where_a_seed_diverged():
    estimates = bootstrap_columns(np.array([[1.0, np.nan], [2.0, 3.0]]))
    assert estimates[0].value == pytest.approx(1.5)
    assert np.isnan(estimates[1].value)


def test_common_grid_starts_where_every_curve_has_begun_and_holds_finished_ones():
    grid, values = on_common_grid(
        [(np.array([0.0, 10.0]), np.array([0.0, 10.0])), (np.array([2.0, 6.0]), np.array([1, 5]))],
        points=5,
    )
    np.testing.assert_allclose(grid, [2, 4, 6, 8, 10])
    np.testing.assert_allclose(values, [[2, 4, 6, 8, 10], [1, 3, 5, 5, 5]])


# -- Finding runs ---------------------------------------------------------------------------
def test_runs_are_matched_by_facts_with_the_config_as_fallback(tmp_path):
    write_run(tmp_path, PODS_1, 0, {"eval/return_real": 1.0})  # order only in the config
    write_run(tmp_path, PODS_2, 0, {"algo/order": 2, "eval/return_real": 2.0})
    specs = [RunSpec(PODS_1, TASK, 0), RunSpec(PODS_2, TASK, 0), RunSpec(PODS_2, TASK, 1)]
    selection = select(find_runs(tmp_path), specs)
    assert [run.summary["eval/return_real"] for run in selection.found.values()] == [1.0, 2.0]
    assert selection.missing == [RunSpec(PODS_2, TASK, 1)]
    assert same_value("0.25", 0.25) and same_value("2", 2) and not same_value("mlp", None)


def test_unreadable_runs_are_skipped_and_named(tmp_path, capsys):
    good = write_run(tmp_path, PODS_1, 0, {})
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    assert [run.path for run in find_runs(tmp_path)] == [good]
    assert "broken" in capsys.readouterr().err


# -- Figures ------------------------------------------------------------------------------
def test_learning_curves_table_holds_the_seed_means(tmp_path):
    sweep = FigureSweep("learning_curves", (TASK,), (PODS_1, PODS_2), SEEDS)
    slopes = {PODS_1.name: 1.0, PODS_2.name: 3.0}

    def true_return(method, seed, epoch):
        return slopes[method.name] * epoch + seed

    for method in (PODS_1, PODS_2):
        for seed in SEEDS:
            # Epochs take 2 s; seed 0 also compiles for 100 s in its first epoch, which the
            # wall-clock axis takes out. Seed 2 runs one epoch longer than the others.
            compile_s = 100.0 if seed == 0 else 0.0
            metrics = [
                {
                    "epoch": e,
                    "train/return": true_return(method, seed, e),
                    "train/wall_clock_s": compile_s + 2.0 * (e + 1),
                }
                for e in range(4 if seed == 2 else 3)
            ]
            write_run(tmp_path / "runs", method, seed, {}, metrics=metrics)

    paths = figures.learning_curves(found_for(tmp_path / "runs", sweep), tmp_path / "out")
    rows = read_table(outputs_written(paths, "learning_curves"))
    for method in (PODS_1, PODS_2):
        by_epoch = [r for r in rows if r["method"] == method.name and r["x_axis"] == "epoch"]
        assert [int(r["x"]) for r in by_epoch] == [0, 1, 2]  # epochs every seed reached
        for row in by_epoch:
            check_row(row, [true_return(method, s, int(row["x"])) for s in SEEDS])

        by_clock = [r for r in rows if r["method"] == method.name and r["x_axis"] == "wall_clock_s"]
        assert float(by_clock[0]["x"]) == 2.0 and float(by_clock[-1]["x"]) == 8.0
        for row in by_clock:
            epoch = float(row["x"]) / 2.0 - 1.0  # linear between epochs...
            last = {s: 3.0 if s == 2 else 2.0 for s in SEEDS}  # ...held after a seed's end
            check_row(row, [true_return(method, s, min(epoch, last[s])) for s in SEEDS])


def evaluated_summary(sim: float, real: float) -> dict:
    """A run's evaluation: solved shares `sim` and `real`, beside returns on another scale
    (100 times the share, plus 7), which a figure of solved shares must not draw."""
    return {
        "eval/solved_sim": sim,
        "eval/solved_real": real,
        "eval/return_sim": 100.0 * sim + 7.0,
        "eval/return_real": 100.0 * real + 7.0,
        "eval/return_random_sim": 0.0,
        "eval/return_random_real": 2.0,
    }


def test_hds_beta_table_holds_the_real_solved_shares(tmp_path):
    betas = (0.25, 0.75)
    methods = (*(HDS_MLP.at("algo.beta", b) for b in betas), ORACLE)
    sweep = FigureSweep("hds_beta", (TASK,), methods, SEEDS)
    real = {}
    for i, method in enumerate(methods):
        for seed in SEEDS:
            real[method, seed] = 0.3 * i + 0.1 * seed**2
            summary = evaluated_summary(sim=1.0, real=real[method, seed])
            if method is not ORACLE:
                summary |= {"hds/beta": float(method.value("algo.beta")), "model/kind": "mlp"}
            write_run(tmp_path / "runs", method, seed, summary)

    paths = figures.hds_beta(found_for(tmp_path / "runs", sweep), tmp_path / "out")
    rows = read_table(outputs_written(paths, "hds_beta"))
    assert [(r["method"], r["beta"], r["quantity"]) for r in rows] == [
        ("hds_mlp", "0.25", "eval/solved_real"),
        ("hds_mlp", "0.75", "eval/solved_real"),
        ("oracle", "", "eval/solved_real"),
    ]
    for row, method in zip(rows, methods):
        check_row(row, [real[method, s] for s in SEEDS])


def test_sim_vs_real_table_holds_the_solved_shares_in_sim_and_in_real(tmp_path):
    sweep = FigureSweep("sim_vs_real", (TASK,), (PODS_1, PODS_2, ORACLE), SEEDS, ORACLE)
    shares = {
        PODS_1: lambda seed: (0.5 + 0.1 * seed, 0.1 * seed),
        PODS_2: lambda seed: (1.0, 0.25),
        ORACLE: lambda seed: (0.4, 0.9 - 0.2 * seed),
    }
    for method, share in shares.items():
        for seed in SEEDS:
            sim, real = share(seed)
            write_run(tmp_path / "runs", method, seed, evaluated_summary(sim, real))

    paths = figures.sim_vs_real(found_for(tmp_path / "runs", sweep), tmp_path / "out")
    rows = read_table(outputs_written(paths, "sim_vs_real"))
    assert [(r["method"], r["testbed"], r["quantity"]) for r in rows] == [
        (method.name, testbed, f"eval/solved_{testbed}")
        for method in shares
        for testbed in ("sim", "real")
    ]
    by_bar = {(r["method"], r["testbed"]): r for r in rows}
    for method, share in shares.items():
        check_row(by_bar[method.name, "sim"], [share(s)[0] for s in SEEDS])
        check_row(by_bar[method.name, "real"], [share(s)[1] for s in SEEDS])


def test_sample_efficiency_table_holds_the_real_solved_shares_and_transitions(tmp_path):
    budgets = (1000, 5000)
    curve = tuple(HDS_RESIDUAL.at("real.budget", b) for b in budgets)
    sweep = FigureSweep("sample_efficiency", (TASK,), (*curve, PPO_DR, ORACLE), SEEDS, ORACLE)
    for seed in SEEDS:
        write_run(tmp_path / "runs", ORACLE, seed, evaluated_summary(sim=0.0, real=1.0))
        write_run(
            tmp_path / "runs", PPO_DR, seed, {**evaluated_summary(0.0, 0.1), "real/transitions": 0}
        )
        for budget, method in zip(budgets, curve):
            summary = evaluated_summary(0.0, budget / 10_000 + 0.1 * seed)
            write_run(
                tmp_path / "runs", method, seed, {**summary, "real/transitions": budget - seed}
            )

    paths = figures.sample_efficiency(found_for(tmp_path / "runs", sweep), tmp_path / "out")
    rows = read_table(outputs_written(paths, "sample_efficiency"))
    assert [(r["method"], r["budget"], r["quantity"]) for r in rows] == [
        ("hds_residual", "1000", "eval/solved_real"),
        ("hds_residual", "5000", "eval/solved_real"),
        ("ppo_dr", "", "eval/solved_real"),
        ("oracle", "", "eval/solved_real"),
    ]
    for row, budget in zip(rows, budgets):
        check_row(row, [budget / 10_000 + 0.1 * s for s in SEEDS])
        assert float(row["real_transitions"]) == pytest.approx(budget - 1)
    check_row(rows[2], [0.1] * 3)
    check_row(rows[3], [1.0] * 3)


def test_runs_with_their_own_real_scores_draw_without_the_oracle(tmp_path, capsys):
    """`--runs` on runs that carry `eval/score_real` needs no oracle runs (the sweep's
    normalizer); the figure then draws their solved shares without the oracle's line."""
    sweep = figure_sweeps(PRESETS["smoke"])["sample_efficiency"]
    expected = {}
    for spec in sweep.specs():
        if spec.method == ORACLE:
            continue
        expected[spec] = 0.1 * spec.seed + (0.5 if spec.method is PPO_DR else 0.2)
        summary = {
            "eval/score_real": 0.9,
            "eval/solved_real": expected[spec],
            "real/transitions": 100 * (spec.seed + 1),
        }
        write_run(tmp_path / "runs", spec.method, spec.seed, summary, env=spec.env)

    status = make.main(
        ["sample_efficiency", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    )
    assert status == 0, capsys.readouterr().err
    rows = read_table(tmp_path / "out" / "sample_efficiency.csv")
    ppo = next(r for r in rows if r["method"] == "ppo_dr")
    check_row(ppo, [expected[s] for s in expected if s.method is PPO_DR])
    assert "oracle" not in {r["method"] for r in rows}  # no oracle run, so no ceiling line


LACKING = "hds_beta", "sim_vs_real", "sample_efficiency"


@pytest.mark.parametrize("figure", LACKING)
def test_a_run_without_a_solved_share_leaves_its_point_out(tmp_path, capsys, drawn, figure):
    """A run from before runs recorded solved shares (a method's seed 1 here, and every seed
    of PPO + DR) is `nan` in the table and absent from the figure; the figure still draws
    the rest, on a share axis from 0 to 1, and stderr names what it left out."""
    sweep = figure_sweeps(PRESETS["smoke"])[figure]
    old = sweep.methods[0]

    def summary_of(spec):
        summary = {
            **evaluated_summary(sim=0.5, real=0.2 + 0.1 * spec.seed),
            "real/transitions": 100 * (spec.seed + 1),
        }
        if "algo.beta" in spec.method.varied:
            summary["hds/beta"] = float(spec.method.value("algo.beta"))
        if spec.method is PPO_DR or (spec.method is old and spec.seed == 1):
            del summary["eval/solved_sim"], summary["eval/solved_real"]
        return summary

    write_sweep_runs(tmp_path / "runs", sweep, summary_of)
    paths = getattr(figures, figure)(found_for(tmp_path / "runs", sweep), tmp_path / "out")
    rows = read_table(outputs_written(paths, figure))
    err = capsys.readouterr().err
    assert f"note: {old.label} on {TASK}: no eval/solved_real in the runs of seeds [1]" in err
    assert f"note: {PPO_DR.label} on {TASK}: no eval/solved_real in the runs of seeds [0, 1]" in err
    columns = {"algo.beta": "beta", "real.budget": "budget"}

    def is_old(row):
        return row["method"] == old.name and all(
            float(row[columns[key]]) == float(old.value(key)) for key in old.varied
        )

    assert sum(map(is_old, rows)) == (2 if figure == "sim_vs_real" else 1)
    for row in rows:
        if row["method"] == PPO_DR.name or is_old(row):
            assert row["mean"] == row["low"] == row["high"] == "nan"
            assert row["n"] == str(len(sweep.seeds))
        elif row["quantity"] == "eval/solved_real":
            check_row(row, [0.2 + 0.1 * s for s in sweep.seeds])
        else:
            check_row(row, [0.5] * len(sweep.seeds))

    (panel,) = drawn[figure].panels
    axis = "x" if figure == "sim_vs_real" else "y"
    assert panel[f"{axis}label"] in ("solved share", "solved share in real")
    assert panel[f"{axis}lim"] == pytest.approx((0.0 if axis == "x" else -0.02, 1.02))
    assert PPO_DR.label not in drawn[figure].legend  # a reference line with no share


def dynamics_report(offset: float, sizes=("500", "2000")) -> dict:
    ks = [1, 10, 50]
    entry = lambda scale: {"k": ks, "rmse": [scale * k + offset for k in ks]}  # noqa: E731
    return {
        "sim": entry(1.0),
        "results": {
            size: {"mlp": entry(0.1), "ensemble": entry(0.05), "residual": entry(0.01)}
            for size in sizes
        },
    }


def test_dynamics_models_table_with_and_without_sysid(tmp_path):
    reports = [dynamics_report(0.0), dynamics_report(0.5)]
    paths = figures.dynamics_models(reports, tmp_path / "without")
    rows = read_table(outputs_written(paths, "dynamics_models"))
    assert {r["model"] for r in rows} == {"sim", "mlp", "ensemble", "residual"}
    assert {r["train_transitions"] for r in rows} == {"500", "2000"}
    for row in rows:
        scale = {"sim": 1.0, "mlp": 0.1, "ensemble": 0.05, "residual": 0.01}[row["model"]]
        check_row(row, [scale * int(row["k"]) + offset for offset in (0.0, 0.5)])

    # benchmarks/sysid.py's shape: the identified simulator's error per training size.
    sysid = [
        {
            "sim": {"k": [1, 10, 50], "rmse": [9.0, 9.0, 9.0]},  # the dynamics reports' is drawn
            "results": {
                size: {"identified_sim": {"k": [1, 10, 50], "rmse": [0.2, 0.3, scale]}}
                for size, scale in (("500", 0.4), ("2000", 0.25))
            },
        }
    ]
    paths = figures.dynamics_models(reports, tmp_path / "with", sysid)
    rows = read_table(outputs_written(paths, "dynamics_models"))
    sysid_rows = {(r["train_transitions"], r["k"]): r for r in rows if r["model"] == "sysid"}
    assert len(sysid_rows) == 6  # a sysid line in both panels
    check_row(sysid_rows[("500", "50")], [0.4])
    check_row(sysid_rows[("2000", "50")], [0.25])
    sim_rows = [r for r in rows if r["model"] == "sim" and r["k"] == "1"]
    for row in sim_rows:
        check_row(row, [1.0, 1.5])


def test_gradient_norms_median_counts_overflow_as_the_largest_float(tmp_path):
    report = {
        "testbed": "cartpole_swingup_sim",
        "results": [
            {
                "dtype": "float32",
                "gradient_window": None,
                "horizons": [10, 200],
                "norms": [[1.0, 2.0, 4.0], [5.0, None, None]],
                "nonfinite": [0, 2],
            },
            {
                "dtype": "float64",
                "gradient_window": 20,
                "horizons": [10, 200],
                "norms": [[1.0, 1.0, 1.0], [3.0, 1.0, 2.0]],
                "nonfinite": [0, 0],
            },
        ],
    }
    paths = figures.gradient_norms(report, tmp_path)
    rows = read_table(outputs_written(paths, "gradient_norms"))
    assert [(r["dtype"], r["gradient_window"], r["horizon"]) for r in rows] == [
        ("float32", "", "10"),
        ("float32", "", "200"),
        ("float64", "20", "10"),
        ("float64", "20", "200"),
    ]
    assert [float(r["median"]) for r in rows] == [2.0, float(np.finfo("float32").max), 1.0, 2.0]
    assert [r["nonfinite"] for r in rows] == ["0", "2", "0", "0"]
    assert float(rows[0]["low"]) <= 2.0 <= float(rows[0]["high"])


# -- The command line ---------------------------------------------------------------------
def test_runs_dir_with_missing_runs_names_each_and_fails(tmp_path, capsys):
    sweep = figure_sweeps(PRESETS["smoke"])["learning_curves"]
    specs = sweep.specs()
    present = specs[0]
    metrics = [{"epoch": 0, "train/return": 1.0, "train/wall_clock_s": 1.0}]
    write_run(tmp_path / "runs", present.method, present.seed, {}, env=present.env, metrics=metrics)

    status = make.main(
        ["learning_curves", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    )
    assert status == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"missing run (learning_curves): {s.describe()}" for s in specs[1:]]
    assert "PODS (2nd order) on cartpole_balance, seed 1  [algo=pods algo.order=2" in "\n".join(
        lines
    )
    assert not (tmp_path / "out").exists()


def test_runs_dir_with_every_run_draws_the_figure(tmp_path, capsys):
    sweep = figure_sweeps(PRESETS["smoke"])["learning_curves"]
    for spec in sweep.specs():
        metrics = [
            {"epoch": e, "train/return": e + spec.seed, "train/wall_clock_s": 1.0 + e}
            for e in range(3)
        ]
        write_run(tmp_path / "runs", spec.method, spec.seed, {}, env=spec.env, metrics=metrics)
    status = make.main(
        ["learning_curves", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    )
    assert status == 0, capsys.readouterr().err
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in written) == [
        "learning_curves.csv",
        "learning_curves.json",
        "learning_curves.pdf",
        "learning_curves.png",
    ]
    # The provenance sidecar the docs require of every committed figure.
    record = json.loads((tmp_path / "out" / "learning_curves.json").read_text())
    assert record["caption"].startswith("Training return")
    assert record["command"].startswith("python -m paper_figures.make learning_curves --runs ")
    assert record["commit"] and record["date"] and record["machine"]


def test_missing_measurement_is_named_with_its_command(tmp_path, capsys):
    status = make.main(["gradient_norms", "--runs", str(tmp_path), "--out", str(tmp_path / "out")])
    assert status == 1
    err = capsys.readouterr().err
    assert "missing measurement (gradient_norms)" in err
    assert "benchmarks/gradient_norms.py" in err and "--out" in err


def test_sweep_jobs_make_each_missing_run_in_a_predictable_directory(tmp_path):
    preset = PRESETS["smoke"]
    sweep = figure_sweeps(preset)["hds_beta"]
    method = HDS_RESIDUAL.at("algo.beta", 0.75)
    specs = [RunSpec(method, TASK, 0), RunSpec(method, TASK, 1), RunSpec(PODS_2, TASK, 1)]
    jobs = make.sweep_jobs(sweep, specs, make.Session(preset, tmp_path, tmp_path))
    assert len(jobs) == 2  # one multirun per method and task, over its missing seeds
    assert jobs[0].name == "hds_beta-hds_residual_beta0.75_cartpole_balance"
    assert jobs[0].folder == tmp_path / "hds_beta"
    hds, pods = (job.command for job in jobs)
    assert hds[2:4] == ("experiments.train", "-m")
    assert {"algo=hds", "model=residual", "algo.beta=0.75", f"env={TASK}", "seed=0,1"} <= set(hds)
    assert "seed=1" in pods and "algo.order=2" in pods
    assert f"hydra.sweep.dir={tmp_path / 'hds_beta'}" in hds
    assert "hydra.sweep.subdir=hds_residual_beta0.75_cartpole_balance_seed${seed}" in hds
    # Every training size of the preset, and the run's facts, appear on the command line.
    assert set(preset.overrides_for(method)) <= set(hds)
    # A multirun's seeds train as one program where they can; a launcher given is kept.
    assert "launcher=seed_batch" in hds and "launcher=seed_batch" in pods
    session = make.Session(preset, tmp_path, tmp_path, extra=("launcher=local_parallel",))
    (command, _) = (job.command for job in make.sweep_jobs(sweep, specs, session))
    assert "launcher=local_parallel" in command and "launcher=seed_batch" not in command


def _jobs_of_plan(jobs):
    """The (facts, seed) of every run the planned multiruns make, with repeats."""
    made = []
    for job in jobs:
        if "experiments.train" not in job.command:
            continue
        overrides = dict(o.partition("=")[::2] for o in job.command if "=" in o)
        facts = {**facts_of_overrides(job.command[4:]), "seed": None}
        for seed in overrides["seed"].split(","):
            made.append(frozenset({**facts, "seed": seed}.items()))
    return made


def test_plan_makes_each_missing_run_once_and_skips_what_exists(tmp_path):
    """Runs several figures draw (PODS in the curves and the bars) are planned once; a run
    or measurement already under the root is not planned at all."""
    session = make.Session(PRESETS["smoke"], tmp_path, tmp_path / "out")
    written = write_run(tmp_path / "learning_curves", PODS_1, 0, {})
    (tmp_path / "gradient_norms").mkdir()
    (tmp_path / "gradient_norms" / "gradient_norms.json").write_text("{}")

    jobs = make.plan(make.FIGURES, session)
    made = _jobs_of_plan(jobs)
    assert len(made) == len(set(made))  # no run made twice
    needed = {
        frozenset({**spec.facts, "seed": str(spec.seed)}.items())
        for sweep in figure_sweeps(session.preset).values()
        for spec in sweep.specs()
    }
    assert set(made) == needed - {
        frozenset({**RunSpec(PODS_1, TASK, 0).facts, "seed": "0"}.items())
    }
    assert written.exists()
    scripts = [job.command[1] for job in jobs if "experiments.train" not in job.command]
    assert "benchmarks/gradient_norms.py" not in scripts
    assert sorted(scripts).count("benchmarks/dynamics_models.py") == len(session.preset.seeds)
    assert len({job.name for job in jobs}) == len(jobs)  # one log file per job


def test_execute_runs_jobs_at_once_and_reports_the_failed(tmp_path):
    """With jobs=2 the two first jobs run side by side (each waits for the other's file, in a
    folder `execute` makes for them); a failing job is returned, its output kept in its log."""
    wait_for_other = (
        "import pathlib, sys, time; d = pathlib.Path(sys.argv[1]); (d / sys.argv[2]).touch(); "
        "deadline = time.time() + 60\n"
        "while not (d / sys.argv[3]).exists():\n"
        "    time.sleep(0.05)\n"
        "    if time.time() > deadline: sys.exit('the other job never started')"
    )
    folder = tmp_path / "made" / "for the jobs"
    pair = [
        make.Job(name, (sys.executable, "-c", wait_for_other, str(folder), mine, other), folder)
        for name, mine, other in (("a", "a.started", "b.started"), ("b", "b.started", "a.started"))
    ]
    fail = (sys.executable, "-c", "print('bad input'); raise SystemExit(3)")
    broken = make.Job("broken", fail, tmp_path)
    session = make.Session(PRESETS["smoke"], tmp_path, tmp_path / "out", jobs=2)
    failed = make.execute([*pair, broken], session)
    assert failed == [broken]
    assert "bad input" in (tmp_path / "logs" / "broken.log").read_text()
    assert (folder / "a.started").exists() and (folder / "b.started").exists()


def test_a_run_is_read_back_as_written(tmp_path):
    path = write_run(tmp_path, HDS_MLP, 3, {"eval/return_real": 4.5, "hds/beta": 0.25})
    run = Run.load(path)
    assert (run.fact("algo"), run.fact("env"), run.fact("seed")) == ("hds", TASK, 3)
    assert (run.fact("beta"), run.fact("model"), run.fact("budget")) == (0.25, "mlp", 5000)
    assert run.number("eval/return_real") == 4.5 and np.isnan(run.number("eval/score_real"))


# The paper preset's ~100 multiruns take 40 s to compose: the slow suite checks them.
@pytest.mark.parametrize(
    "preset",
    [pytest.param(p, marks=pytest.mark.slow) if p == "paper" else p for p in sorted(PRESETS)],
)
def test_every_run_a_preset_launches_composes_and_passes_the_config_checks(preset, tmp_path):
    """Each multirun `make` would launch, composed in-process (at its first seed: seeds
    change no key): every override exists in its algorithm's schema, every value is in range."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from experiments.train import check_config

    session = make.Session(PRESETS[preset], tmp_path, tmp_path)
    commands = [
        command
        for sweep in figure_sweeps(session.preset).values()
        for command in (job.command for job in make.sweep_jobs(sweep, sweep.specs(), session))
    ]
    assert commands
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        for command in commands:
            overrides = [o for o in command[command.index("-m", 2) + 1 :] if "hydra." not in o]
            first_seed = [o.split(",")[0] if o.startswith("seed=") else o for o in overrides]
            check_config(compose(config_name="config", overrides=first_seed))


def test_a_task_scored_against_two_reals_is_two_panels_of_its_own_runs(tmp_path):
    profiles = {TASK: ("lab", "friction")}
    sweep = FigureSweep("sim_vs_real", (TASK,), (PODS_2, ORACLE), SEEDS, ORACLE, profiles)
    for profile, share in (("lab", 0.25), ("friction", 0.5)):
        for seed in SEEDS:
            for method, real in ((PODS_2, share), (ORACLE, 1.0)):
                path = write_run(
                    tmp_path / "runs" / profile,
                    method,
                    seed,
                    {**evaluated_summary(sim=0.75, real=real), "real/profile": profile},
                )
                assert Run.load(path).fact("profile") == profile
    found = found_for(tmp_path / "runs", sweep)
    assert {spec.profile for spec in found} == {"lab", "friction"}
    assert all(run.summary["real/profile"] == spec.profile for spec, run in found.items())
    paths = figures.sim_vs_real(found, tmp_path / "out")
    rows = {
        (r["task"], r["method"], r["testbed"]): r
        for r in read_table(outputs_written(paths, "sim_vs_real"))
    }
    # Each panel holds its own real's runs.
    check_row(rows[f"{TASK}, lab real", "pods_order2", "real"], [0.25] * 3)
    check_row(rows[f"{TASK}, friction real", "pods_order2", "real"], [0.5] * 3)
    # The job that makes a missing one names the profile on its command and in its folder.
    spec = RunSpec(PODS_2, TASK, 1, "friction")
    (job,) = make.sweep_jobs(sweep, [spec], make.Session(PRESETS["cpu"], tmp_path, tmp_path))
    assert "env.real_profile=friction" in job.command
    assert f"hydra.sweep.subdir=pods_order2_{TASK}_friction_seed${{seed}}" in job.command


def test_the_presets_episode_lengths_are_the_env_configs():
    from omegaconf import OmegaConf

    from paper_figures.sweeps import EPISODE_LENGTHS

    conf = Path(__file__).parents[1] / "experiments" / "conf" / "env"
    for task, length in EPISODE_LENGTHS.items():
        assert OmegaConf.load(conf / f"{task}.yaml").episode_length == length, task


# -- How the figures look -------------------------------------------------------------------
@dataclasses.dataclass
class Drawn:
    """What a figure showed when saved: its legend, and per panel its ticks and its share of
    the saved image (which `bbox_inches="tight"` crops to the panels, labels and legend)."""

    legend: list[str]
    panels: list[dict]


@pytest.fixture
def drawn(monkeypatch) -> dict[str, Drawn]:
    """Figure name -> what it drew, read off the figure as `style.save` writes it."""
    seen: dict[str, Drawn] = {}
    save = style.save

    def save_and_look(figure, out_dir, name):
        paths = save(figure, out_dir, name)
        renderer = figure.canvas.get_renderer()
        image = figure.get_tightbbox(renderer)  # inches
        panels = []
        for ax in figure.axes:
            box = ax.get_window_extent(renderer)  # pixels
            panels.append(
                {
                    "title": ax.get_title(),
                    "xlabel": ax.get_xlabel(),
                    "ylabel": ax.get_ylabel(),
                    "xlim": ax.get_xlim(),
                    "ylim": ax.get_ylim(),
                    "ylabels": [t.get_text() for t in ax.get_yticklabels()],
                    "xticks": list(ax.get_xticks()),
                    "xlabels": [t.get_text() for t in ax.get_xticklabels()],
                    "minor_xticks": list(ax.xaxis.get_minorticklocs()),
                    "height_share": box.height / (image.height * figure.dpi),
                    "width_share": box.width / (image.width * figure.dpi),
                }
            )
        legend = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
        seen[name] = Drawn(legend, panels)
        return paths

    monkeypatch.setattr(style, "save", save_and_look)
    return seen


def write_sweep_runs(root: Path, sweep: FigureSweep, summary_of) -> None:
    """A run for every spec of `sweep`, its summary `summary_of(spec)` and its profile."""
    for spec in sweep.specs():
        summary = {**summary_of(spec), "real/profile": spec.profile}
        write_run(root / str(spec.profile), spec.method, spec.seed, summary, env=spec.env)


def test_sim_vs_real_names_the_methods_beside_bars_that_keep_most_of_the_figure(tmp_path, drawn):
    sweep = figure_sweeps(PRESETS["cpu"])["sim_vs_real"]  # the longest names: HDS (ensemble, ...)
    scale = {method: i for i, method in enumerate(sweep.methods)}
    write_sweep_runs(
        tmp_path / "runs",
        sweep,
        lambda spec: evaluated_summary(sim=0.1 * scale[spec.method], real=0.2 * spec.seed),
    )
    figures.sim_vs_real(found_for(tmp_path / "runs", sweep), tmp_path / "out")

    (panel,) = drawn["sim_vs_real"].panels
    names = [label.replace("\n", " ") for label in panel["ylabels"]]
    expected = [m.label for m in sweep.methods if m is not ORACLE and m.runs_on(sweep.tasks[0])]
    assert names == [*expected, "oracle (PODS on the lab real's twin)"]
    assert max(len(line) for label in panel["ylabels"] for line in label.split("\n")) <= 20
    assert panel["height_share"] >= 0.5 and panel["width_share"] >= 0.5, panel
    assert drawn["sim_vs_real"].legend == ["sim", "real"]


@pytest.mark.parametrize("budgets", [(1000, 5000), (1000, 2000, 5000, 10000, 20000)])
def test_sample_efficiency_ticks_the_budgets_with_their_values(tmp_path, drawn, budgets):
    curves = tuple(m.at("real.budget", b) for m in (HDS_RESIDUAL, PODS_SYSID) for b in budgets)
    sweep = FigureSweep("sample_efficiency", (TASK,), (*curves, PPO_DR, ORACLE), SEEDS, ORACLE)
    for seed in SEEDS:
        write_run(tmp_path / "runs", ORACLE, seed, evaluated_summary(sim=0.0, real=1.0))
        write_run(
            tmp_path / "runs", PPO_DR, seed, {**evaluated_summary(0.0, 0.1), "real/transitions": 0}
        )
        for method in curves:
            budget = int(method.value("real.budget"))
            summary = {
                **evaluated_summary(0.0, budget / 20_000),
                "real/transitions": budget - seed,
            }
            write_run(tmp_path / "runs", method, seed, summary)
    figures.sample_efficiency(found_for(tmp_path / "runs", sweep), tmp_path / "out")

    (panel,) = drawn["sample_efficiency"].panels
    assert panel["xticks"] == pytest.approx(budgets)
    assert panel["xlabels"] == [f"{b:,}" for b in budgets]
    assert panel["minor_xticks"] == []  # no unlabelled tick to read as a budget
    # Without a profile in its runs the oracle keeps the method's own label.
    assert ORACLE.label in drawn["sample_efficiency"].legend


@pytest.mark.parametrize("figure", ["hds_beta", "sample_efficiency"])
def test_the_oracle_is_labelled_by_the_real_whose_twin_it_trained_on(tmp_path, drawn, figure):
    sweep = dataclasses.replace(
        figure_sweeps(PRESETS["smoke"])[figure], profiles={TASK: ("lab", "friction")}
    )

    def summary_of(spec):
        return {
            **evaluated_summary(sim=1.0, real=0.1 + 0.2 * spec.seed),
            "real/transitions": 100 * (spec.seed + 1),
            **(
                {"hds/beta": float(spec.method.value("algo.beta"))}
                if "algo.beta" in spec.method.varied
                else {}
            ),
        }

    write_sweep_runs(tmp_path / "runs", sweep, summary_of)
    getattr(figures, figure)(found_for(tmp_path / "runs", sweep), tmp_path / "out")

    legend = drawn[figure].legend
    assert "oracle (PODS on the lab real's twin)" in legend
    assert "oracle (PODS on the friction real's twin)" in legend
    assert ORACLE.label not in legend
    oracle_rows = {
        r["task"]: r["label"]
        for r in read_table(tmp_path / "out" / f"{figure}.csv")
        if r["method"] == "oracle"
    }
    assert oracle_rows == {
        f"{TASK}, lab real": "oracle (PODS on the lab real's twin)",
        f"{TASK}, friction real": "oracle (PODS on the friction real's twin)",
    }
