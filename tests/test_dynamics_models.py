"""Dynamics models: data, training, k-step error, learned env, save/load.

The cart-pole fixtures are module-scoped: one collection of real data, one trained model of
each kind and one k-step replay per stepper, shared by the tests (each Brax compilation costs
seconds to tens of seconds on a CPU; the persistent cache in conftest makes reruns cheap).
"""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from doubles import LinearEnv

from dynamics_models import (
    EnsembleDynamics,
    LearnedEnv,
    MLPDynamics,
    ModelConfig,
    ObsLayout,
    ResidualDynamics,
    TrainingConfig,
    TransitionDataset,
    cast_model,
    collect_transitions,
    k_step_error,
    load_dataset,
    load_model,
    random_actions,
    save_model,
    train,
    training,
)
from pods.rollout import reset_batch, trajectory_of_actions, trajectory_of_policy
from sim2real import make_testbed


def _squared_distance_cost(obs, action):
    return -jnp.sum(obs**2)


class LinearSystem(LinearEnv):
    """s' = A s + B a: a lightly damped oscillator, the simplest thing a model must fit."""

    A = np.array([[1.0, 0.05], [-0.05, 0.99]])
    B = np.array([[0.0], [0.05]])

    def __init__(self, dtype=jnp.float32):
        super().__init__(
            LinearSystem.A,
            LinearSystem.B,
            reward=_squared_distance_cost,
            episode_length=60,
            dtype=dtype,
            backend="linear",
        )


# ------------------------------------------------------------------------------ data


def test_obs_layout_matches_the_testbed_state_and_wraps_angles():
    env = make_testbed("double_cartpole_swingup_sim", backend="chain")
    layout = ObsLayout.of_env(env)
    q, qd = jnp.array([0.3, 3.0, -2.9]), jnp.array([0.1, -2.0, 3.0])
    obs = env.observe(q, qd)
    np.testing.assert_allclose(layout.to_state(obs), jnp.concatenate([q, qd]), atol=1e-6)
    np.testing.assert_allclose(layout.to_obs(layout.to_state(obs)), obs, atol=1e-6)
    # Across the +-pi seam the difference of two nearby angles stays small.
    a, b = layout.to_state(env.observe(jnp.array([0.0, 3.1, 0.0]), qd)), layout.to_state(obs)
    d = layout.difference(a, b)
    assert abs(float(d[1]) - (3.1 - 3.0)) < 1e-5 and abs(float(d[2]) - 2.9) < 1e-5
    with pytest.raises(ValueError, match="angle_pairs"):
        ObsLayout(5, ((1, 2), (2, 3)))


def test_collection_split_and_windows_keep_trajectories_whole():
    env = LinearSystem()
    policy = lambda obs: -0.5 * obs[:1]
    data = collect_transitions(env, jax.random.PRNGKey(0), 10, 20, policy=policy, action_noise=0.1)
    assert data.observations.shape == (10, 21, 2) and data.actions.shape == (10, 20, 1)
    # The recorded actions are the noisy ones that were played.
    s, a, s_next = data.transitions()
    np.testing.assert_allclose(s_next, s @ LinearSystem.A.T + a @ LinearSystem.B.T, atol=1e-5)
    assert not np.allclose(a, -0.5 * s[:, :1], atol=1e-3)
    train_data, val_data = data.split(0.3, seed=1)
    assert (train_data.n_trajectories, val_data.n_trajectories) == (7, 3)
    rows = {tuple(r) for r in train_data.observations[:, 0]}
    assert not rows & {tuple(r) for r in val_data.observations[:, 0]}
    obs0, actions, targets = data.windows(5)
    assert (
        obs0.shape == (10 * 16, 2) and actions.shape == (160, 5, 1) and targets.shape == (160, 5, 2)
    )
    np.testing.assert_array_equal(targets[17], data.observations[1, 2:7])
    with pytest.raises(ValueError, match="window length"):
        data.windows(21)
    assert data.first(60).n_trajectories == 3


def test_random_actions_are_bounded_and_correlated_when_asked():
    white = random_actions(jax.random.PRNGKey(0), 50, 100, 1)
    smooth = random_actions(jax.random.PRNGKey(0), 50, 100, 1, correlation=0.9)
    for a in (white, smooth):
        assert float(jnp.max(jnp.abs(a))) <= 1.0 and float(jnp.std(a)) > 0.4

    def lag1(a):
        return float(jnp.mean(a[:, 1:] * a[:, :-1]) / jnp.mean(a**2))

    assert abs(lag1(white)) < 0.05 and lag1(smooth) > 0.8


