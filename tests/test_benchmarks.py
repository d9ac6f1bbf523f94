"""The benchmarks' own pieces that decide what they measure: the trajectory optimizer's
tolerance barrier, the objective it optimizes in place of the reward."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim2real.testbeds import make_testbed


def _load(name: str):
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trajectory_optimizer = _load("trajectory_optimizer")


def _upright_obs(hinges) -> jnp.ndarray:
    """A double cart-pole observation at rest with the given hinge angles."""
    hinges = jnp.asarray(hinges)
    cos_sin = jnp.stack([jnp.cos(hinges), jnp.sin(hinges)], -1).ravel()
    return jnp.concatenate([jnp.zeros(1), cos_sin, jnp.zeros(3)])


def test_the_barrier_is_zero_inside_its_onset_quadratic_past_it_and_bounded():
    env = make_testbed("double_cartpole_balance_sim", backend="chain")
    barrier = trajectory_optimizer.ToleranceBarrier(env, weight=100.0)
    assert (barrier.onset, barrier.width) == pytest.approx((0.15, 0.15))
    penalty = jax.jit(barrier.penalty)
    # Every pole within 0.15 rad of upright (the second at 0.1 + 0.04): nothing to pay.
    assert float(penalty(_upright_obs([0.1, 0.04]))) == 0.0
    # The second pole's absolute angle is 0.1 + 0.08 = 0.18: 100 (0.03)^2.
    np.testing.assert_allclose(penalty(_upright_obs([0.1, 0.08])), 100 * 0.03**2, rtol=1e-4)
    # A pole past onset + width pays the bound, however far it has fallen.
    np.testing.assert_allclose(penalty(_upright_obs([0.0, 2.0])), 100 * 0.15**2, rtol=1e-5)
    np.testing.assert_allclose(penalty(_upright_obs([0.0, -3.0])), 100 * 0.15**2, rtol=1e-5)


def test_the_barriers_step_and_task_reward_are_the_testbeds_less_the_penalty():
    env = make_testbed("double_cartpole_balance_sim", backend="chain")
    barrier = trajectory_optimizer.ToleranceBarrier(env, weight=30.0, onset=0.05)
    state = env.reset(jax.random.PRNGKey(3))
    action = jnp.array([0.7])
    plain, barred = jax.jit(env.step)(state, action), jax.jit(barrier.step)(state, action)
    np.testing.assert_array_equal(barred.obs, plain.obs)
    penalty = barrier.penalty(plain.obs)
    assert float(penalty) > 0.0
    np.testing.assert_allclose(barred.reward, plain.reward - penalty, rtol=1e-6)
    np.testing.assert_allclose(
        barrier.task_reward(plain.obs, action), env.task_reward(plain.obs, action) - penalty
    )


@pytest.mark.parametrize("flag, value", [("--tolerance-weight", "-1"), ("--tolerance-onset", "0")])
def test_the_trajectory_optimizer_refuses_a_bad_barrier_in_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        trajectory_optimizer.main([flag, value])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert flag in lines[-1] and value in lines[-1]


def test_held_from_is_the_step_from_which_the_pole_stays_up():
    classical = _load("classical_swingup")
    lean = np.full((3, 10), 3.0)
    lean[0, 4:] = 0.1  # up from step 4 on
    lean[1, :] = 0.1  # never down
    lean[2, 6:] = 0.1
    lean[2, 8] = 0.3  # down again at step 8: held from 9
    np.testing.assert_array_equal(classical.held_from(lean, 0.2), [4, 0, 9])


seed_spread = _load("seed_spread")


def _summary(seed: int, solved: float, ret: float, real: bool = True) -> dict:
    return {
        "seed": seed,
        "eval/solved_sim": solved,
        "eval/return_sim": ret,
        "eval/solved_real": 0.5 if real else None,
        "eval/return_real": 60.0 if real else None,
        "train/wall_clock_s": 100.0 + seed,
        "train/epochs": 60,
    }


def _rows(figures) -> list[dict]:
    return [seed_spread.seed_row(s, _summary(s, *f)) for s, f in enumerate(figures)]


def test_seed_spread_checks_the_swingup_targets_on_every_seed():
    # Seed 1 solves too little; seed 2 solves, but ends below 90% of the best return.
    report = seed_spread.summarize(
        "cartpole_swingup", _rows([(1.0, 170.0), (0.9, 168.0), (1.0, 150.0), (0.97, 169.0)])
    )
    targets = report["targets"]
    assert not targets["solved"]["met"] and targets["solved"]["seeds_below"] == [1]
    assert targets["solved"]["reached"] == "3 of 4 seeds" and targets["solved"]["lowest"] == 0.9
    assert not targets["return"]["met"] and targets["return"]["seeds_below"] == [2]
    assert targets["return"]["floor"] == pytest.approx(153.0)
    assert not targets["all_met"]
    solved = report["distribution"]["solved_sim"]
    assert (solved["min"], solved["median"], solved["max"]) == pytest.approx((0.9, 0.985, 1.0))
    # The mean's 95% t-interval: t(0.975, 3) = 3.182.
    returns = np.array([170.0, 168.0, 150.0, 169.0])
    half = 3.182446 * returns.std(ddof=1) / 2
    np.testing.assert_allclose(
        report["distribution"]["return_sim"]["ci95"], [returns.mean() - half, returns.mean() + half]
    )
    assert report["distribution"]["solved_real"]["mean"] == 0.5


def test_seed_spread_targets_met_and_the_double_swingups_share_of_seeds():
    met = seed_spread.summarize("cartpole_balance", _rows([(1.0, 99.9), (0.96, 99.0)]))
    assert met["targets"]["all_met"] and "return" not in met["targets"]
    # 8 of 10 seeds at >= 80% is enough for the double swing-up; 7 is not.
    eight = [(0.85, 50.0)] * 8 + [(0.1, 10.0)] * 2
    assert seed_spread.summarize("double_cartpole_swingup", _rows(eight))["targets"]["all_met"]
    seven = [(0.85, 50.0)] * 7 + [(0.1, 10.0)] * 3
    double = seed_spread.summarize("double_cartpole_swingup", _rows(seven))["targets"]
    assert not double["all_met"] and double["solved"]["reached"] == "7 of 10 seeds"
    # No real, one seed: no real distribution, no interval, no targets for brax.
    alone = seed_spread.summarize("brax", [seed_spread.seed_row(0, _summary(0, 1.0, 5.0, False))])
    assert "solved_real" not in alone["distribution"] and alone["targets"] is None
    assert alone["distribution"]["return_sim"]["ci95"] is None


def _finished_run(out_dir: pathlib.Path, env: str, seed: int, solved: float, ret: float):
    run = out_dir / f"seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- env={env}\n- seed={seed}\n")
    (run / "summary.json").write_text(json.dumps(_summary(seed, solved, ret)))


def test_seed_spread_reads_a_finished_seed_and_runs_only_the_missing_ones(
    tmp_path, monkeypatch, capsys
):
    for seed in (0, 1):
        _finished_run(tmp_path, "cartpole_balance", seed, 1.0, 99.0 + seed)
    launched = []

    def launch(command, log):
        # Stands in for the training process: seed 2's run finishes.
        launched.append(command)
        _finished_run(tmp_path, "cartpole_balance", 2, 0.5, 80.0)
        return 0

    monkeypatch.setattr(seed_spread, "launch", launch)
    out = tmp_path / "spread.json"
    args = ["--env", "cartpole_balance", "--out-dir", str(tmp_path), "--out", str(out)]
    assert seed_spread.main([*args, "--seeds", "0", "1", "2"]) == 0
    assert len(launched) == 1
    assert launched[0][2:] == [
        "experiments.train",
        "env=cartpole_balance",
        "seed=2",
        f"hydra.run.dir={tmp_path / 'seed2'}",
    ]
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert report["command"] == "python -m experiments.train env=cartpole_balance seed=S"
    assert [r["status"] for r in report["per_seed"]] == ["read", "read", "ran"]
    assert report["targets"]["solved"]["seeds_below"] == [2]

    # Everything finished: a launch would fail the test.
    def refuse(command, log):
        raise AssertionError(f"ran {command}")

    monkeypatch.setattr(seed_spread, "launch", refuse)
    assert seed_spread.main([*args, "--seeds", "0", "1", "2"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)["per_seed"]] == ["read"] * 3


def test_seed_spread_refuses_a_directory_of_other_overrides(tmp_path, monkeypatch):
    _finished_run(tmp_path, "cartpole_swingup", 0, 1.0, 170.0)
    monkeypatch.setattr(seed_spread, "launch", lambda command, log: 1 / 0)
    with pytest.raises(SystemExit) as exit_info:
        seed_spread.main(["--seeds", "0", "--out-dir", str(tmp_path), "--set", "algo.num_epochs=2"])
    assert "algo.num_epochs=2" in str(exit_info.value) and "\n" not in str(exit_info.value)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--env", "cartpole_swing"], "cartpole_swing"),
        (["--seeds"], "--seeds"),
        (["--seeds", "0", "-3"], "-3"),
        (["--seeds", "1", "1"], "repeats"),
        (["--jobs", "0"], "--jobs"),
        (["--set", "seed=4"], "seed=4"),
    ],
)
def test_seed_spread_refuses_bad_input_in_one_line_before_running(
    argv, named, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(seed_spread, "launch", lambda command, log: 1 / 0)
    with pytest.raises(SystemExit) as exit_info:
        seed_spread.main([*argv, "--out-dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert named in lines[-1]
    assert not (tmp_path / "runs").exists()


def test_seed_spread_runs_seeds_side_by_side_with_jobs(tmp_path, monkeypatch, capsys):
    def launch(command, log):
        seed = int(next(a for a in command if a.startswith("seed="))[5:])
        _finished_run(tmp_path, "cartpole_swingup", seed, 1.0, 170.0 - seed)
        return 0

    monkeypatch.setattr(seed_spread, "launch", launch)
    argv = ["--seeds", "3", "0", "2", "--jobs", "2", "--out-dir", str(tmp_path)]
    assert seed_spread.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in report["per_seed"]] == [0, 2, 3]
    assert report["targets"]["all_met"]
    assert all((tmp_path / f"seed{s}.process.json").exists() for s in (0, 2, 3))


def test_seed_spread_reports_a_failed_seed_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    _finished_run(tmp_path, "cartpole_swingup", 0, 1.0, 170.0)
    monkeypatch.setattr(seed_spread, "launch", lambda command, log: 1)
    assert seed_spread.main(["--seeds", "0", "1", "--out-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["failed"] == [{"seed": 1, "failed": 1}]
    assert [r["seed"] for r in report["per_seed"]] == [0]
    assert "seed 1: exit code 1" in captured.err


def test_seed_spread_refuses_a_finished_seed_whose_config_a_default_change_made_stale(
    tmp_path, monkeypatch, capsys
):
    """Same overrides, another config: a finished seed run before a default changed is
    another computation, refused in one line naming the key; an unchanged one is read."""
    import subprocess
    import sys

    command = seed_spread.bare_command("cartpole_balance", 0, [])
    job = subprocess.run(
        [sys.executable, *command[1:], "--cfg", "job"],
        cwd=seed_spread.REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    _finished_run(tmp_path, "cartpole_balance", 0, 1.0, 99.0)
    (tmp_path / "seed0" / ".hydra" / "config.yaml").write_text(job)
    monkeypatch.setattr(seed_spread, "launch", lambda command, log: 1 / 0)
    args = ["--env", "cartpole_balance", "--seeds", "0", "--out-dir", str(tmp_path)]
    assert seed_spread.main(args) == 0
    assert json.loads(capsys.readouterr().out)["per_seed"][0]["status"] == "read"

    stale = job.replace("policy_selection: best", "policy_selection: last")
    assert stale != job
    (tmp_path / "seed0" / ".hydra" / "config.yaml").write_text(stale)
    with pytest.raises(SystemExit) as exit_info:
        seed_spread.main(args)
    message = str(exit_info.value)
    assert "algo.policy_selection: last -> best" in message and "\n" not in message


hold = _load("swingup_hold")


def test_reached_held_and_fallen_are_counted_per_start():
    lean = np.full((4, 12), 3.0)
    lean[0, 3:] = 0.1  # up at 3, held: solved over the last 4 of an 8-step episode
    lean[1, 2:5] = 0.25  # reaches 0.3 at step 2, falls: not solved
    lean[2, 2:] = 0.1
    lean[2, 3] = 0.25  # up at 2, out of the tolerance at 3: held from 4, solved
    # start 3 never comes up
    report = hold.hold_report(lean, tolerance=0.2, episode=8, window=4)
    assert report["reached"] == [3, 2, 2, 12]
    assert report["held_from"] == [3, 12, 4, 12]
    assert report["solved"] == pytest.approx(0.5)
    assert report["reached_by_episode_end"] == pytest.approx(0.75)
    # Start 1 reached and then leaned past 1 rad in the window: it fell.
    assert report["fell_after_reaching"] == pytest.approx(0.25)
    np.testing.assert_allclose(report["window_max_lean"], [0.1, 3.0, 0.1, 3.0])


def test_a_folder_that_is_no_run_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["swingup_hold.py", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        hold.main()
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(tmp_path) in last and "not a run directory" in last


def test_time_to_solve_reports_a_diverged_run_as_the_worst_and_keeps_the_rest():
    """A run whose returns went NaN (Brax's APG diverging; kept as null) stays in the report:
    its best is its finite returns' best, its final return null and the worst in the median,
    and the 90% threshold is the other runs' best."""
    import argparse

    time_to_solve = _load("time_to_solve")

    def run(seed, returns, **facts):
        curve = [
            {"wall_s": 10.0 * i, "trainer_s": 10.0 * i, "sim_steps": i, "return": r, "solved": 0.0}
            for i, r in enumerate(returns)
        ]
        return {"method": "apg", "seed": seed, "curve": curve, "process_s": 1.0, **facts}

    measured = [
        run(0, [1.0, 5.0, 10.0]),
        run(1, [2.0, None, None], diverged="Brax's APG diverged: ..."),  # NaN, as run_one keeps it
        run(2, [1.0, 3.0, 4.0]),
    ]
    args = argparse.Namespace(
        env="double_cartpole_swingup_sim",
        methods=["apg"],
        seeds=[0, 1, 2],
        eval_states=4,
        eval_every=1,
        solved_share=0.9,
        set=[],
    )
    report = time_to_solve.report(args, {}, measured)
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN or Infinity anywhere
    assert report["best_return"] == {"return": 10.0, "method": "apg", "seed": 0}
    diverged = report["runs"][1]
    assert (diverged["best_return"], diverged["final_return"]) == (2.0, None)
    assert diverged["diverged"].startswith("Brax's APG diverged")
    summary = report["summary"]["apg"]
    assert summary["final_return"] == [10.0, None, 4.0]
    assert summary["median_final_return"] == 4.0  # the diverged run is the worst of three
    assert summary["time_to_90pct_s"] == [20.0, None, None]
