"""Bad input through the real command line: one `error: ...` line naming the key and the
value (or the file), exit status 2, before any compute, and nothing written. A file of its
own so that the test runner gives these many short processes a worker of their own."""

import hashlib
from pathlib import Path

import jax
import numpy as np
import pytest
from test_experiments import compose_config, run_train

from dynamics_models import ModelConfig, TransitionDataset, make_model, save_model
from experiments.resume import config_differences, resolved_config
from experiments.run_dir import RunDirectory
from experiments.train import config_fingerprint
from sim2real import make_testbed


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, with a hash of each file's bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "/"
        for p in sorted(folder.rglob("*"))
    }


def assert_refused(result, message: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, result.stderr[-2000:]
    # One line: nothing of a traceback before it.
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return last


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algo.num_trajectories=0"], "num_trajectories"),
        (["env.episode_length=-1"], "episode_length"),
        (["env.n_frames=0"], "n_frames"),
        (["env.real.slider_damping=-2"], "slider_damping"),
        (["env.system=triple_cartpole"], "triple_cartpole"),
        (["algo.name=ddpg"], "ddpg"),
        (["algo=hds", "algo.beta=1.5"], "beta"),
        (["algo=hds", "real.budget=10"], "budget=10"),
        (["model.kind=gp"], "'gp'"),
        (["run.compare=[ddpg]"], "run.compare"),
        (["algo=lqr", "env=cartpole_swingup"], "balance tasks"),
        (["algo=energy_lqr", "env=double_cartpole_swingup"], "env.task=swingup"),
        (["algo=energy_lqr", "algo.catch_angle=0"], "catch_angle"),
        # Found only inside training before: now from the config alone.
        (
            ["algo.num_trajectories=4", "env.episode_length=16", "algo.minibatch_size=256"],
            "algo.minibatch_size=256 is more than the 64",
        ),
        (["algo.horizon=2", "algo.minibatch_size=9"], "algo.horizon=2"),
        (["algo.start_states=visited"], "algo.horizon=None"),
        (["algo.start_states=anywhere"], "'anywhere'"),
        (["algo.horizon_start=101"], "algo.horizon_start=101"),
        (["algo.horizon_growth_epochs=0"], "horizon_growth_epochs"),
        (["algo.feedback=true", "algo.order=1"], "feedback must be false with order=1"),
        (
            ["algo=hds", "algo.order=2", "algo.feedback=true", "algo.step_size_search=annealing"],
            "'line_search' with feedback=true",
        ),
        (["algo=hds", "real.initial_data=policy"], "real.initial_data=policy"),
        (["algo=hds", "model.rollout_horizon=20"], "model.rollout_horizon=20"),
        (["algo=pods_sysid", "real.budget=5"], "real.budget=5"),
        (["algo=pods_sysid", "sysid.window=20"], "sysid.window=20"),
        (["algo=pods_sysid", "sysid.family=grey_box"], "'grey_box'"),
        (["algo=pods_sysid", "sysid.family=lab", "sysid.max_delay_steps=-1"], "max_delay_steps"),
        (["algo=hds_sysid", "algo.beta=0"], "algo.beta=0"),
        (["algo=hds_sysid", "sysid.window=20"], "sysid.window=20"),
        # The compared runs are checked too, before the first one trains.
        (["env=cartpole_swingup", "run.compare=[lqr]"], "run.compare=lqr"),
        (["env=brax", "env.name=no_such_env"], "'no_such_env'"),
        # The solving settings' second order, which asks for a reward: the name comes first.
        (["env=brax", "env.name=no_such_brax", "algo.order=2"], "unknown Brax env 'no_such_brax'"),
        (["env=brax", "env.name=cartpole_swingup_sim"], "'cartpole_swingup_sim'"),
        (["env=brax", "env.backend=warp"], "'warp'"),
        (["env=brax", "env.reward=no_such_module:reward"], "no_such_module:reward"),
        (["env=brax", "env.reward=sim2real.brax_envs"], "module:function"),
        (["env=brax", "algo=hds"], "algo=hds"),
        (["env=brax", "algo=oracle"], "algo=oracle"),
        (["env=brax", "algo=ppo_dr"], "algo=ppo_dr"),
        (["env=brax", "algo.order=2"], "algo.order=2"),
        (["env=brax", "algo.float64=true"], "algo.float64=true"),
        # A gymnasium real that does not fit the testbed's layout, or cannot be made.
        (["real.engine=gym", "real.gym_id=Pendulum-v1"], "(3,) map to (3,) sensors"),
        (
            ["real.engine=gym", "real.gym_id=Pendulum-v1", "+real.gym_kwargs.port=1"],
            "real.gym_id=Pendulum-v1: the env cannot be made",
        ),
        (["run.devices=0"], "run.devices=0: this machine has"),
        ([f"run.devices={jax.local_device_count() + 1}"], "local device(s); give 1 to"),
    ],
)
def test_bad_values_exit_with_one_line_and_write_nothing(tmp_path, overrides, message):
    run_dir = tmp_path / "bad"
    assert_refused(run_train(run_dir, *overrides, check=False), message)
    assert not run_dir.exists()  # not even hydra's .hydra/ or an empty folder


