import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.envs.base import State

from pods.derivatives import gauss_newton_factor
from pods.rollout import (
    episode_of_actions,
    policy_states_after,
    reset_batch,
    trajectory_of_actions,
    trajectory_of_policy,
)
from sim2real import SYSTEMS, TASKS, make_testbed


def _central_differences(f, x, eps):
    """Every partial derivative of scalar f at x, all 2n evaluations in one batched call."""
    flat = x.ravel()
    bumps = eps * jnp.eye(flat.size, dtype=x.dtype)
    points = jnp.concatenate([flat + bumps, flat - bumps]).reshape(2 * flat.size, *x.shape)
    values = jax.vmap(f)(points)
    return ((values[: flat.size] - values[flat.size :]) / (2 * eps)).reshape(x.shape)


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_return_gradient_matches_finite_differences_in_float64(system):
    with jax.enable_x64(True):
        # The tasks differ only in their initial states: one env compiles for all of them.
        env = make_testbed(f"{system}_balance_real", dtype=jnp.float64, backend="chain")

        def value(a, state):
            return trajectory_of_actions(env, state, a).value

        grad = jax.jit(jax.grad(value))
        numeric = jax.jit(lambda a, s: _central_differences(lambda x: value(x, s), a, 1e-6))
        for task in TASKS:
            state = make_testbed(f"{system}_{task}_real", dtype=jnp.float64, backend="chain").reset(
                jax.random.PRNGKey(7)
            )
            actions = 0.6 * jax.random.uniform(jax.random.PRNGKey(8), (12, 1), jnp.float64, -1, 1)
            analytic, finite = grad(actions, state), numeric(actions, state)
            assert analytic.dtype == jnp.float64
            relative_error = jnp.linalg.norm(analytic - finite) / jnp.linalg.norm(finite)
            assert float(relative_error) <= 1e-4, (task, float(relative_error))


def test_scan_rollout_equals_a_python_loop_of_env_steps():
    env = make_testbed("cartpole_swingup_real", backend="chain")
    state = env.reset(jax.random.PRNGKey(0))
    actions = jnp.linspace(-1, 1, 15)[:, None]
    episode = jax.jit(lambda s, a: episode_of_actions(env, s, a))(state, actions)
    traj = episode.trajectory
    # A testbed never ends an episode: every step is counted.
    np.testing.assert_array_equal(episode.active, jnp.ones(15))
    step = jax.jit(env.step)
    observations, rewards = [state.obs], []
    for action in actions:
        state = step(state, action)
        observations.append(state.obs)
        rewards.append(state.reward)
    np.testing.assert_allclose(traj.observations, jnp.stack(observations), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traj.rewards, jnp.stack(rewards), rtol=1e-5, atol=1e-5)
    assert traj.horizon == 15 and traj.observations.shape == (16, env.observation_size)


def test_gradient_window_cuts_gradients_across_windows_only():
    env = make_testbed("cartpole_balance_real", backend="chain")
    state = env.reset(jax.random.PRNGKey(1))
    actions = 0.3 * jnp.ones((12, 1))
    window = 4

    def late_reward(a, gradient_window):
        return trajectory_of_actions(env, state, a, gradient_window=gradient_window).rewards[9]

    windowed = jax.jit(jax.grad(lambda a: late_reward(a, window)))(actions)
    full = jax.jit(jax.grad(lambda a: late_reward(a, None)))(actions)
    # Reward 9 lies in the window of steps 8..11: earlier actions reach it only through the
    # state at step 8, whose gradient the window stops.
    assert jnp.all(windowed[:8] == 0) and jnp.all(full[:8] != 0)
    np.testing.assert_allclose(windowed[8:], full[8:], rtol=1e-5)
    # The forward pass is unchanged.
    np.testing.assert_array_equal(
        trajectory_of_actions(env, state, actions, gradient_window=window).rewards,
        trajectory_of_actions(env, state, actions).rewards,
    )


def test_policy_rollout_records_the_noisy_actions_it_plays():
    env = make_testbed("cartpole_balance_sim", backend="chain")
    states = reset_batch(env, jax.random.PRNGKey(2), 3)

    def policy(obs):
        return jnp.tanh(-obs[2:3] - 0.5 * obs[4:5])

    run = jax.jit(
        jax.vmap(lambda s, k: trajectory_of_policy(env, s, policy, 20, key=k, action_noise=0.3))
    )
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    noisy, again = run(states, keys), run(states, keys)
    clean = jax.vmap(lambda s: trajectory_of_policy(env, s, policy, 20))(states)
    np.testing.assert_array_equal(noisy.actions, again.actions)
    noise = noisy.actions - jax.vmap(jax.vmap(policy))(noisy.observations[:, :-1])
    assert 0.2 < float(jnp.std(noise)) < 0.4
    replayed = jax.vmap(lambda s, a: trajectory_of_actions(env, s, a))(states, noisy.actions)
    np.testing.assert_allclose(replayed.rewards, noisy.rewards, rtol=1e-5, atol=1e-6)
    assert not np.allclose(clean.actions, noisy.actions)


