"""PODS: action improvement (first and second order), line search, distillation, training.

Compiles are the cost here (a gradient through a cart-pole rollout takes 20-60 s to compile
on 2 cores), so the cart-pole is compiled for two things only: a forward line search and the
learning test's epoch. Everything about derivatives runs on a linear-quadratic test double.
"""

import dataclasses

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from brax.envs.base import Env, State
from doubles import LinearQuadraticEnv

from pods.config import PODSConfig, grown_horizon
from pods.derivatives import (
    action_gradient,
    gauss_newton,
    gauss_newton_factor,
    gauss_newton_matrix,
    newton_direction,
    reward_derivatives,
)
from pods.distill import distill_policy, elite
from pods.improve import Improvement, improve_actions
from pods.rollout import (
    Episode,
    Trajectory,
    episode_of_actions,
    evaluate_policy,
    reset_batch,
    trajectory_of_actions,
    trajectory_of_policy,
)
from pods.state import init_training_state, learning_rate_scale, policy_learner
from pods.step_size import ImprovementStep, line_search, step_size_grid
from pods.train import distill_improved, make_pods, train
from sim2real import make_testbed


def _value(env, state, actions):
    return trajectory_of_actions(env, state, actions).value


# ---------------------------------------------------------------- second order


def test_gauss_newton_equals_hessian_and_one_undamped_step_reaches_the_optimum():
    with jax.enable_x64(True):
        env = LinearQuadraticEnv(jnp.float64)
        state = env.reset(jax.random.PRNGKey(1))
        actions = jax.random.normal(jax.random.PRNGKey(2), (env.episode_length, 1), jnp.float64)
        n = env.episode_length

        matrix = gauss_newton_matrix(env, state, actions)
        hessian = jax.hessian(lambda a: _value(env, state, a))(actions).reshape(n, n)
        np.testing.assert_allclose(matrix, -hessian, rtol=1e-10, atol=1e-12)

        _, gradient = action_gradient(env, state, actions)
        optimum = actions + jnp.linalg.solve(-hessian, gradient.reshape(n)).reshape(n, 1)
        states = jax.tree.map(lambda x: x[None], state)
        obs = trajectory_of_actions(env, state, actions).observations[None]
        step = improve_actions(
            env,
            states,
            actions[None],
            obs,
            jnp.array([1.0, 0.5, 0.25]),
            order=2,
            damping=0.0,
            action_bounds=(-100.0, 100.0),
        )
        assert bool(step.accepted[0]) and float(step.step_size[0]) == 1.0
        np.testing.assert_allclose(step.actions[0], optimum, rtol=1e-8, atol=1e-10)
        _, gradient_at_step = action_gradient(env, state, step.actions[0])
        assert float(jnp.max(jnp.abs(gradient_at_step))) < 1e-9
        # The returned states are those the improved actions visit.
        np.testing.assert_allclose(
            step.observations[0], trajectory_of_actions(env, state, step.actions[0]).observations
        )


