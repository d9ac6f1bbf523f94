"""The real-system boundary: budget, exact transition counts, no gradients, one compile."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics_models import TransitionDataset
from pods.networks import PolicyNetwork, init_policy_params, make_policy_factory
from sim2real import make_testbed
from sim2real.gym_adapter import GymAdapter, check_gym_layout
from sim2real.real_system import RealSystem, RealTrajectories

HORIZON = 4


@pytest.fixture(scope="module")
def testbed():
    return make_testbed("cartpole_balance_real", episode_length=HORIZON, backend="chain")


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
        (
            lambda tb: RealSystem(make_testbed("cartpole_balance_sim", backend="chain"), budget=5),
            "variant 'sim'",
        ),
        (lambda tb: RealSystem(tb, budget=-1), "got -1"),
        (lambda tb: RealSystem(tb, budget=5).collect(jax.random.PRNGKey(0), 0), "got 0"),
        (lambda tb: RealSystem(tb, budget=5).step([0.0]), "before reset"),
    ],
)
def test_bad_requests_raise_clear_errors(testbed, make, message):
    with pytest.raises(ValueError, match=message) as error:
        make(testbed)
    assert "\n" not in str(error.value)


# --- a gymnasium env behind the boundary -------------------------------------------------------


class _Ramp(gymnasium.Env):
    """A toy system in the single cart-pole's layout: the cart position counts the steps plus
    the commands sent; it can be told to terminate, or to report a non-finite observation, at
    a given step of every episode."""

    def __init__(self, terminate_at=None, nan_at=None, obs_size=5):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_size,), np.float64)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.terminate_at, self.nan_at = terminate_at, nan_at
        self.dt = 0.05

    def _obs(self):
        return np.array([self.x, 1.0, 0.0, 0.0, 0.0])[: self.observation_space.shape[0]]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.x = 0, float(self.np_random.uniform(-0.1, 0.1))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.x += 1.0 + float(np.clip(action[0], -1, 1))
        obs = self._obs()
        if self.t == self.nan_at:
            obs[0] = np.nan
        return obs, -abs(self.x), self.t == self.terminate_at, False, {}


def test_a_gymnasium_env_is_a_real_system_with_the_same_budget():
    system = RealSystem(_Ramp(), budget=20, episode_length=HORIZON)
    assert system.is_gym and system.observation_size == 5 and system.dt == 0.05
    data = system.play(jax.random.PRNGKey(0), np.full((2, HORIZON, 1), 0.5))
    assert data.observations.shape == (2, HORIZON + 1, 5) and data.valid.all()
    np.testing.assert_allclose(np.diff(data.observations[:, :, 0], axis=1), 1.5)
    np.testing.assert_allclose(data.rewards, -np.abs(data.observations[:, 1:, 0]))
    assert system.transitions == data.transitions == 8
    with pytest.raises(ValueError, match="budget of 20 transitions exceeded: 16 requested"):
        system.play(jax.random.PRNGKey(1), np.zeros((4, HORIZON, 1)))
    assert system.transitions == 8
    # The same key resets to the same initial state: episodes are reproducible.
    again = RealSystem(_Ramp(), budget=8, episode_length=HORIZON)
    np.testing.assert_array_equal(
        again.play(jax.random.PRNGKey(0), data.actions).observations, data.observations
    )


def test_a_gymnasium_policy_collection_plays_the_policy(policy):
    make_policy, params = policy
    system = RealSystem(_Ramp(), budget=40, episode_length=HORIZON)
    data = system.collect(jax.random.PRNGKey(2), 3, make_policy=make_policy, params=params)
    played = jax.vmap(jax.vmap(make_policy(params)))(jnp.asarray(data.observations[:, :-1]))
    np.testing.assert_allclose(data.actions, played, rtol=1e-5, atol=1e-6)
    assert system.transitions == 12


def test_an_episode_that_ends_early_keeps_its_transitions_and_nothing_learns_past_its_end():
    system = RealSystem(_Ramp(terminate_at=2), budget=40, episode_length=HORIZON)
    data = system.play(jax.random.PRNGKey(0), np.zeros((3, HORIZON, 1)))
    np.testing.assert_array_equal(data.valid, np.array([[True, True, False, False]] * 3))
    assert system.transitions == data.transitions == 6
    # The record after the end repeats the last observation, with zero commands.
    np.testing.assert_array_equal(data.observations[:, 3], data.observations[:, 2])
    dataset = TransitionDataset(data.observations, data.actions, valid=data.valid)
    assert dataset.n_transitions == 6 and len(dataset.transitions()[0]) == 6
    s0, _, targets = dataset.windows(2)
    assert len(s0) == 3  # one 2-step window per episode: steps 0-1
    np.testing.assert_allclose(targets[:, -1, 0] - s0[:, 0], 2.0)


def test_a_non_finite_observation_ends_the_episode_before_it_with_a_warning():
    system = RealSystem(_Ramp(nan_at=3), budget=40, episode_length=HORIZON)
    with pytest.warns(RuntimeWarning) as record:
        data = system.play(jax.random.PRNGKey(0), np.zeros((2, HORIZON, 1)))
    assert [str(w.message).split(";")[0] for w in record] == [
        f"gym: non-finite observation at step 3 of episode {i}" for i in range(2)
    ]
    np.testing.assert_array_equal(data.valid[0], [True, True, False, False])
    assert np.all(np.isfinite(data.observations))
    assert system.transitions == 4
    # Saved and loaded, the dataset keeps its mask; files without one (version 1) still load.
    dataset = TransitionDataset(data.observations, data.actions, valid=data.valid)
    assert dataset.header()["ended_early"] == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: RealSystem(
                _Ramp(obs_size=3), 5, episode_length=4, adapter=GymAdapter(observation_size=5)
            ),
            r"shape \(3,\)",
        ),
        (
            lambda: RealSystem(
                _Ramp(), budget=5, episode_length=4, adapter=GymAdapter(action=lambda u: 5 + u)
            ),
            "outside the gymnasium env's action space",
        ),
        (lambda: RealSystem(_Ramp(), budget=5), "episode_length"),
        (
            lambda: RealSystem(
                make_testbed("cartpole_balance_real", backend="chain"), 5, adapter=GymAdapter()
            ),
            "needs none",
        ),
    ],
)
def test_a_gymnasium_env_whose_spaces_do_not_match_is_refused_before_any_transition(make, message):
    with pytest.raises(ValueError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


def test_gymnasiums_own_inverted_pendulum_through_an_adapter():
    """A third-party env: gymnasium's MuJoCo InvertedPendulum-v5, whose observation is
    [x, theta, xdot, thetadot] and whose force lies in [-3, 3], mapped to the cart-pole's
    layout. Its episodes terminate once the pole leans past 0.2 rad."""
    adapter = GymAdapter(
        observation=lambda o: np.array([o[0], np.cos(o[1]), np.sin(o[1]), o[2], o[3]]),
        action=lambda u: 3.0 * np.clip(u, -1, 1),
        observation_size=5,
    )
    system = RealSystem(
        gymnasium.make("InvertedPendulum-v5"), 400, adapter=adapter, episode_length=50
    )
    data = system.play(jax.random.PRNGKey(0), np.ones((4, 50, 1)))
    lengths = data.valid.sum(axis=1)
    assert np.all(lengths < 50) and np.all(lengths > 0)
    assert system.transitions == int(lengths.sum())
    np.testing.assert_allclose(np.hypot(data.observations[..., 1], data.observations[..., 2]), 1.0)


class _TwoMotors(_Ramp):
    """`_Ramp` with a second motor: an action space the testbeds' one command does not fill."""

    def __init__(self):
        super().__init__()
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)


@pytest.mark.parametrize(
    "env, adapter, message",
    [
        (_Ramp(obs_size=3), GymAdapter(), r"observations \(3,\) map to \(3,\) .* are \(5,\)"),
        (_Ramp(), GymAdapter(observation=lambda o: o[:4]), r"\(4,\) sensors, .* are \(5,\)"),
        (_Ramp(), GymAdapter(observation=lambda o: o[9]), r"fails on .* shape \(5,\)"),
        (_TwoMotors(), GymAdapter(), r"maps to an action of shape \(1,\), .* takes \(2,\)"),
        (_Ramp(), GymAdapter(action_size=2), r"commands are \(2,\), the testbed's \(1,\)"),
        (_Ramp(), GymAdapter(action=lambda u: u + 3), "outside the gymnasium env's action space"),
    ],
)
def test_a_gymnasium_layout_that_does_not_fit_the_testbeds_is_one_line(env, adapter, message):
    with pytest.raises(ValueError, match=message) as error:
        check_gym_layout(env, adapter, sensor_size=5, action_size=1)
    assert "\n" not in str(error.value) and "GymAdapter" in str(error.value)
    check_gym_layout(_Ramp(), GymAdapter(), sensor_size=5, action_size=1)