def test_policy_states_after_are_where_the_policy_rollout_is_after_that_many_steps():
    env = make_testbed("cartpole_balance_sim", backend="chain")
    states = reset_batch(env, jax.random.PRNGKey(4), 4)

    def policy(obs):
        return jnp.tanh(-obs[2:3] - 0.5 * obs[4:5])

    steps = jnp.array([0, 3, 11, 12])
    after = jax.jit(lambda s, n: policy_states_after(env, s, policy, n, 12))(states, steps)
    rollouts = jax.vmap(lambda s: trajectory_of_policy(env, s, policy, 12))(states)
    # The kept state is the state itself, not only its observation: a rollout from it
    # continues the one it was taken from.
    expected = rollouts.observations[jnp.arange(4), steps]
    np.testing.assert_allclose(after.obs, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(after.obs[0], states.obs[0])
    onward = jax.vmap(lambda s: trajectory_of_policy(env, s, policy, 5))(after)
    np.testing.assert_allclose(
        onward.observations[1, -1], rollouts.observations[1, 8], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_horizon_or_window_raises_naming_the_value(bad):
    env = make_testbed("cartpole_balance_sim", backend="chain")
    state = env.reset(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=f"horizon.*{bad}"):
        trajectory_of_policy(env, state, lambda o: jnp.zeros(1), bad)
    with pytest.raises(ValueError, match=f"gradient_window.*{bad}" if bad else "horizon"):
        trajectory_of_actions(
            env, state, jnp.zeros((5 if bad else 0, 1)), gradient_window=bad or None
        )


class FallingPoint:
    """A point on a line that ends its episode once |x| passes 1: x' = x + a, reward
    r = 1 - x'^2 + a (the action term keeps every step's reward sensitive to its action)."""

    observation_size, action_size, episode_length = 1, 1, 8

    def reset(self, rng):
        x = jax.random.uniform(rng, (1,), minval=-0.1, maxval=0.1)
        zero = jnp.zeros(())
        return State(pipeline_state=None, obs=x, reward=zero, done=zero)

    def step(self, state, action):
        x = state.obs + action
        return state.replace(
            obs=x, reward=1.0 - x[0] ** 2 + action[0], done=(jnp.abs(x[0]) > 1).astype(x.dtype)
        )

    def task_reward(self, obs, action):
        return 1.0 - obs[0] ** 2 + action[0]


def test_rewards_after_done_are_masked_as_a_python_loop_masks_them():
    env = FallingPoint()
    state = env.reset(jax.random.PRNGKey(0))
    actions = jnp.full((8, 1), 0.3)  # |x| passes 1 on the 4th step: done from then on
    episode = jax.jit(lambda s, a: episode_of_actions(env, s, a))(state, actions)
    rewards, active, running = [], [], True
    for action in actions:
        state = env.step(state, action)
        rewards.append(float(state.reward) if running else 0.0)
        active.append(float(running))
        running = running and not bool(state.done)
    np.testing.assert_allclose(episode.rewards, rewards, rtol=1e-6)
    np.testing.assert_array_equal(episode.active, active)
    assert active == [1, 1, 1, 1, 0, 0, 0, 0] and float(episode.steps) == 4
    # The ended episode's later rewards are not zero: the mask, not the env, drops them.
    assert float(state.reward) != 0.0
    np.testing.assert_allclose(episode.value, sum(rewards), rtol=1e-6)


def test_return_gradient_stops_at_termination_and_matches_finite_differences():
    env = FallingPoint()
    state = env.reset(jax.random.PRNGKey(0))
    actions = jnp.full((8, 1), 0.3)

    def value(a):
        return trajectory_of_actions(env, state, a).value

    analytic = jax.jit(jax.grad(value))(actions)
    # Actions after the terminating step (the 4th) change nothing that is counted.
    assert jnp.all(analytic[4:] == 0) and jnp.all(analytic[:4] != 0)
    # Small bumps keep the termination step where it is, so finite differences agree.
    numeric = _central_differences(value, actions, 1e-3)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-2, atol=1e-3)


def test_second_order_terms_ignore_the_steps_after_termination():
    env = FallingPoint()
    state = env.reset(jax.random.PRNGKey(0))
    actions = jnp.full((8, 1), 0.3)
    value, gradient, factor = jax.jit(lambda a: gauss_newton_factor(env, state, a))(actions)
    np.testing.assert_allclose(value, trajectory_of_actions(env, state, actions).value, rtol=1e-6)
    np.testing.assert_allclose(
        gradient,
        jax.grad(lambda a: trajectory_of_actions(env, state, a).value)(actions)[:, 0],
        rtol=1e-5,
    )
    matrix = factor.T @ factor
    assert jnp.all(matrix[4:] == 0) and jnp.all(matrix[:, 4:] == 0) and jnp.all(matrix[:4, :4] != 0)
