"""The run's real system from the command line (profile, engine), and a trained policy deployed."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_experiments import REPO, compose_config, run_train

from dynamics_models import load_dataset
from experiments.deploy import load_policy
from experiments.schema import ConfigError
from experiments.train import build_envs, check_config
from sim2real.evaluation import evaluate_sim_and_real, seed_streams


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
    """A tiny PODS run, evaluated against the lab twin."""
    run_dir = tmp_path_factory.mktemp("lab") / "run"
    run_train(run_dir, "algo.num_epochs=3", "env.real_profile=lab", "run.animation=false")
    return run_dir


def test_a_run_on_the_lab_profile_reports_it_and_the_solved_share(lab_run):
    summary = json.loads((lab_run / "summary.json").read_text())
    assert summary["real/profile"] == "lab" and summary["real/engine"] == "brax"
    for key in ("eval/solved_sim", "eval/solved_real"):
        assert 0.0 <= summary[key] <= 1.0


def test_a_loaded_policy_scores_exactly_what_the_run_reported(lab_run):
    loaded = load_policy(lab_run)
    assert loaded.epoch == 3 and loaded.config.algo.name == "pods"
    sim, real = build_envs(loaded.config, None)
    n = loaded.config.run.eval_trajectories
    _, eval_key = seed_streams(loaded.config.seed)
    returns = evaluate_sim_and_real(
        loaded.make_policy, loaded.params, sim, real.evaluation_env(n), eval_key, n
    )
    summary = json.loads((lab_run / "summary.json").read_text())
    assert returns["sim"].policy == summary["eval/return_sim"]
    assert returns["real"].policy == summary["eval/return_real"]
    observation = np.asarray(sim.reset(jax.random.PRNGKey(0)).obs)
    action = np.asarray(loaded.policy(observation))
    np.testing.assert_allclose(action, loaded.make_policy(loaded.params)(observation), rtol=1e-6)


def deploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.deploy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


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