def test_second_order_gradient_matches_reverse_mode_and_finite_differences():
    with jax.enable_x64(True):
        env = LinearQuadraticEnv(jnp.float64)
        state = env.reset(jax.random.PRNGKey(3))
        actions = 0.3 * jax.random.normal(
            jax.random.PRNGKey(4), (env.episode_length, 1), jnp.float64
        )
        value, gradient, _ = gauss_newton_factor(env, state, actions)
        value_rev, gradient_rev = action_gradient(env, state, actions)
        np.testing.assert_allclose(value, value_rev, rtol=1e-12)
        np.testing.assert_allclose(gradient, gradient_rev.reshape(-1), rtol=1e-10, atol=1e-12)
        eps = 1e-6
        for i in range(env.episode_length):
            bump = jnp.zeros_like(actions).at[i, 0].set(eps)
            fd = (_value(env, state, actions + bump) - _value(env, state, actions - bump)) / (
                2 * eps
            )
            np.testing.assert_allclose(gradient[i], fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- line search


@pytest.fixture(scope="module")
def swingup():
    return make_testbed("cartpole_swingup_sim", backend="chain")


@pytest.fixture(scope="module")
def cartpole_line_search(swingup):
    """The batched line search, compiled once for the module (forward rollouts only)."""
    return jax.jit(lambda *args: line_search(swingup, *args))


class CoupledPendulumEnv(Env):
    """A nonlinear two-input test double: a pendulum and a cart coupled through sin and a
    squared input, with a reward whose Hessian is indefinite (its cosine term), so the
    Gauss-Newton terms take the PSD projection."""

    episode_length = 10

    def reset(self, rng):
        s0 = jax.random.uniform(rng, (3,), jnp.float64, -1.0, 1.0)
        zero = jnp.zeros((), jnp.float64)
        return State(None, s0, zero, zero)

    def step(self, state, action):
        x, angle, rate = state.obs
        rate = rate + 0.1 * (jnp.sin(angle) + action[0] - 0.5 * action[1] ** 2 + 0.3 * x)
        obs = jnp.stack([x + 0.1 * action[1], angle + 0.1 * rate, rate])
        return state.replace(obs=obs, reward=self.task_reward(obs, action))

    def task_reward(self, obs, action):
        return jnp.cos(obs[1]) - 0.1 * obs[0] ** 2 - 0.05 * obs[2] ** 2 - 0.01 * action @ action

    @property
    def observation_size(self):
        return 3

    @property
    def action_size(self):
        return 2

    @property
    def backend(self):
        return "test"


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_reward_derivatives_equal_autodiff_and_finite_differences(lead):
    """One forward-over-reverse pass gives r, dr/dz and d2r/dz2 of the cart-pole's task
    reward at every z_t, as `jax.hessian` and `jax.grad` do, and as central differences of
    the gradient say, whatever the leading axes."""
    with jax.enable_x64(True):
        env = make_testbed("double_cartpole_swingup_sim", dtype=jnp.float64, backend="chain")
        obs_dim = env.observation_size

        def reward_of_z(z):
            return env.task_reward(z[:obs_dim], z[obs_dim:])

        z = jax.random.normal(jax.random.PRNGKey(0), (*lead, obs_dim + 1), jnp.float64)
        value, gradient, hessian = reward_derivatives(reward_of_z, z)
        assert value.shape == lead and gradient.shape == z.shape
        assert hessian.shape == (*z.shape, z.shape[-1])
        rows = z.reshape(-1, z.shape[-1])
        np.testing.assert_allclose(value.reshape(-1), jax.vmap(reward_of_z)(rows), rtol=1e-14)
        np.testing.assert_allclose(
            gradient.reshape(rows.shape), jax.vmap(jax.grad(reward_of_z))(rows), rtol=1e-14
        )
        exact = jax.vmap(jax.hessian(reward_of_z))(rows)
        np.testing.assert_allclose(hessian.reshape(exact.shape), exact, rtol=1e-13, atol=1e-15)
        eps, basis = 1e-6, jnp.eye(rows.shape[-1], dtype=jnp.float64)
        grad = jax.vmap(jax.grad(reward_of_z))
        central = jnp.stack(
            [(grad(rows + eps * e) - grad(rows - eps * e)) / (2 * eps) for e in basis], -1
        )
        np.testing.assert_allclose(hessian.reshape(exact.shape), central, atol=1e-7)
        assert jnp.any(jnp.abs(exact) > 1e-2)  # the reward's curvature is not trivially zero


@pytest.mark.parametrize("window", [4, 5])
def test_windowed_gauss_newton_equals_one_tangent_per_action(window):
    """W tangents shared by all windows give the Jacobian of one tangent per action, and the
    block-wise Newton solve equals the dense one; 10 steps in windows of 4 leave a padded
    last block, in windows of 5 none."""
    with jax.enable_x64(True):
        env = CoupledPendulumEnv()
        state = env.reset(jax.random.PRNGKey(5))
        actions = 0.5 * jax.random.normal(jax.random.PRNGKey(6), (10, 2), jnp.float64)
        shared = gauss_newton(env, state, actions, gradient_window=window)
        reference = gauss_newton(env, state, actions, gradient_window=window, tangent_period=10)
        assert shared.blocks.shape[0] == -(-10 // window) and reference.blocks.shape[0] == 1

        np.testing.assert_allclose(shared.value, reference.value, rtol=1e-14)
        np.testing.assert_allclose(shared.gradient, reference.gradient, rtol=1e-12, atol=1e-14)
        _, gradient_rev = action_gradient(env, state, actions, gradient_window=window)
        np.testing.assert_allclose(shared.gradient, gradient_rev.reshape(-1), rtol=1e-10)
        matrix = reference.dense_factor().T @ reference.dense_factor()
        np.testing.assert_allclose(
            shared.dense_factor().T @ shared.dense_factor(), matrix, rtol=1e-12, atol=1e-14
        )
        # The window's cut makes H block-diagonal: nothing couples actions of two windows.
        steps = jnp.arange(20) // 2
        across = (steps[:, None] // window) != (steps[None, :] // window)
        assert jnp.all(jnp.where(across, matrix, 0.0) == 0.0)
        assert jnp.any(jnp.where(~across, matrix, 0.0) != 0.0)

        damping = 1e-2
        damped = matrix + damping * jnp.mean(jnp.diag(matrix)) * jnp.eye(20)
        dense_direction = jnp.linalg.solve(damped, reference.gradient)
        np.testing.assert_allclose(
            newton_direction(shared, damping), dense_direction, rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(
            newton_direction(reference, damping), dense_direction, rtol=1e-10, atol=1e-12
        )


def test_line_search_never_returns_a_lower_return(swingup, cartpole_line_search):
    k, horizon = 12, 30
    states = reset_batch(swingup, jax.random.PRNGKey(5), k)
    actions = jax.random.uniform(jax.random.PRNGKey(6), (k, horizon, 1), minval=-1.0, maxval=1.0)
    values = jax.jit(jax.vmap(lambda s, a: _value(swingup, s, a)))(states, actions)
    # Random directions: some help, many hurt; big steps push actions past the bounds.
    directions = jax.random.normal(jax.random.PRNGKey(7), (k, horizon, 1))
    result = cartpole_line_search(states, actions, directions, values, step_size_grid(2.0, 1e-3, 6))

    assert np.all(np.asarray(result.value) >= np.asarray(values))
    assert np.all(np.asarray(result.actions) <= 1.0) and np.all(np.asarray(result.actions) >= -1.0)
    accepted = np.asarray(result.accepted)
    assert 0 < accepted.sum() < k, "random directions should help some trajectories, not all"
    assert np.all(np.asarray(result.value)[accepted] > np.asarray(values)[accepted])
    np.testing.assert_array_equal(
        np.asarray(result.actions)[~accepted], np.asarray(actions)[~accepted]
    )
    np.testing.assert_array_equal(np.asarray(result.step_size)[~accepted], 0.0)
    replayed = jax.jit(jax.vmap(lambda s, a: _value(swingup, s, a)))(states, result.actions)
    np.testing.assert_allclose(replayed, result.value, rtol=1e-5)

    # A descent direction can only be rejected, everywhere.
    descent = cartpole_line_search(
        states, result.actions, -directions * 0.0, result.value, step_size_grid(2.0, 1e-3, 6)
    )
    assert not np.any(np.asarray(descent.accepted))
    np.testing.assert_array_equal(descent.value, result.value)


def test_first_order_improvement_on_linear_quadratic_never_worsens():
    env = LinearQuadraticEnv()
    k = 16
    states = reset_batch(env, jax.random.PRNGKey(8), k)
    actions = jax.random.normal(jax.random.PRNGKey(9), (k, env.episode_length, 1))
    obs = jax.vmap(lambda s, a: trajectory_of_actions(env, s, a).observations)(states, actions)
    step = jax.jit(lambda s, a, o: improve_actions(env, s, a, o, step_size_grid(1.0, 1e-3, 8)))(
        states, actions, obs
    )
    assert np.all(np.asarray(step.value_improved) >= np.asarray(step.value))
    assert np.mean(np.asarray(step.accepted)) > 0.9
    assert not np.any(np.asarray(step.nonfinite))


# ---------------------------------------------------------------- non-finite updates


def test_nan_gradient_rejects_exactly_the_poisoned_trajectories():
    env = LinearQuadraticEnv(poison="positive_start")
    k = 16
    states = reset_batch(env, jax.random.PRNGKey(10), k)
    poisoned = np.asarray(states.info["poisoned"])
    assert 0 < poisoned.sum() < k
    actions = jax.random.normal(jax.random.PRNGKey(11), (k, env.episode_length, 1))
    obs = jax.vmap(lambda s, a: trajectory_of_actions(env, s, a).observations)(states, actions)
    for order in (1, 2):
        step = improve_actions(env, states, actions, obs, step_size_grid(1.0, 1e-3, 8), order=order)
        np.testing.assert_array_equal(np.asarray(step.nonfinite), poisoned)
        assert not np.any(np.asarray(step.accepted)[poisoned])
        assert np.all(np.asarray(step.accepted)[~poisoned])
        kept = np.clip(np.asarray(actions), -1.0, 1.0)[poisoned]
        np.testing.assert_array_equal(np.asarray(step.actions)[poisoned], kept)
        assert np.all(np.isfinite(np.asarray(step.actions)))


def test_nan_gradient_in_training_leaves_params_unchanged_and_is_counted():
    env = LinearQuadraticEnv(poison="all")
    config = PODSConfig(
        num_epochs=3,
        num_trajectories=8,
        minibatch_size=16,
        hidden_sizes=(8,),
        normalize_observations=False,
    )
    make_policy, params, history = train(config, env, jax.random.PRNGKey(12))
    _, initial_params, _ = train(
        dataclasses.replace(config, num_epochs=1, learning_rate=1e-30), env, jax.random.PRNGKey(12)
    )
    for metrics in history:
        assert metrics["train/rejected_nonfinite"] == config.num_trajectories
        assert metrics["train/accept_rate"] == 0.0
    # With no step accepted, the targets are the policy's own actions: a zero loss gradient.
    for leaf, initial in zip(
        jax.tree.leaves(params.network), jax.tree.leaves(initial_params.network)
    ):
        np.testing.assert_array_equal(leaf, initial)


def test_the_best_policy_is_the_highest_scored_epoch_start_and_survives_a_resume():
    """policy_selection="best": the returned policy is the epoch start with the highest
    train/return; a run resumed from a checkpointed state keeps the same one; "last" returns
    the last epoch's params, as before."""
    env = LinearQuadraticEnv()
    config = PODSConfig(
        num_epochs=6,
        num_trajectories=8,
        minibatch_size=16,
        hidden_sizes=(8,),
        exploration_noise=0.5,
        learning_rate=3e-2,
        policy_selection="best",
    )
    key = jax.random.PRNGKey(4)
    states = []
    make_policy, params, history = train(
        config, env, key, checkpoint_fn=lambda state, _: states.append(state)
    )
    returns = [m["train/return"] for m in history]
    best = int(np.argmax(returns))
    assert history[-1]["train/best_return"] == pytest.approx(returns[best])
    assert history[-1]["train/best_epoch"] == best
    # The kept policy is the one epoch `best` started from: the state after `best` epochs.
    assert 0 < best < config.num_epochs - 1, returns  # the training peaks, then drifts
    for leaf, kept in zip(jax.tree.leaves(states[best - 1].params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(leaf, kept)
    assert states[-1].best.epoch == best and states[-1].policy_params is states[-1].best.params
    # Resumed from the state after 3 epochs: the same best, to the bit.
    _, resumed, _ = train(config, env, key, initial_state=states[2])
    for leaf, kept in zip(jax.tree.leaves(resumed), jax.tree.leaves(params)):
        np.testing.assert_array_equal(leaf, kept)
    # "last": the params after the last epoch, whatever scored best.
    _, last, last_history = train(dataclasses.replace(config, policy_selection="last"), env, key)
    assert [m["train/return"] for m in last_history] == returns
    assert "train/best_return" not in last_history[-1]
    for leaf, final in zip(jax.tree.leaves(last), jax.tree.leaves(states[-1].params)):
        np.testing.assert_array_equal(leaf, final)


def test_a_checkpoint_from_before_the_option_loads_as_last_and_not_as_best():
    """A state dict without `best` (every checkpoint from before policy_selection) restores
    into a `last` state; a `best` state refuses it, and the reverse, in one line."""
    env = LinearQuadraticEnv()
    config = PODSConfig(num_trajectories=8, minibatch_size=16, hidden_sizes=(8,))
    network = policy_learner(config, [env], env.episode_length).network
    last = init_training_state(config, env, network, jax.random.PRNGKey(0))
    best = init_training_state(
        dataclasses.replace(config, policy_selection="best"), env, network, jax.random.PRNGKey(0)
    )
    stored = flax.serialization.to_state_dict(last)
    assert set(stored) == {"params", "optimizer_state", "epoch"}
    restored = flax.serialization.from_state_dict(last, stored)
    assert restored.best is None and int(restored.epoch) == 0
    with pytest.raises(ValueError, match="keeps no best policy"):
        flax.serialization.from_state_dict(best, stored)
    with pytest.raises(ValueError, match="keeps a best policy"):
        flax.serialization.from_state_dict(last, flax.serialization.to_state_dict(best))
    again = flax.serialization.from_state_dict(best, flax.serialization.to_state_dict(best))
    assert float(again.best.value) == -np.inf


def test_a_non_finite_return_never_replaces_the_kept_policy():
    from pods.state import BestPolicy, TrainingState, kept_best

    params = {"w": jnp.ones(2)}
    state = TrainingState(
        params={"w": jnp.zeros(2)},
        optimizer_state=(),
        epoch=jnp.asarray(4),
        best=BestPolicy(params, jnp.asarray(1.0), jnp.asarray(2)),
    )
    for value in (jnp.nan, jnp.asarray(0.5), jnp.asarray(1.0)):
        kept = kept_best(state, jnp.asarray(value))
        assert int(kept.epoch) == 2 and float(kept.value) == 1.0
        np.testing.assert_array_equal(kept.params["w"], params["w"])
    kept = kept_best(state, jnp.asarray(1.5))
    assert int(kept.epoch) == 4 and float(kept.value) == 1.5
    np.testing.assert_array_equal(kept.params["w"], jnp.zeros(2))
    assert kept_best(state.replace(best=None), jnp.asarray(9.0)) is None


def linear_regression(seed: int, n: int):
    """A linear policy at zero, n (observation, target) pairs and Adam: (obs, targets, net,
    params, optimizer)."""
    obs = jax.random.normal(jax.random.PRNGKey(seed), (n, 3))
    net = lambda p, x: x @ p["w"]
    return obs, jnp.tanh(obs[:, :1]), net, {"w": jnp.zeros((3, 1))}, optax.adam(1e-2)


def test_nan_in_distillation_skips_the_update_and_counts_it():
    obs, targets, net, params, optimizer = linear_regression(13, 32)
    opt_state = optimizer.init(params)
    weights = jnp.ones(32)

    clean = distill_policy(
        net,
        params,
        optimizer,
        opt_state,
        jax.random.PRNGKey(0),
        observations=obs,
        targets=targets,
        weights=weights,
        minibatch_size=32,
        passes=3,
    )
    assert float(clean.skipped_updates) == 0 and not np.allclose(clean.network_params["w"], 0.0)

    poisoned = distill_policy(
        net,
        params,
        optimizer,
        opt_state,
        jax.random.PRNGKey(0),
        observations=obs,
        targets=targets.at[5, 0].set(jnp.nan),
        weights=weights,
        minibatch_size=32,
        passes=3,
    )
    assert float(poisoned.skipped_updates) == 3
    np.testing.assert_array_equal(poisoned.network_params["w"], params["w"])
    assert int(poisoned.optimizer_state[0].count) == 0
    assert np.isnan(float(poisoned.loss))

    # A zero weight keeps the pair out instead: every update is applied.
    masked = distill_policy(
        net,
        params,
        optimizer,
        opt_state,
        jax.random.PRNGKey(0),
        observations=obs,
        targets=targets.at[5, 0].set(jnp.nan),
        weights=weights.at[5].set(0.0),
        minibatch_size=32,
        passes=3,
    )
    assert float(masked.skipped_updates) == 0 and np.all(np.isfinite(masked.network_params["w"]))


def test_update_scale_multiplies_each_adam_step():
    obs, targets, net, params, optimizer = linear_regression(14, 16)

    def one_step(scale):
        result = distill_policy(
            net,
            params,
            optimizer,
            optimizer.init(params),
            jax.random.PRNGKey(0),
            observations=obs,
            targets=targets,
            weights=jnp.ones(16),
            minibatch_size=16,
            passes=1,
            update_scale=scale,
        )
        return result.network_params["w"]

    full = one_step(None)
    assert not np.allclose(full, 0.0)
    np.testing.assert_allclose(one_step(jnp.float32(0.25)), 0.25 * full, rtol=1e-6)
    np.testing.assert_array_equal(one_step(jnp.float32(0.0)), params["w"])


def test_cosine_schedule_anneals_the_learning_rate_to_zero_over_the_epochs():
    assert learning_rate_scale(PODSConfig(), jnp.int32(3), jnp.float32) is None
    config = PODSConfig(num_epochs=8, learning_rate_schedule="cosine")
    scales = [float(learning_rate_scale(config, jnp.int32(e), jnp.float32)) for e in range(10)]
    np.testing.assert_allclose(scales[0], 1.0)
    np.testing.assert_allclose(scales[4], 0.5, atol=1e-7)
    np.testing.assert_allclose(scales[8:], 0.0, atol=1e-7)  # and past the last epoch
    assert all(a > b for a, b in zip(scales[:8], scales[1:9]))


# ---------------------------------------------------------------- elite distillation


def test_elite_is_the_top_fraction_and_never_a_non_finite_value():
    values = jnp.array([3.0, jnp.nan, 5.0, 1.0, jnp.inf * -1, 4.0, 2.0, 0.0])
    np.testing.assert_array_equal(
        elite(values, 0.25), [False, False, True, False, False, True, False, False]
    )
    np.testing.assert_array_equal(elite(values, 0.01), values == 5.0)  # at least one
    assert bool(jnp.all(elite(values, 1.0)))
    assert int(jnp.sum(elite(jnp.array([1.0, 2.0, 2.0, 0.0]), 0.25))) == 2  # ties kept


def distillation_learner(env, k: int):
    """A small policy that distillation fits within one call: (config, network, optimizer,
    initial state)."""
    config = PODSConfig(
        num_trajectories=k,
        hidden_sizes=(16,),
        minibatch_size=16,
        distill_passes=60,
        learning_rate=1e-2,
        normalize_observations=False,
    )
    learner = policy_learner(config, [env], env.episode_length)
    state = init_training_state(config, env, learner.network, jax.random.PRNGKey(0))
    return config, learner.network, learner.optimizer, state


def test_distilling_the_elite_learns_its_actions_where_distilling_all_averages():
    """Two optima visit the same states with opposite actions; the better one scores higher.
    Distilling every trajectory regresses onto their mean (about 0); the elite onto its own."""
    env = LinearQuadraticEnv()
    k, horizon = 8, env.episode_length
    config, network, optimizer, state = distillation_learner(env, k)
    states = jax.random.uniform(jax.random.PRNGKey(1), (k // 2, horizon + 1, 2), minval=-1)
    observations = jnp.concatenate([states, states])
    better = jnp.arange(k) < k // 2
    actions = jnp.where(better, 0.8, -0.8)[:, None, None] * jnp.ones((k, horizon, 1))
    values = jnp.where(better, 10.0, 5.0)
    steps = ImprovementStep(
        actions=actions,
        value=values - 1.0,
        value_improved=values,
        gradient_norm=jnp.ones(k),
        step_size=jnp.ones(k),
        accepted=jnp.ones(k, bool),
        nonfinite=jnp.zeros(k, bool),
        observations=observations,
        active=jnp.ones((k, horizon)),
    )
    steps = jax.tree.map(lambda x: x[None], steps)  # one improvement step
    data = Episode(
        Trajectory(observations, actions, jnp.zeros((k, horizon))), jnp.ones((k, horizon))
    )

    def distilled_actions(fraction):
        improvement = Improvement(data, data, steps, elite(values, fraction), jnp.zeros(()))
        new_state, metrics = distill_improved(
            config,
            state,
            improvement,
            jax.random.PRNGKey(2),
            network=network,
            optimizer=optimizer,
        )
        outputs = network.apply(new_state.params.network, observations[: k // 2, :-1])
        return np.asarray(outputs), metrics

    elite_outputs, elite_metrics = distilled_actions(0.5)
    all_outputs, all_metrics = distilled_actions(1.0)
    np.testing.assert_allclose(elite_outputs, 0.8, atol=0.1)
    assert np.max(np.abs(all_outputs)) < 0.3
    assert float(elite_metrics["train/return_distilled"]) == 10.0
    assert float(all_metrics["train/return_distilled"]) == 7.5


def test_steps_after_termination_are_not_distilled():
    """Each trajectory's first half asks for +0.8, its second half, after the episode ended,
    for -0.8, at the same states: only the first half is learned."""
    env = LinearQuadraticEnv()
    k, horizon = 8, env.episode_length
    config, network, optimizer, state = distillation_learner(env, k)
    points = jax.random.uniform(jax.random.PRNGKey(1), (k, 1, 2), minval=-1)
    observations = jnp.broadcast_to(points, (k, horizon + 1, 2))
    first_half = jnp.arange(horizon) < horizon // 2
    actions = jnp.where(first_half, 0.8, -0.8)[None, :, None] * jnp.ones((k, horizon, 1))
    active = jnp.broadcast_to(first_half.astype(jnp.float32), (k, horizon))
    steps = ImprovementStep(
        actions=actions,
        value=jnp.zeros(k),
        value_improved=jnp.ones(k),
        gradient_norm=jnp.ones(k),
        step_size=jnp.ones(k),
        accepted=jnp.ones(k, bool),
        nonfinite=jnp.zeros(k, bool),
        observations=observations,
        active=active,
    )
    steps = jax.tree.map(lambda x: x[None], steps)
    data = Episode(Trajectory(observations, actions, jnp.zeros((k, horizon))), active)
    improvement = Improvement(data, data, steps, jnp.ones(k, bool), jnp.zeros(()))
    new_state, _ = distill_improved(
        config,
        state,
        improvement,
        jax.random.PRNGKey(2),
        network=network,
        optimizer=optimizer,
    )
    outputs = network.apply(new_state.params.network, points[:, 0])
    np.testing.assert_allclose(outputs, 0.8, atol=0.1)


def test_improvement_of_terminating_episodes_keeps_each_returned_mask():
    """On an env that ends episodes, the actions returned come with the steps their own
    episode lasts, and a return that counts only those."""
    from test_rollout import FallingPoint

    env = FallingPoint()
    k = 8
    states = reset_batch(env, jax.random.PRNGKey(3), k)
    actions = jax.random.uniform(jax.random.PRNGKey(4), (k, env.episode_length, 1), minval=0.1)
    start = jax.vmap(lambda s, a: episode_of_actions(env, s, a))(states, actions)
    assert np.all(np.asarray(start.steps) < env.episode_length)  # every episode ends
    for order in (1, 2):
        step = improve_actions(
            env,
            states,
            actions,
            start.observations,
            step_size_grid(1.0, 1e-3, 8),
            order=order,
            active=start.active,
        )
        replay = jax.vmap(lambda s, a: episode_of_actions(env, s, a))(states, step.actions)
        np.testing.assert_array_equal(step.active, replay.active)
        np.testing.assert_allclose(step.value_improved, replay.value, rtol=1e-5)
        assert np.all(np.asarray(step.value_improved) >= np.asarray(step.value))
        assert np.any(np.asarray(step.accepted))


# ---------------------------------------------------------------- config and params


@pytest.mark.parametrize(
    "field, value",
    [
        ("order", 3),
        ("num_trajectories", 0),
        ("step_size_min", 10.0),
        ("gradient_normalization", "l2"),
        ("exploration_decay", 1.5),
        ("gradient_window", -2),
        ("damping", float("nan")),
        ("elite_fraction", 0.0),
        ("elite_fraction", 1.5),
        ("start_states", "anywhere"),
        ("horizon_start", 0),
        ("distill_states", "everywhere"),
        ("horizon_growth_epochs", 0),
        ("learning_rate_schedule", "linear"),
        ("policy_selection", "first"),
    ],
)
def test_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=field) as error:
        PODSConfig(**{field: value})
    assert repr(value) in str(error.value) and "\n" not in str(error.value)


def test_visited_starts_lie_on_the_policys_own_episodes():
    env = LinearQuadraticEnv(episode_length=12)
    config = PODSConfig(
        num_trajectories=16,
        horizon=4,
        start_states="visited",
        hidden_sizes=(8,),
        order=2,
        minibatch_size=32,
    )
    pods = make_pods(config, env)
    params = init_training_state(config, env, pods.network, jax.random.PRNGKey(0)).params
    key = jax.random.PRNGKey(1)
    improvement = jax.jit(pods.improve)(params, jnp.zeros((), jnp.int32), key)
    starts = improvement.evaluation.observations[:, 0]
    # The same reset states as `reset` draws, then up to 12 - 4 = 8 of the policy's steps.
    resets = reset_batch(env, jax.random.split(key)[0], 16)
    episodes = jax.vmap(lambda s: trajectory_of_policy(env, s, pods.make_policy(params), 12))(
        resets
    )
    distance = jnp.linalg.norm(episodes.observations[:, :9] - starts[:, None], axis=-1)
    offsets = jnp.argmin(distance, axis=1)
    np.testing.assert_allclose(jnp.min(distance, axis=1), 0.0, atol=1e-6)
    assert 1 < len(set(np.asarray(offsets).tolist())), offsets
    # The rollouts improve from there, and the counter adds the steps to the starts.
    improved = improvement.improved
    assert np.all(np.asarray(improved.value_improved) >= np.asarray(improved.value))
    # Per trajectory: the evaluation rollout, the derivative one and 8 candidates of 4 steps
    # each, and the 8 steps to the start.
    _, _, history = train(dataclasses.replace(config, num_epochs=2), env, jax.random.PRNGKey(2))
    assert config.steps_per_trajectory(4, 12) == 10 * 4 + 8
    assert history[-1]["train/sim_steps"] == 2 * 16 * 48


@pytest.mark.parametrize("horizon", [None, 12, 20])
def test_visited_starts_need_a_horizon_shorter_than_the_episode(horizon):
    config = PODSConfig(horizon=horizon, start_states="visited")
    with pytest.raises(ValueError, match=r"start_states='visited' needs a horizon shorter") as e:
        make_pods(config, LinearQuadraticEnv(episode_length=12))
    assert f"horizon={horizon or 12}" in str(e.value)


def test_a_growing_horizon_ends_the_improved_episodes_at_the_epochs_horizon():
    env = LinearQuadraticEnv(episode_length=12)
    config = PODSConfig(
        num_trajectories=8, horizon_start=3, horizon_growth_epochs=4, minibatch_size=16
    )
    assert [int(grown_horizon(config, 12, jnp.array(e))) for e in range(7)] == [
        3, 5, 7, 9, 12, 12, 12
    ]  # fmt: skip
    program = make_pods(config, env)
    params = init_training_state(config, env, program.network, jax.random.PRNGKey(0)).params
    for epoch, steps in [(0, 3), (2, 7), (9, 12)]:
        improvement = program.improve(params, jnp.array(epoch), jax.random.PRNGKey(1))
        np.testing.assert_array_equal(improvement.data.active.sum(axis=1), steps)
        np.testing.assert_array_equal(improvement.improved.active.sum(axis=1), steps)
        # The data rollout's return counts those steps alone; the evaluation all twelve.
        np.testing.assert_allclose(
            improvement.data.value, improvement.data.rewards[:, :steps].sum(axis=1), rtol=1e-6
        )
        np.testing.assert_array_equal(improvement.evaluation.active, 1.0)
    assert config.steps_per_trajectory(12) == (1 + 1 + 1 + config.num_step_sizes) * 12
    with pytest.raises(
        ValueError, match=r"horizon_start must be <= the horizon \(12 steps\), got 13"
    ):
        make_pods(dataclasses.replace(config, horizon_start=13), env)


def test_float64_config_needs_a_float64_env():
    with pytest.raises(ValueError, match="float64"):
        train(
            PODSConfig(float64=True, num_epochs=1),
            LinearQuadraticEnv(jnp.float32),
            jax.random.PRNGKey(0),
        )


# ---------------------------------------------------------------- learning

# 25 steps (1.25 s): the untrained policy lets the pole fall past 1 rad around step 16. Second
# order because it compiles faster than a reverse pass here (no transpose of the Brax step).
BALANCE = PODSConfig(
    num_epochs=12,
    num_trajectories=16,
    horizon=25,
    minibatch_size=100,
    order=2,
    distill_passes=16,
    learning_rate=3e-3,
)


@pytest.fixture(scope="module")
def balance_run():
    env = make_testbed("cartpole_balance_sim", backend="chain")
    make_policy, params, history = train(BALANCE, env, jax.random.PRNGKey(0))
    return env, make_policy, params, history


def test_pods_learns_cartpole_balance_in_float32(balance_run):
    env, make_policy, params, history = balance_run
    returns = [m["train/return"] for m in history]
    assert all(m["train/rejected_nonfinite"] == 0 for m in history)
    assert all(np.isfinite(m["train/distill_loss"]) for m in history)
    # The untrained policy lets the pole fall (return ~21 of at most 25); trained, it balances.
    assert returns[0] < 22.0, returns
    assert np.mean(returns[-3:]) > returns[0] + 2.5, returns
    final = evaluate_policy(env, make_policy(params), jax.random.PRNGKey(99), 64, BALANCE.horizon)
    assert float(jnp.mean(final)) > 24.0 and float(jnp.mean(final)) > returns[0] + 2.5
    assert history[-1]["train/sim_steps"] == BALANCE.num_epochs * BALANCE.sim_steps_per_epoch(25)


def test_params_round_trip_through_serialization(balance_run):
    env, make_policy, params, _ = balance_run
    restored = flax.serialization.from_bytes(params, flax.serialization.to_bytes(params))
    obs = reset_batch(env, jax.random.PRNGKey(1), 4).obs
    np.testing.assert_array_equal(
        jax.vmap(make_policy(params))(obs), jax.vmap(make_policy(restored))(obs)
    )
