"""The feedback improvement (`pods.feedback`): an iLQR step per trajectory, its closed-loop
line search, and the rollout pieces it rests on (`pods.rollout.state_vector`,
`episode_of_feedback`). Everything runs on the linear-quadratic test double, whose return is
exactly quadratic in the actions, so one undamped step must land on the optimum."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from doubles import LinearQuadraticEnv

from pods.config import HDSConfig, PODSConfig
from pods.derivatives import action_gradient
from pods.feedback import backward_pass, improve_with_feedback, linearize
from pods.rollout import (
    episode_of_actions,
    episode_of_feedback,
    reset_batch,
    state_vector,
    trajectory_of_actions,
    with_state_vector,
)
from pods.step_size import step_size_grid
from pods.train import train
from sim2real import make_testbed


def _batch(env, k, seed, scale=1.0):
    states = reset_batch(env, jax.random.PRNGKey(seed), k)
    actions = scale * jax.random.normal(
        jax.random.PRNGKey(seed + 1), (k, env.episode_length, 1), env.dtype
    )
    obs = jax.vmap(lambda s, a: trajectory_of_actions(env, s, a).observations)(states, actions)
    return states, actions, obs


def test_one_undamped_feedback_step_reaches_the_linear_quadratic_optimum():
    with jax.enable_x64(True):
        env = LinearQuadraticEnv(jnp.float64)
        states, actions, obs = _batch(env, 4, 1)
        step = improve_with_feedback(
            env,
            states,
            actions,
            obs,
            jnp.array([1.0, 0.5, 0.25]),
            damping=0.0,
            action_bounds=(-100.0, 100.0),
        )
        assert np.all(np.asarray(step.accepted)) and np.all(np.asarray(step.step_size) == 1.0)
        # The anchor is the law without its gains' correction, a + k: the same first action
        # (the states agree at t = 0), then apart wherever the gains correct.
        np.testing.assert_allclose(step.anchor_actions[:, 0], step.actions[:, 0], atol=1e-12)
        assert float(jnp.max(jnp.abs(step.anchor_actions - step.actions))) > 1e-6
        for i in range(4):
            state = jax.tree.map(lambda x, i=i: x[i], states)
            # The return is concave quadratic in the actions: the optimum has a zero gradient.
            _, gradient = action_gradient(env, state, step.actions[i])
            assert float(jnp.max(jnp.abs(gradient))) < 1e-9
            replay = trajectory_of_actions(env, state, step.actions[i])
            np.testing.assert_allclose(step.observations[i], replay.observations, atol=1e-12)
            np.testing.assert_allclose(step.value_improved[i], replay.value, rtol=1e-12)


@pytest.mark.parametrize("window", [None, 2])
def test_backward_pass_gradient_is_the_windowed_return_gradient(window):
    with jax.enable_x64(True):
        env = LinearQuadraticEnv(jnp.float64)
        state = env.reset(jax.random.PRNGKey(3))
        actions = 0.3 * jax.random.normal(jax.random.PRNGKey(4), (env.episode_length, 1))
        model = linearize(env, state, actions, env.task_reward, jnp.ones(env.episode_length))
        law = backward_pass(model, actions, damping=1e-3, gradient_window=window)
        value, gradient = action_gradient(env, state, actions, gradient_window=window)
        np.testing.assert_allclose(model.value, value, rtol=1e-12)
        np.testing.assert_allclose(law.gradient, gradient, rtol=1e-10, atol=1e-12)
        if window is None:
            eps = 1e-6
            for t in range(env.episode_length):
                bump = jnp.zeros_like(actions).at[t, 0].set(eps)
                fd = trajectory_of_actions(env, state, actions + bump).value
                fd = (fd - trajectory_of_actions(env, state, actions - bump).value) / (2 * eps)
                np.testing.assert_allclose(law.gradient[t, 0], fd, rtol=1e-6, atol=1e-8)


def test_feedback_rollout_plays_the_affine_law_at_the_states_it_reaches():
    env = LinearQuadraticEnv()
    state = env.reset(jax.random.PRNGKey(5))
    n, horizon = env.observation_size, env.episode_length
    keys = jax.random.split(jax.random.PRNGKey(6), 3)
    feedforward = 0.3 * jax.random.normal(keys[0], (horizon, 1))
    gains = jax.random.normal(keys[1], (horizon, 1, n))
    nominal = jax.random.normal(keys[2], (horizon, n))
    episode = episode_of_feedback(env, state, feedforward, gains, nominal, action_bounds=(-1, 1))
    expected = jnp.clip(
        feedforward + jnp.einsum("tmn,tn->tm", gains, episode.observations[:-1] - nominal), -1, 1
    )
    np.testing.assert_allclose(episode.actions, expected, rtol=1e-6)
    assert np.any(np.abs(np.asarray(episode.actions)) == 1.0)  # the bounds were reached
    replay = episode_of_actions(env, state, episode.actions)
    np.testing.assert_allclose(episode.observations, replay.observations, rtol=1e-6)
    # With no gains the law is the open-loop replay of its feedforward.
    open_loop = episode_of_feedback(env, state, feedforward, 0 * gains, nominal)
    np.testing.assert_allclose(
        open_loop.value, episode_of_actions(env, state, feedforward).value, rtol=1e-6
    )


def test_state_vector_reads_back_every_floating_leaf_and_keeps_the_rest():
    env = make_testbed("cartpole_balance_lab", backend="chain")
    state = env.reset(jax.random.PRNGKey(7))
    x = state_vector(state)
    lab = state.info["lab"]
    # q and qd, the observation, the lab's command queue and motor; not its key.
    assert x.shape == (2 + 2 + env.observation_size + lab.commands.size + lab.motor.size,)
    moved = with_state_vector(state, x + 1.0)
    np.testing.assert_allclose(moved.pipeline_state.q, state.pipeline_state.q + 1.0)
    np.testing.assert_allclose(moved.obs, state.obs + 1.0)
    np.testing.assert_allclose(moved.info["lab"].commands, lab.commands + 1.0)
    np.testing.assert_array_equal(moved.info["lab"].key, lab.key)
    np.testing.assert_allclose(state_vector(moved), x + 1.0)


def test_feedback_step_never_worsens_and_rejects_exactly_the_poisoned_trajectories():
    env = LinearQuadraticEnv(poison="positive_start")
    k = 16
    states, actions, obs = _batch(env, k, 8)
    poisoned = np.asarray(states.info["poisoned"])
    assert 0 < poisoned.sum() < k
    step = jax.jit(
        lambda s, a, o: improve_with_feedback(env, s, a, o, step_size_grid(1.0, 1e-3, 8))
    )(states, actions, obs)
    value, improved = np.asarray(step.value), np.asarray(step.value_improved)
    assert np.all(improved >= value)
    np.testing.assert_array_equal(np.asarray(step.nonfinite), poisoned)
    accepted = np.asarray(step.accepted)
    assert not np.any(accepted[poisoned]) and np.all(accepted[~poisoned])
    assert np.all(improved[accepted] > value[accepted])
    kept = np.clip(np.asarray(actions), -1.0, 1.0)[poisoned]
    np.testing.assert_array_equal(np.asarray(step.actions)[poisoned], kept)
    np.testing.assert_array_equal(np.asarray(step.step_size)[poisoned], 0.0)


@pytest.mark.parametrize("distill_states", ["improved", "both"])
def test_pods_with_feedback_learns_the_linear_quadratic_task(distill_states):
    env = LinearQuadraticEnv(episode_length=8)
    config = PODSConfig(
        distill_states=distill_states,
        num_epochs=6,
        num_trajectories=16,
        order=2,
        feedback=True,
        distill_passes=8,
        minibatch_size=32,
        hidden_sizes=(16,),
        learning_rate=3e-3,
    )
    _, _, history = train(config, env, jax.random.PRNGKey(9))
    assert history[0]["train/accept_rate"] > 0.9
    assert history[-1]["train/return"] > history[0]["train/return"] + 0.1 * abs(
        history[0]["train/return"]
    )


@pytest.mark.parametrize("config", [PODSConfig, HDSConfig])
def test_feedback_is_refused_where_it_does_not_apply(config):
    with pytest.raises(ValueError, match=r"feedback must be false with order=1 .*, got True"):
        config(feedback=True)
    with pytest.raises(ValueError, match="feedback must be true or false, got 'yes'"):
        config(order=2, feedback="yes")


def test_hds_feedback_needs_the_line_search():
    hds = HDSConfig(order=2, feedback=True)
    with pytest.raises(ValueError, match="step_size_search must be 'line_search' with feedback"):
        dataclasses.replace(hds, step_size_search="annealing")