def test_dataset_file_round_trip_and_clear_errors(tmp_path):
    data = collect_transitions(LinearSystem(), jax.random.PRNGKey(1), 3, 8)
    path = data.save(tmp_path / "real.npz")
    loaded = load_dataset(path, obs_dim=2, action_dim=1)
    np.testing.assert_array_equal(loaded.observations, data.observations)
    np.testing.assert_array_equal(loaded.actions, data.actions)
    assert loaded.header() == data.header()
    assert [p.name for p in tmp_path.iterdir()] == ["real.npz"]  # no temp file left behind

    with pytest.raises(ValueError, match="obs_dim=2, expected 5"):
        load_dataset(path, obs_dim=5)
    header = dict(data.header(), version=99)
    np.savez(
        tmp_path / "future.npz",
        header=np.frombuffer(json.dumps(header).encode(), np.uint8),
        observations=data.observations,
        actions=data.actions,
    )
    with pytest.raises(ValueError, match="version 99"):
        load_dataset(tmp_path / "future.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable transition dataset"):
        load_dataset(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="horizon"):
        TransitionDataset(data.observations, data.actions[:, :-1])


# ------------------------------------------------------------------------- linear system


@pytest.mark.parametrize("rollout_horizon", [1, 5])
def test_mlp_fits_a_linear_system_to_near_zero_k_step_error(rollout_horizon):
    env = LinearSystem()
    data = collect_transitions(env, jax.random.PRNGKey(0), 40, 60)
    held_out = collect_transitions(env, jax.random.PRNGKey(1), 8, 60)
    train_data, val_data = data.split(0.2)
    model = MLPDynamics.for_dataset(jax.random.PRNGKey(2), train_data, width=32, depth=2)
    config = TrainingConfig(
        learning_rate=3e-3, max_steps=3000, eval_every=250, rollout_horizon=rollout_horizon
    )
    model, metrics = train(model, train_data, val_data, config, jax.random.PRNGKey(3))
    assert metrics["train/best_validation_loss"] == min(metrics["validation/loss"])
    assert metrics["train/steps"] <= config.max_steps

    error = k_step_error(model, held_out, 30, start_stride=5)
    truth = k_step_error(env, held_out, 30, start_stride=5)
    state_scale = float(np.std(held_out.observations))
    assert truth.at(30) < 1e-5  # the env replays its own data exactly
    assert error.at(1) < 2e-3 * state_scale
    assert error.at(30) < 2e-2 * state_scale


def test_training_stops_early_and_returns_the_best_validation_model():
    env = LinearSystem()
    data = collect_transitions(env, jax.random.PRNGKey(0), 10, 30)
    train_data, val_data = data.split(0.2)
    model = MLPDynamics.for_dataset(jax.random.PRNGKey(2), train_data, width=16, depth=1)
    # A step size far too large: the validation loss stops improving almost at once.
    config = TrainingConfig(
        learning_rate=3.0, max_steps=4000, eval_every=20, patience=3, evals_per_call=4
    )
    seen = []
    trained, metrics = train(
        model,
        train_data,
        val_data,
        config,
        jax.random.PRNGKey(3),
        progress_fn=lambda step, m: seen.append(step),
    )
    assert metrics["train/steps"] < config.max_steps
    assert len(metrics["validation/loss"]) == metrics["train/steps"] // config.eval_every
    assert seen and seen[-1] == metrics["train/steps"]
    best = int(np.argmin(metrics["validation/loss"]))
    assert len(metrics["validation/loss"]) - 1 - best == config.patience
    assert metrics["train/best_validation_loss"] == metrics["validation/loss"][best]


def test_a_growing_dataset_is_refitted_without_recompiling_within_a_power_of_two(monkeypatch):
    """The sim2real loop refits on more data every round: 9 and 12 trajectories of 60 steps
    (540 and 720 windows, both padded to 1024) share one compiled fit."""
    env = LinearSystem()
    data = collect_transitions(env, jax.random.PRNGKey(0), 16, 60)
    val = data.select(slice(12, 16))
    model = MLPDynamics.for_dataset(jax.random.PRNGKey(2), data.select(slice(0, 9)), width=8)
    config = TrainingConfig(max_steps=20, eval_every=10, evals_per_call=2)
    traces = []
    fit = training._train_chunk.__wrapped__
    counted = eqx.filter_jit(lambda *args: traces.append(1) or fit(*args))
    monkeypatch.setattr(training, "_train_chunk", counted)
    for n in (9, 12):
        _, metrics = train(model, data.select(slice(0, n)), val, config, jax.random.PRNGKey(3))
        assert np.isfinite(metrics["train/best_validation_loss"])
    assert len(traces) == 1


