"""The run's real system from the command line (profile, engine), and a trained policy deployed."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf
from test_experiments import (
    APG_TINY,
    BRAX_TINY,
    PPO_TINY,
    REPO,
    TINY,
    assert_replays_its_summary,
    compose_config,
    run_train,
)

from baselines.brax_agents import policy_template
from dynamics_models import load_dataset
from experiments.deploy import load_policy
from experiments.deploy import main as deploy_main
from experiments.run_dir import RunDirectory
from experiments.schema import ConfigError
from experiments.train import build_envs, check_config
from experiments.trainers import algo_config


def test_the_lab_profile_is_chosen_and_overridden_field_by_field():
    cfg = compose_config(
        ["env.real_profile=lab", "env.lab.latency_steps=2", "env.lab.slider_friction=0.5"]
    )
    check_config(cfg)
    sim, real = build_envs(cfg, None)
    assert real.engine == "brax" and real.twin.variant == "lab" and sim.variant == "sim"
    assert real.twin.lab.latency_steps == 2 and real.twin.lab.integrator == "rk4"
    assert real.twin.physics.slider_friction == 0.5 and real.twin.physics.actuator_gain == 0.85
    friction = build_envs(compose_config([]), None)[1]
    assert friction.twin.variant == "real" and friction.twin.lab is None
    assert friction.system(10).name == "cartpole_swingup_real"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.real_profile=hardware"], "env.real_profile: unknown profile 'hardware'"),
        (["env.real_profile=lab", "env.lab.latency_steps=-1"], "LabEffects.latency_steps"),
        (["env.real_profile=lab", "env.lab.timestep=0.007"], "0.007"),
        (["env.real_profile=lab", "env.lab.integrator=verlet"], "'verlet'"),
        (["real.engine=isaac"], "real.engine: unknown engine 'isaac'"),
        (["real.engine=gym"], "real.gym_id"),
        (["real.engine=gym", "real.gym_id=NoSuchEnv-v9"], "NoSuchEnv"),
        (
            [
                "real.engine=gym",
                "real.gym_id=InvertedPendulum-v5",
                "real.gym_adapter=no.such:thing",
            ],
            "cannot import 'no.such:thing'",
        ),
        (
            ["real.engine=gym", "real.gym_id=InvertedPendulum-v5", "algo=oracle"],
            "differentiable twin",
        ),
        (["real.gym_id=InvertedPendulum-v5"], "engine=gym"),
        # Found before any compute: what the env is, and whether it speaks the layout.
        (["real.engine=gym", "real.gym_id=no_such_module:Rig-v0"], "cannot import module"),
        (["real.engine=gym", "real.gym_id=Pendulum-v1"], r"\(3,\) map to \(3,\) .* \(5,\)"),
        (
            ["real.engine=gym", "real.gym_id=Pendulum-v1", "+real.gym_kwargs.bogus=1"],
            "cannot be made .*bogus",
        ),
        (["real.engine=gym", "real.gym_id=InvertedPendulum-v5"], "GymAdapter.observation"),
        (["real.engine=gym", "real.gym_id=x", "real.gym_adapter=no_colon"], "module:attribute"),
    ],
)
def test_bad_real_systems_are_one_line_errors_before_any_compute(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_config(compose_config(overrides))
    assert "\n" not in str(error.value)


def test_a_bad_profile_on_the_command_line_exits_with_one_line(tmp_path):
    result = run_train(tmp_path / "bad", "env.real_profile=hardware", check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: env.real_profile") and "hardware" in last
    assert not (tmp_path / "bad" / "summary.json").exists()


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    """A tiny PODS run, evaluated against the lab twin, that keeps its best epoch's policy
    (with 3 epochs never the last one: the last update is scored by no epoch)."""
    run_dir = tmp_path_factory.mktemp("lab") / "run"
    run_train(
        run_dir,
        "algo.num_epochs=3",
        "algo.policy_selection=best",
        "env.real_profile=lab",
        "run.animation=false",
    )
    return run_dir


def test_a_run_on_the_lab_profile_reports_it_and_the_solved_share(lab_run):
    summary = json.loads((lab_run / "summary.json").read_text())
    assert summary["real/profile"] == "lab" and summary["real/engine"] == "brax"
    for key in ("eval/solved_sim", "eval/solved_real"):
        assert 0.0 <= summary[key] <= 1.0


def test_a_loaded_policy_scores_exactly_what_the_run_reported(lab_run):
    # The policy evaluated, and loaded, is the kept best, not the last epoch's.
    loaded = assert_replays_its_summary(lab_run)
    assert loaded.epoch == 3 and loaded.config.algo.name == "pods"
    best_epoch = json.loads((lab_run / "metrics.jsonl").read_text().splitlines()[-1])[
        "train/best_epoch"
    ]
    assert best_epoch < 3


@pytest.fixture(scope="module")
def classical_run(tmp_path_factory):
    """LQR, and the energy swing-up with LQR catch in its `energy_lqr/` folder."""
    run_dir = tmp_path_factory.mktemp("classical") / "run"
    run_train(run_dir, "algo=lqr", "run.compare=[energy_lqr]", "run.animation=false")
    return run_dir


@pytest.mark.parametrize("folder, algo", [(".", "lqr"), ("energy_lqr", "energy_lqr")])
def test_a_classical_controller_deploys_as_the_run_played_it(classical_run, folder, algo):
    loaded = assert_replays_its_summary(classical_run / folder)
    assert loaded.config.algo.name == algo and loaded.trained_for == ""
    # The gain the run designed, from its checkpoint.
    assert (classical_run / folder / "checkpoints" / "latest.msgpack").is_file()
    assert np.asarray(loaded.params).shape == (1, 4)


def test_a_classical_run_without_a_checkpoint_designs_its_gain_again(classical_run, tmp_path):
    """A run from before the gain was checkpointed: the design is deterministic."""
    run = tmp_path / "old"
    shutil.copytree(classical_run, run, ignore=shutil.ignore_patterns("energy_lqr"))
    shutil.rmtree(run / "checkpoints")
    np.testing.assert_allclose(
        np.asarray(load_policy(run).params), np.asarray(load_policy(classical_run).params)
    )


@pytest.mark.parametrize(
    "algo, overrides",
    [
        ("apg", APG_TINY[1:]),
        ("ppo", PPO_TINY),
        ("ppo_dr", PPO_TINY),
        # A Brax registry env's run too (sim only: deploy has no real to play it on).
        ("ppo", [*PPO_TINY, "env=brax", "env.name=inverted_pendulum"]),
    ],
)
def test_a_brax_agents_run_loads_into_brax_structure(tmp_path, capsys, algo, overrides):
    """The loader's structure for Brax's params without Brax's minutes of compiling: a run
    directory holding untrained params (the trained ones: the slow runs of
    tests/test_experiments.py)."""
    cfg = compose_config([*TINY, f"algo={algo}", *BRAX_TINY, *overrides])
    run = RunDirectory(tmp_path / algo)
    (run.path / ".hydra").mkdir()
    (run.path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    sim = build_envs(cfg, jnp.float32)[0]
    make_policy, params = policy_template(algo_config(cfg), sim)
    params = jax.tree.map(lambda x: x + 0.1, params)  # not what the template initializes
    run.save_checkpoint(params, 2, {})
    loaded = load_policy(run.path)
    assert loaded.epoch == 2 and loaded.trained_for == " (epoch 2)"
    observation = np.asarray(sim.reset(jax.random.PRNGKey(0)).obs)
    # Jitted against eager: equal to float32's rounding.
    np.testing.assert_allclose(
        np.asarray(loaded.policy(observation)), make_policy(params)(observation), rtol=1e-4
    )
    if cfg.env.system == "brax":
        assert deploy_main([str(run.path)]) == 2
        assert "has no real system to play on" in capsys.readouterr().err


def deploy(*args: str, environment: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.deploy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(environment or {})},
    )


# A user's own module (`tests/user_cartpole.py`), importable as their package would be.
USER_MODULE = {"PYTHONPATH": str(REPO / "tests")}


@pytest.mark.parametrize(
    "real, name",
    [
        (["real.gym_id=user_cartpole:UserCartPole-v0"], "UserCartPole-v0"),
        (
            ["real.gym_id=UserCartPoleAngles-v0", "real.gym_adapter=user_cartpole:ADAPTER"],
            "UserCartPoleAngles-v0",
        ),
    ],
)
def test_a_users_own_gymnasium_env_is_a_real_system_by_its_id(lab_run, tmp_path, real, name):
    """In a fresh process that has never imported the module: by `module:EnvId`, and by a
    plain id that the adapter's module registers."""
    out = tmp_path / "episodes.npz"
    result = deploy(
        str(lab_run),
        "real.engine=gym",
        *real,
        "--episodes",
        "2",
        "--out",
        str(out),
        environment=USER_MODULE,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"on {name} [gym]:" in result.stdout and "solved" in result.stdout
    data = load_dataset(out)
    assert data.env_name == name and data.n_transitions == 2 * 8
    # The adapted sensors: x, then cos and sin of the angle, on the unit circle.
    np.testing.assert_allclose(np.hypot(data.observations[..., 1], data.observations[..., 2]), 1)


def test_deploy_onto_a_gymnasium_env_that_does_not_fit_is_one_line(lab_run, capsys):
    # In this process (tests/ is on its path): the refusal, not the import, is under test.
    status = deploy_main(
        [str(lab_run), "real.engine=gym", "real.gym_id=user_cartpole:UserCartPoleAngles-v0"]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error:") and "\n" not in err
    assert "(4,) map to (4,) sensors" in err and "GymAdapter.observation" in err
    assert not (lab_run / "artifacts" / "deploy_gym_UserCartPoleAngles-v0.npz").exists()


def test_the_deploy_command_plays_records_and_reports(lab_run, tmp_path):
    out = tmp_path / "episodes.npz"
    result = deploy(str(lab_run), "env.real_profile=friction", "--episodes", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cartpole_balance_real [friction, brax]" in result.stdout and "solved" in result.stdout
    data = load_dataset(out)
    assert data.n_trajectories == 3 and data.n_transitions == 3 * 8
    assert data.env_name == "cartpole_balance_real"
    # The same policy on the MuJoCo C engine of the run's lab profile.
    result = deploy(str(lab_run), "real.engine=mujoco", "--episodes", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[lab, mujoco]" in result.stdout
    assert load_dataset(out).n_transitions == 2 * 8


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda run: (run / "checkpoints" / "latest.msgpack").write_bytes(b"junk"),
            "cannot resume",
        ),
        (lambda run: (run / "checkpoints" / "latest.msgpack").unlink(), "no checkpoint"),
        (
            lambda run: (run / ".hydra" / "config.yaml").write_text(
                (run / ".hydra" / "config.yaml").read_text().replace("real_profile", "profile_x")
            ),
            "another version",
        ),
        (lambda run: shutil.rmtree(run / ".hydra"), "not a run directory"),
    ],
)
def test_a_damaged_run_directory_is_one_line_and_left_as_it_was(lab_run, tmp_path, damage, message):
    run = tmp_path / "copy"
    shutil.copytree(lab_run, run)
    damage(run)
    before = sorted((p.relative_to(run), p.read_bytes()) for p in run.rglob("*") if p.is_file())
    result = deploy(str(run))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, result.stderr[-1500:]
    after = sorted((p.relative_to(run), p.read_bytes()) for p in run.rglob("*") if p.is_file())
    assert after == before


def test_deploy_refuses_overrides_of_the_policy(lab_run):
    result = deploy(str(lab_run), "algo.learning_rate=0.1")
    assert result.returncode == 2 and "env.* or real.*" in result.stderr


def test_the_deploy_command_plays_a_classical_controller(classical_run, tmp_path, capsys):
    out = tmp_path / "episodes.npz"
    status = deploy_main([str(classical_run / "energy_lqr"), "--episodes", "2", "--out", str(out)])
    assert status == 0
    assert capsys.readouterr().out.startswith(
        "energy_lqr policy on cartpole_balance_real [friction, brax]"
    )
    assert load_dataset(out).n_transitions == 2 * 8
    # The printed figures, written beside the episodes for a study to read.
    figures = json.loads(out.with_suffix(".json").read_text())
    assert (figures["algo"], figures["episodes"]) == ("energy_lqr", 2)
    assert figures["label"] == "friction, brax"
    assert 0.0 <= figures["solved"] <= 1.0 and np.isfinite(figures["return_mean"])


def test_a_run_of_an_unknown_kind_is_one_line(classical_run, tmp_path):
    run = tmp_path / "other"
    shutil.copytree(classical_run, run, ignore=shutil.ignore_patterns("energy_lqr"))
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("name: lqr", "name: ddpg"))
    with pytest.raises(ConfigError, match="algo 'ddpg' runs cannot be loaded; those of") as error:
        load_policy(run)
    assert "\n" not in str(error.value)
