"""Brax's own registry envs as PODS envs: termination, replacement rewards, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pods.config import PODSConfig
from pods.rollout import episode_of_policy, evaluate_policy, reset_batch
from pods.state import init_training_state
from pods.train import make_pods, train
from sim2real.brax_envs import inverted_pendulum_upright, make_brax_env, registry_names


def test_the_registry_lists_brax_envs_but_not_the_testbeds():
    names = registry_names()
    assert {"reacher", "inverted_pendulum", "hopper"} <= set(names)
    assert not any(name.startswith("cartpole") for name in names)
    with pytest.raises(ValueError, match="'cartpole_swingup_sim'"):
        make_brax_env("cartpole_swingup_sim")


def test_inverted_pendulum_returns_stop_counting_at_termination():
    env = make_brax_env("inverted_pendulum", episode_length=60)
    states = reset_batch(env, jax.random.PRNGKey(0), 4)

    def push(obs):  # a constant push topples the pole within the horizon
        return jnp.full((1,), 0.5)

    episodes = jax.jit(jax.vmap(lambda s: episode_of_policy(env, s, push, 60)))(states)
    step = jax.jit(env.step)
    for i in range(4):
        state = jax.tree.map(lambda x, i=i: x[i], states)
        steps = 0
        while steps < 60:
            state = step(state, push(state.obs))
            steps += 1
            if state.done:
                break
        # Its reward is 1 per step: the return is the episode's length, which ended early.
        assert steps < 60 and float(episodes.value[i]) == float(episodes.steps[i]) == steps
        # The env steps on after `done` and keeps paying 1: only the mask stops the count.
        assert float(step(state, push(state.obs)).reward) == 1.0
    np.testing.assert_array_equal(np.asarray(episodes.rewards)[:, -1], 0.0)


def test_a_replacement_reward_is_the_step_reward_and_the_task_reward():
    plain = make_brax_env("inverted_pendulum", episode_length=10)
    upright = make_brax_env(
        "inverted_pendulum",
        episode_length=10,
        reward="sim2real.brax_envs:inverted_pendulum_upright",
    )
    assert not hasattr(plain, "task_reward") and upright.task_reward is inverted_pendulum_upright
    state = upright.reset(jax.random.PRNGKey(0))
    action = jnp.array([0.3])
    after = upright.step(state, action)
    assert float(after.reward) == pytest.approx(float(inverted_pendulum_upright(after.obs, action)))
    assert float(plain.step(plain.reset(jax.random.PRNGKey(0)), action).reward) == 1.0
    # Its gradient with respect to the action is not zero, where the env's own is.
    grad = jax.grad(lambda a: upright.step(state, a).reward)(action)
    assert float(jnp.abs(grad[0])) > 0
    assert float(jax.grad(lambda a: plain.step(state, a).reward)(action)[0]) == 0.0


@pytest.mark.slow  # the gradient through Brax's reacher takes ~2 min to compile cold
def test_pods_improves_its_return_on_brax_reacher():
    env = make_brax_env("reacher", episode_length=20)
    config = PODSConfig(num_epochs=8, num_trajectories=16, minibatch_size=64, num_step_sizes=4)
    key = jax.random.PRNGKey(0)
    make_policy, params, history = train(config, env, key)
    network = make_pods(config, env).network
    initial = init_training_state(config, env, network, jax.random.split(key)[0]).params
    held_out = jax.random.PRNGKey(99)
    before = float(jnp.mean(evaluate_policy(env, make_policy(initial), held_out, 64)))
    after = float(jnp.mean(evaluate_policy(env, make_policy(params), held_out, 64)))
    # Measured: -4.64 before, -3.80 after 8 epochs (the fingertip ends nearer the target).
    assert after > before + 0.3, (before, after)
    assert history[0]["train/rejected_nonfinite"] == 0
