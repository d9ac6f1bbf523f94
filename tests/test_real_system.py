"""The real-system boundary: budget, exact transition counts, no gradients, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pods.networks import PolicyNetwork, init_policy_params, make_policy_factory
from sim2real import make_testbed
from sim2real.real_system import RealSystem, RealTrajectories

HORIZON = 4


@pytest.fixture(scope="module")
def testbed():
    return make_testbed("cartpole_balance_real", episode_length=HORIZON)


@pytest.fixture(scope="module")
def policy(testbed):
    network = PolicyNetwork(testbed.action_size, (8,), param_dtype=jnp.float32)
    params = init_policy_params(
        network, testbed.observation_size, jax.random.PRNGKey(0), jnp.float32
    )
    return make_policy_factory(network, normalize=True), params


@pytest.fixture(scope="module")
def collected(testbed, policy):
    """One system, two policy collections (same shapes: one compile), the first noise-free."""
    make_policy, params = policy
    system = RealSystem(testbed, budget=40)
    first = system.collect(jax.random.PRNGKey(1), 3, make_policy=make_policy, params=params)
    second = system.collect(
        jax.random.PRNGKey(2), 3, make_policy=make_policy, params=params, action_noise=0.5
    )
    return system, first, second


def test_counter_equals_the_transitions_stored(collected):
    system, first, second = collected
    assert isinstance(first, RealTrajectories)
    assert first.observations.shape == (3, HORIZON + 1, system.observation_size)
    assert first.actions.shape == (3, HORIZON, system.action_size)
    assert first.rewards.shape == (3, HORIZON)
    assert system.transitions == first.transitions + second.transitions == 2 * 3 * HORIZON
    assert system.remaining == 40 - 24


def test_collection_compiles_once_per_policy_and_shape(collected):
    system, _, _ = collected
    assert len(system._rollouts) == 1
    assert next(iter(system._rollouts.values()))._cache_size() == 1


def test_outputs_are_host_arrays_without_gradients(collected):
    _, first, _ = collected
    for array in first:
        assert type(array) is np.ndarray
        assert np.all(np.isfinite(array))


def test_noise_free_collection_plays_the_policy_and_noise_perturbs_it(collected, policy):
    _, first, second = collected
    make_policy, params = policy
    pi = make_policy(params)
    played = jax.vmap(jax.vmap(pi))(jnp.asarray(first.observations[:, :-1]))
    np.testing.assert_allclose(first.actions, played, rtol=1e-5, atol=1e-6)
    deviation = second.actions - jax.vmap(jax.vmap(pi))(jnp.asarray(second.observations[:, :-1]))
    assert 0.2 < np.std(deviation) < 1.0


def test_budget_is_refused_before_any_transition_is_taken(testbed):
    system = RealSystem(testbed, budget=12)
    key = jax.random.PRNGKey(3)
    data = system.collect(key, 2, action_noise=0.3)  # 8 transitions of random actions
    assert system.transitions == data.transitions == 8
    with pytest.raises(
        ValueError, match=r"budget of 12 transitions exceeded: 8 requested"
    ) as error:
        system.collect(jax.random.PRNGKey(4), 2, action_noise=0.3)
    assert "\n" not in str(error.value)
    assert system.transitions == 8
    # Step by step, replaying the first trajectory from its reset key (collect's key layout),
    # reproduces it: the batched and the step-wise paths are the same system.
    key_reset, _ = jax.random.split(key)
    obs = system.reset(jax.random.split(key_reset, 2)[0])
    assert type(obs) is np.ndarray
    np.testing.assert_allclose(obs, data.observations[0, 0], rtol=1e-6)
    for t in range(HORIZON):
        obs, reward = system.step(data.actions[0, t])
        assert isinstance(reward, float)
        np.testing.assert_allclose(obs, data.observations[0, t + 1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(reward, data.rewards[0, t], rtol=1e-4, atol=1e-5)
    assert system.transitions == 12 == system.budget
    with pytest.raises(ValueError, match=r"budget of 12 .* 1 requested, 12 already used, 0 left"):
        system.step(np.array([0.1]))
    np.testing.assert_array_equal(system.observe(), obs)
    assert system.transitions == 12


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tb: RealSystem(make_testbed("cartpole_balance_sim"), budget=5), "variant 'sim'"),
        (lambda tb: RealSystem(tb, budget=-1), "got -1"),
        (lambda tb: RealSystem(tb, budget=5).collect(jax.random.PRNGKey(0), 0), "got 0"),
        (lambda tb: RealSystem(tb, budget=5).step([0.0]), "before reset"),
    ],
)
def test_bad_requests_raise_clear_errors(testbed, make, message):
    with pytest.raises(ValueError, match=message) as error:
        make(testbed)
    assert "\n" not in str(error.value)