def test_a_users_gymnasium_env_of_another_layout_is_refused_in_one_line(tmp_path):
    """Its module imported by the id (`tests/user_cartpole.py`), its spaces checked."""
    run_dir = tmp_path / "bad"
    result = run_train(
        run_dir,
        "algo=hds",
        "real.engine=gym",
        "real.gym_id=user_cartpole:UserCartPoleAngles-v0",
        check=False,
        environment={"PYTHONPATH": str(Path(__file__).parent)},
    )
    last = assert_refused(result, "the testbed layout's are (5,)")
    assert "(4,)" in last and "GymAdapter.observation" in last
    assert not run_dir.exists()


def test_a_seed_batch_with_a_bad_value_exits_with_one_line_and_writes_no_run(tmp_path):
    sweep_dir = tmp_path / "batch"
    result = run_train(
        sweep_dir,
        "seed=0,1",
        "launcher=seed_batch",
        "algo.learning_rate=-1",
        multirun=True,
        check=False,
    )
    assert_refused(result, "learning_rate")
    # Hydra's own multirun.yaml, and no run directory.
    assert [p.name for p in sweep_dir.iterdir()] == ["multirun.yaml"]


# The directory of a run that is started again: a checkpoint of this very config, so that
# only the file under test can be the reason for a refusal.
RESUMED = ["algo.num_epochs=3"]


def write_checkpoint(run_dir: Path, overrides: list[str], epoch: int = 1) -> None:
    from test_experiments import tiny_overrides

    cfg = compose_config(tiny_overrides(tuple(overrides)) + overrides)
    info = {
        "config": config_fingerprint(cfg),
        "resolved_config": resolved_config(cfg),
        "wall_clock_s": 1.0,
    }
    RunDirectory(run_dir).save_checkpoint({"params": np.zeros(2)}, epoch, info)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0}\n')


def test_a_corrupt_checkpoint_is_refused_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir, RESUMED)
    checkpoint = run_dir / "checkpoints" / "latest.msgpack"
    checkpoint.write_bytes(checkpoint.read_bytes()[:40])  # cut short, as by a full disk
    before = snapshot(run_dir)
    assert_refused(run_train(run_dir, *RESUMED, check=False), str(checkpoint))
    assert snapshot(run_dir) == before


def test_a_checkpoint_of_another_config_is_refused_naming_what_differs(tmp_path):
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir, RESUMED)
    before = snapshot(run_dir)
    result = run_train(run_dir, *RESUMED, "algo.learning_rate=0.01", "seed=3", check=False)
    last = assert_refused(result, "holds a run of another config")
    assert "algo.learning_rate: 0.001 -> 0.01" in last and "seed: 0 -> 3" in last
    assert "algo.num_epochs" in last  # what may change instead
    assert snapshot(run_dir) == before


def test_a_config_key_added_since_a_run_reads_as_the_value_that_run_computed_with():
    before = {"algo": {"order": 2}, "seed": 0}
    assert (
        config_differences(before, {"algo": {"order": 2, "start_states": "reset"}, "seed": 0}) == []
    )
    assert config_differences(
        before, {"algo": {"order": 2, "start_states": "visited"}, "seed": 0}
    ) == ["algo.start_states: reset -> visited"]
    added = {"feedback": False, "horizon_start": None, "horizon_growth_epochs": 30}
    assert config_differences(before, {"algo": {"order": 2, **added}, "seed": 0}) == []
    # Any other new key is a difference.
    assert config_differences(before, {"algo": {"order": 2, "new_key": 1}, "seed": 0}) == [
        "algo.new_key: (none) -> 1"
    ]


def test_fewer_epochs_than_a_run_has_done_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir, ["algo.num_epochs=2"], epoch=2)
    before = snapshot(run_dir)
    assert_refused(run_train(run_dir, "algo.num_epochs=1", check=False), "algo.num_epochs >= 2")
    assert snapshot(run_dir) == before


HDS = ["algo=hds", "model=mlp", "real.budget=64", "real.initial_trajectories=4"]


@pytest.fixture
def hds_run_with_data(tmp_path) -> Path:
    """A run directory as HDS leaves it after its first checkpoint: real data and a model."""
    run_dir = tmp_path / "hds"
    write_checkpoint(run_dir, HDS)
    testbed = make_testbed("cartpole_balance_real", episode_length=8)
    rng = np.random.default_rng(0)
    dataset = TransitionDataset(
        rng.normal(size=(4, 9, testbed.observation_size)).astype(np.float32),
        rng.uniform(-1, 1, size=(4, 8, 1)).astype(np.float32),
        env_name=testbed.name,
    )
    artifacts = run_dir / "artifacts"
    dataset.save(artifacts / "real_transitions.npz")
    model = make_model(
        ModelConfig(kind="mlp", width=8, depth=1), jax.random.PRNGKey(0), dataset, testbed
    )
    save_model(artifacts / "model", model, metadata={"round": 0, "validation_loss": 1.0})
    return run_dir


@pytest.mark.parametrize("name", ["real_transitions.npz", "model.eqx"])
def test_corrupt_real_data_or_model_is_refused_naming_the_file(hds_run_with_data, name):
    path = hds_run_with_data / "artifacts" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    before = snapshot(hds_run_with_data)
    result = run_train(hds_run_with_data, *HDS, check=False)
    assert_refused(result, name)
    assert snapshot(hds_run_with_data) == before