def test_padding_windows_leaves_the_loss_of_the_real_ones_unchanged():
    """4 trajectories (240 windows) are padded to 256 with copies of the first trajectory's
    windows; the loss averages the 240 alone, so the order of the trajectories is immaterial."""
    env = LinearSystem()
    data = collect_transitions(env, jax.random.PRNGKey(0), 4, 60)
    model = MLPDynamics.for_dataset(jax.random.PRNGKey(2), data, width=8)
    idx = jnp.arange(training.capacity(4 * 60))
    assert idx.shape == (256,)
    for horizon in (1, 5):
        losses = [
            training._loss(
                model, training._windows(model, data.select(order), horizon), idx, horizon
            )
            for order in ([0, 1, 2, 3], [3, 2, 1, 0])
        ]
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


# -------------------------------------------------------------------------- cart-pole


HORIZON = 60


@pytest.fixture(scope="module")
def cartpole():
    """Real cart-pole data (random correlated commands from the swing-up start): 10
    trajectories x 60 steps to train on, 4 held out; one collection, one compilation."""
    real = make_testbed("cartpole_swingup_real", episode_length=HORIZON, backend="chain")
    sim = make_testbed("cartpole_swingup_sim", episode_length=HORIZON, backend="chain")
    data = collect_transitions(real, jax.random.PRNGKey(0), 14, action_correlation=0.8)
    train_data, val_data = data.select(slice(0, 10)).split(0.2)
    return {
        "real": real,
        "sim": sim,
        "train": train_data,
        "val": val_data,
        "held_out": data.select(slice(10, 14)),
        "layout": ObsLayout.of_env(real),
    }


@pytest.fixture(scope="module")
def residual(cartpole):
    model = ResidualDynamics.for_dataset(jax.random.PRNGKey(1), cartpole["train"], cartpole["sim"])
    config = TrainingConfig(max_steps=1500, eval_every=100)
    return train(model, cartpole["train"], cartpole["val"], config, jax.random.PRNGKey(2))[0]


@pytest.fixture(scope="module")
def ensemble(cartpole):
    model = EnsembleDynamics.for_dataset(
        jax.random.PRNGKey(3), cartpole["train"], 4, layout=cartpole["layout"], width=64
    )
    config = TrainingConfig(max_steps=1500, eval_every=100)
    return train(model, cartpole["train"], cartpole["val"], config, jax.random.PRNGKey(4))[0]


def test_residual_model_50_step_error_is_far_below_the_simulators(cartpole, residual):
    sim_error = k_step_error(cartpole["sim"], cartpole["held_out"], 50, start_stride=5)
    model_error = k_step_error(residual, cartpole["held_out"], 50, start_stride=5)
    assert sim_error.n_windows == model_error.n_windows == 4 * 3
    assert np.all(np.isfinite(model_error.rmse))
    # Measured: the sim is off by ~3 after 50 steps (mostly cart position and velocity), the
    # residual model by ~0.05-0.1 with 480 training transitions.
    assert model_error.at(50) < sim_error.at(50) / 10
    assert model_error.at(1) < sim_error.at(1) / 3


def test_ensemble_disagrees_more_out_of_distribution(cartpole, ensemble):
    s, a, _ = cartpole["train"].transitions()
    inside = jax.vmap(ensemble.disagreement)(jnp.asarray(s), jnp.asarray(a))
    # Far outside anything recorded: cart 30 m away, moving fast, pole spinning.
    far = jnp.asarray(s).at[:, 0].add(30.0).at[:, 3].multiply(8.0).at[:, 4].add(40.0)
    outside = jax.vmap(ensemble.disagreement)(far, jnp.asarray(a))
    assert float(jnp.mean(outside)) > 5 * float(jnp.mean(inside))
    # The mean prediction is the members' mean correction on the shared base.
    members = ensemble.member_predictions(jnp.asarray(s[0]), jnp.asarray(a[0]))
    assert members.shape == (4, 5) and float(jnp.std(members[:, 0])) > 0
    np.testing.assert_allclose(
        ensemble.layout.to_state(ensemble(jnp.asarray(s[0]), jnp.asarray(a[0])))[0],
        jnp.mean(members[:, 0]),
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- files


def _predict(model, data):
    s, a, _ = data.transitions()
    return np.asarray(jax.vmap(model)(jnp.asarray(s[:20]), jnp.asarray(a[:20])))


def test_save_load_round_trip_is_exact(tmp_path, cartpole, ensemble, residual):
    for name, model in (("ensemble", ensemble), ("residual", residual)):
        save_model(tmp_path / name, model, metadata={"dataset": cartpole["train"].header()})
        loaded = load_model(tmp_path / name, make_sim=make_testbed, obs_dim=5, action_dim=1)
        assert type(loaded) is type(model)
        for x, y in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(
        _predict(ensemble, cartpole["held_out"]),
        _predict(load_model(tmp_path / "ensemble", make_sim=make_testbed), cartpole["held_out"]),
    )
    # The residual model's simulator is rebuilt from the sidecar, not pickled: same testbed.
    loaded = load_model(tmp_path / "residual", make_sim=make_testbed)
    sim, rebuilt = cartpole["sim"], loaded.sim_env
    assert (rebuilt.name, rebuilt.physics, rebuilt.dt, rebuilt.backend, rebuilt.dtype) == (
        sim.name,
        sim.physics,
        sim.dt,
        sim.backend,
        sim.dtype,
    )
    sidecar = json.loads((tmp_path / "residual.json").read_text())
    assert sidecar["metadata"]["dataset"]["n_transitions"] == 480
    assert sidecar["normalization"]["obs_mean"] == np.asarray(residual.normalizer.obs_mean).tolist()
    # A residual model needs a simulator builder, one that can make the simulator named.
    with pytest.raises(
        ValueError, match="residual model over the simulator 'cartpole_swingup_sim'"
    ):
        load_model(tmp_path / "residual")
    sidecar = json.loads((tmp_path / "residual.json").read_text())
    sidecar["sim"]["testbed"] = "cartpole_hover_sim"
    (tmp_path / "hover.json").write_text(json.dumps(sidecar))
    (tmp_path / "hover.eqx").write_bytes((tmp_path / "residual.eqx").read_bytes())
    with pytest.raises(ValueError, match="unknown testbed 'cartpole_hover_sim'"):
        load_model(tmp_path / "hover", make_sim=make_testbed)


def test_mismatched_model_and_data_files_give_clear_errors(tmp_path, cartpole, ensemble):
    small = MLPDynamics.for_dataset(jax.random.PRNGKey(0), cartpole["train"], width=8)
    save_model(tmp_path / "small", small)
    save_model(tmp_path / "ensemble", ensemble)
    with pytest.raises(ValueError, match="obs_dim=5, expected 8"):
        load_model(tmp_path / "small", obs_dim=8)
    # A sidecar paired with another model's weights.
    (tmp_path / "small.eqx").write_bytes((tmp_path / "ensemble.eqx").read_bytes())
    with pytest.raises(ValueError, match="does not match its sidecar"):
        load_model(tmp_path / "small")
    (tmp_path / "ensemble.json").write_text("{ truncated")
    with pytest.raises(ValueError, match="not a readable model sidecar"):
        load_model(tmp_path / "ensemble")
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nothing")
    # Data of another system for this model.
    double = TransitionDataset(
        np.zeros((2, 4, 8)), np.zeros((2, 3, 1)), env_name="double_cartpole_balance_real"
    )
    with pytest.raises(ValueError, match=r"\(obs_dim, action_dim\) \(8, 1\)"):
        train(small, double, double, TrainingConfig(max_steps=10))
    with pytest.raises(ValueError, match="obs_dim"):
        k_step_error(small, double, 2)


# ----------------------------------------------------------------------- learned env


def test_learned_env_runs_pods_rollouts_like_the_simulator(cartpole, ensemble):
    env = LearnedEnv(ensemble, cartpole["real"])
    policy = lambda obs: jnp.tanh(-obs[3:4])

    @jax.jit
    def play(key):
        states = reset_batch(env, key, 3)
        return jax.vmap(lambda s: trajectory_of_policy(env, s, policy, 10))(states)

    trajectory = play(jax.random.PRNGKey(0))
    assert trajectory.observations.shape == (3, 11, 5)
    # Initial states are the testbed's: the swing-up start, pole hanging down.
    assert np.all(np.asarray(trajectory.observations[:, 0, 1]) < -0.99)
    # Rewards are the testbed's task reward of each predicted observation.
    expected = jax.vmap(jax.vmap(cartpole["real"].task_reward))(
        trajectory.observations[:, 1:], trajectory.actions
    )
    np.testing.assert_allclose(trajectory.rewards, expected, rtol=1e-6)
    obs, action = trajectory.observations[0, 4], trajectory.actions[0, 3]
    assert float(env.task_reward(obs, action)) == float(cartpole["real"].task_reward(obs, action))
    assert env.dt == cartpole["real"].dt and env.episode_length == HORIZON
    with pytest.raises(ValueError, match="testbed"):
        LearnedEnv(ensemble).reset(jax.random.PRNGKey(0))


def test_a_sampled_member_steps_each_rollout_of_the_ensemble(cartpole, ensemble):
    sampled = LearnedEnv(ensemble, cartpole["real"], sample_member=True)
    mean = LearnedEnv(ensemble, cartpole["real"])
    policy = lambda obs: jnp.tanh(-obs[3:4])

    @jax.jit
    def play(env, key):
        states = reset_batch(env, key, 64)
        return states, jax.vmap(lambda s: trajectory_of_policy(env, s, policy, 6))(states)

    key = jax.random.PRNGKey(3)
    states, trajectories = play(sampled, key)
    _, mean_trajectories = play(mean, key)
    members = np.asarray(states.info["member"])
    # Every member is drawn; the initial states are those the mean model starts from.
    assert set(members.tolist()) == set(range(ensemble.n_members))
    np.testing.assert_array_equal(
        trajectories.observations[:, 0], mean_trajectories.observations[:, 0]
    )
    # Each rollout is its member's own, start to end, and not the mean's.
    for i in (0, 1):
        alone = LearnedEnv(ensemble.member(int(members[i])), cartpole["real"])
        own = trajectory_of_policy(alone, alone.state_at(states.obs[i]), policy, 6)
        np.testing.assert_allclose(trajectories.observations[i], own.observations, atol=1e-6)
    assert not np.allclose(trajectories.observations, mean_trajectories.observations)
    with pytest.raises(ValueError, match="sample_member needs an ensemble"):
        LearnedEnv(ensemble.member(0), cartpole["real"], sample_member=True)
    with pytest.raises(ValueError, match="ModelConfig.prediction"):
        ModelConfig(kind="mlp", prediction="member")


def test_a_refitted_model_reuses_the_compiled_rollout(cartpole, ensemble):
    traces = []

    @jax.jit
    def value(env, obs, actions):
        traces.append(1)
        return trajectory_of_actions(env, env.state_at(obs), actions).value

    obs = jnp.asarray(cartpole["held_out"].observations[0, 0])
    actions = jnp.asarray(cartpole["held_out"].actions[0, :8])
    refit = jax.tree.map(lambda x: x * 1.01 if eqx.is_inexact_array(x) else x, ensemble)
    first = value(LearnedEnv(ensemble, cartpole["real"]), obs, actions)
    second = value(LearnedEnv(refit, cartpole["real"]), obs, actions)
    assert len(traces) == 1 and float(first) != float(second)


def _value_and_fd_gradient(env, state, actions, eps=1e-6):
    value = lambda a: trajectory_of_actions(env, state, a).value
    grad = jax.jit(jax.grad(value))(actions)
    value = jax.jit(value)
    flat = np.asarray(actions).ravel()
    fd = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        fd[i] = (
            value((flat + e).reshape(actions.shape)) - value((flat - e).reshape(actions.shape))
        ) / (2 * eps)
    return np.asarray(grad).ravel(), fd


def test_gradients_through_the_learned_env_match_finite_differences(cartpole, ensemble):
    with jax.enable_x64(True):
        testbed = make_testbed("cartpole_swingup_real", dtype=jnp.float64, backend="chain")
        env = LearnedEnv(cast_model(ensemble, jnp.float64), testbed)
        state = env.reset(jax.random.PRNGKey(1))
        actions = 0.5 * jnp.sin(jnp.arange(12, dtype=jnp.float64))[:, None]
        grad, fd = _value_and_fd_gradient(env, state, actions)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 1e-4
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_gradients_through_the_residual_learned_env_match_finite_differences(cartpole, residual):
    with jax.enable_x64(True):
        sim = make_testbed("cartpole_swingup_sim", dtype=jnp.float64, backend="chain")
        model = cast_model(residual, jnp.float64).with_sim_env(sim)
        env = LearnedEnv(
            model, make_testbed("cartpole_swingup_real", dtype=jnp.float64, backend="chain")
        )
        state = env.reset(jax.random.PRNGKey(1))
        actions = 0.5 * jnp.sin(jnp.arange(6, dtype=jnp.float64))[:, None]
        grad, fd = _value_and_fd_gradient(env, state, actions)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 1e-4
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_residual_model_trains_on_a_multi_step_loss_through_the_simulator(cartpole):
    model = ResidualDynamics.for_dataset(
        jax.random.PRNGKey(5), cartpole["train"], cartpole["sim"], width=16
    )
    config = TrainingConfig(max_steps=200, eval_every=50, rollout_horizon=3)
    _, metrics = train(model, cartpole["train"], cartpole["val"], config, jax.random.PRNGKey(6))
    losses = metrics["validation/loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
