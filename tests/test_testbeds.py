import copy

import brax.envs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.envs.wrappers.training import DomainRandomizationVmapWrapper

import sim2real
from pods.rollout import reset_batch, trajectory_of_actions
from sim2real import CartPole, Physics, list_testbeds, make_testbed
from sim2real.testbed_spec import (
    PHYSICS_FIELDS,
    physics_from_sys,
    physics_randomization,
    physics_to_sys,
)
from sim2real.testbeds import ChainState


def test_every_registered_name_resolves_through_brax():
    names = list_testbeds()
    assert len(names) == 12
    assert {
        "cartpole_balance_sim",
        "cartpole_swingup_real",
        "double_cartpole_balance_real",
        "cartpole_swingup_lab",
    } <= set(names)
    for name in names:
        env = brax.envs.get_environment(name)
        assert isinstance(env, CartPole) and env.name == name
        obs_dim = 2 + 3 * env.n_poles
        assert env.observation_size == obs_dim and env.action_size == 1


def test_reset_is_deterministic_per_key():
    env = brax.envs.get_environment("double_cartpole_swingup_real")
    reset = jax.jit(env.reset)
    a, b = reset(jax.random.PRNGKey(3)), reset(jax.random.PRNGKey(3))
    c = reset(jax.random.PRNGKey(4))
    np.testing.assert_array_equal(a.obs, b.obs)
    assert not np.allclose(a.obs, c.obs)
    # Hanging down: both poles point below the cart.
    q, _ = env.state_from_obs(a.obs)
    assert abs(abs(float(q[1])) - np.pi) < 0.11 and abs(float(q[2])) < 0.11


def test_balance_starts_near_upright_and_reward_is_near_one():
    env = make_testbed("cartpole_balance_sim")
    state = env.reset(jax.random.PRNGKey(0))
    assert float(state.obs[1]) > np.cos(0.11)
    state = env.step(state, jnp.zeros(1))
    assert 0.95 < float(state.reward) <= 1.0


def test_observe_and_state_from_obs_are_inverse():
    env = make_testbed("double_cartpole_balance_sim")
    q = jnp.array([0.3, 2.5, -1.0])
    qd = jnp.array([0.1, -2.0, 3.0])
    q2, qd2 = env.state_from_obs(env.observe(q, qd))
    np.testing.assert_allclose(q2, q, atol=1e-6)
    np.testing.assert_allclose(qd2, qd, atol=1e-6)


@pytest.fixture(scope="module")
def play_actions():
    """Jitted batched open-loop rollout per env; compiled once per env for the module."""
    cache = {}

    def play(env, states, actions):
        if env not in cache:
            cache[env] = jax.jit(jax.vmap(lambda s, a: trajectory_of_actions(env, s, a)))
        return cache[env](states, actions)

    return play


@pytest.mark.parametrize("system", ["cartpole", "double_cartpole"])
def test_sim_and_real_diverge_but_agree_with_extra_physics_zeroed(system, play_actions):
    sim = make_testbed(f"{system}_swingup_sim")
    real = make_testbed(f"{system}_swingup_real")
    zeroed = make_testbed(f"{system}_swingup_real", physics=Physics.nominal())
    key_s, key_a = jax.random.split(jax.random.PRNGKey(1))
    states = reset_batch(sim, key_s, 8)
    actions = jax.random.uniform(key_a, (8, 40, 1), minval=-1, maxval=1)

    obs_sim = play_actions(sim, states, actions).observations
    obs_real = play_actions(real, states, actions).observations
    obs_zeroed = play_actions(zeroed, states, actions).observations

    np.testing.assert_allclose(obs_zeroed, obs_sim, rtol=0, atol=1e-6)
    cart_velocity_gap = jnp.abs(
        obs_real[:, -1, 1 + 2 * sim.n_poles] - obs_sim[:, -1, 1 + 2 * sim.n_poles]
    )
    assert float(jnp.mean(cart_velocity_gap)) > 0.2


def test_real_physics_matches_newtons_second_law():
    """Horizontal momentum of cart + pole changes by the impulse of the external forces only.

    P = (m_cart + m_pole) xdot + m_pole (l/2) cos(theta) thetadot, and dP/dt is the motor
    force times the actuator gain minus slider damping and friction; hinge damping is internal.
    """
    physics = Physics(
        slider_damping=0.7, hinge_damping=0.05, slider_friction=0.6, actuator_gain=0.6
    )
    env = make_testbed("cartpole_swingup_real", physics=physics, timestep=0.002, n_frames=1)
    m_cart, m_pole, half_length, gear = 1.0, 0.1, 0.5, 10.0
    state = env.reset(jax.random.PRNGKey(0))
    actions = jnp.full((400, 1), 0.7)
    traj = jax.jit(lambda s, a: trajectory_of_actions(env, s, a))(state, actions)
    q, qd = jax.vmap(env.state_from_obs)(traj.observations)
    momentum = (m_cart + m_pole) * qd[:, 0] + m_pole * half_length * jnp.cos(q[:, 1]) * qd[:, 1]
    # Semi-implicit Euler: the force acts with the velocity at the start of each step.
    force = (
        physics.actuator_gain * gear * actions[:, 0]
        - physics.slider_damping * qd[:-1, 0]
        - physics.slider_friction * jnp.tanh(qd[:-1, 0] / physics.friction_velocity)
    )
    impulse = jnp.cumsum(force) * 0.002
    np.testing.assert_allclose(momentum[1:] - momentum[0], impulse, rtol=0.02, atol=2e-3)
    # And the gap is real: without the real extras the momentum change would be much larger.
    assert float(momentum[-1] - momentum[0]) < 0.75 * 10.0 * 0.7 * 400 * 0.002


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="cartpole_hover_sim"), "cartpole_hover_sim"),
        (dict(name="cartpole_balance_virtual"), "cartpole_balance_virtual"),
        (dict(name="triple_cartpole_balance_sim"), "triple_cartpole_balance_sim"),
        (dict(name="cartpole_balance_sim", episode_length=0), "episode_length"),
        (dict(name="cartpole_balance_sim", episode_length=-5), "-5"),
        (dict(name="cartpole_balance_sim", backend="spring"), "spring"),
    ],
)
def test_bad_testbed_arguments_raise_one_clear_error(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message) as err:
        make_testbed(name, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("slider_damping", -1.0),
        ("hinge_damping", -0.1),
        ("slider_friction", float("nan")),
        ("actuator_gain", 0.0),
        ("friction_velocity", -0.05),
    ],
)
def test_bad_physics_raises_naming_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=f"{field}.*{value}"):
        Physics(**{field: value})


def test_unknown_task_and_variant_in_the_constructor():
    with pytest.raises(ValueError, match="'hover'"):
        sim2real.CartPole("cartpole", task="hover")
    with pytest.raises(ValueError, match="'virtual'"):
        sim2real.CartPole("cartpole", variant="virtual")


@pytest.mark.slow
def test_mjx_backend_matches_generalized(play_actions):
    generalized = make_testbed("cartpole_balance_real")
    mjx = make_testbed("cartpole_balance_real", backend="mjx")
    states = reset_batch(generalized, jax.random.PRNGKey(2), 2)
    states_mjx = reset_batch(mjx, jax.random.PRNGKey(2), 2)
    actions = 0.5 * jnp.sin(jnp.arange(30.0) / 4)[None, :, None] * jnp.ones((2, 1, 1))
    np.testing.assert_allclose(
        play_actions(mjx, states_mjx, actions).observations,
        play_actions(generalized, states, actions).observations,
        atol=1e-3,
    )


@pytest.mark.parametrize(
    "name, gradient", [("cartpole_swingup_real", True), ("double_cartpole_swingup_sim", False)]
)
def test_chain_backend_steps_and_differentiates_like_generalized_to_rounding(name, gradient):
    """The closed-form backend against Brax's generalized pipeline in float64: the same states
    over 100 steps of a swing-up (the real's passive forces included) and the same return
    gradient through 20-step windows (the double's equations are checked against Brax's term
    by term in test_lab; its gradient compile here would cost a minute)."""
    with jax.enable_x64(True):
        generalized = make_testbed(name, dtype=jnp.float64)
        chain = make_testbed(name, dtype=jnp.float64, backend="chain")
        key = jax.random.PRNGKey(3)
        actions = 0.8 * jax.random.normal(jax.random.PRNGKey(4), (100, 1), jnp.float64)

        def value(env, a):
            return trajectory_of_actions(env, env.reset(key), a, gradient_window=20).value

        def observations(env):
            return jax.jit(lambda a: trajectory_of_actions(env, env.reset(key), a).observations)(
                actions
            )

        assert isinstance(chain.reset(key).pipeline_state, ChainState)
        assert chain.backend == "chain" and generalized.backend == "generalized"
        np.testing.assert_allclose(observations(chain), observations(generalized), atol=1e-12)
        if gradient:
            expected = jax.jit(jax.grad(lambda a: value(generalized, a)))(actions)
            got = jax.jit(jax.grad(lambda a: value(chain, a)))(actions)
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11)


def test_physics_round_trips_through_the_system_and_rejects_unknown_names():
    physics = Physics(
        slider_damping=0.3, hinge_damping=0.02, slider_friction=0.4, actuator_gain=0.7
    )
    env = make_testbed("double_cartpole_balance_sim", physics=physics)
    values = physics_from_sys(env.sys)
    assert set(values) == set(PHYSICS_FIELDS)
    for name in PHYSICS_FIELDS:
        np.testing.assert_allclose(values[name], getattr(physics, name), rtol=1e-6)
    partial = physics_from_sys(physics_to_sys(env.sys, {"actuator_gain": 0.5}))
    assert float(partial["actuator_gain"]) == 0.5
    assert float(partial["slider_friction"]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="stiction"):
        physics_to_sys(env.sys, {"stiction": 1.0})


def _play(env, key, actions):
    """Observations after each of `actions`, from `env.reset(key)` (batched envs too)."""

    def step(state, action):
        state = env.step(state, action)
        return state, state.obs

    return jax.lax.scan(step, env.reset(key), actions)[1]


def test_domain_randomization_through_sys_steps_like_envs_built_with_that_physics():
    """Brax's randomization wrapper swaps `env.sys` under vmap; the step must follow it.

    The double cart-pole, so that hinge damping acts on two hinges.
    """
    physics = [
        Physics(),
        Physics.nominal(),
        Physics(slider_damping=2.0, hinge_damping=0.05, slider_friction=0.3, actuator_gain=0.6),
    ]
    values = {name: jnp.array([getattr(p, name) for p in physics]) for name in PHYSICS_FIELDS}
    template = make_testbed("double_cartpole_swingup_sim")
    randomized = DomainRandomizationVmapWrapper(
        template, lambda sys: physics_randomization(sys, values)
    )
    keys = jax.random.split(jax.random.PRNGKey(5), len(physics))
    # Beyond the control range too: the gain scales the command before it saturates.
    actions = 1.2 * jnp.sin(jnp.arange(1.0, 11.0))[:, None, None] * jnp.ones((len(physics), 1))
    observed = jax.jit(lambda k, a: _play(randomized, k, a))(keys, actions)

    def play_built(sys, key, actions):
        # Each built env's own system enters as an argument: one compilation for all three.
        env = copy.copy(template)
        env.sys = sys
        return _play(env, key, actions)

    play_built = jax.jit(play_built)
    for i, p in enumerate(physics):
        built = make_testbed("double_cartpole_swingup_sim", physics=p)
        expected = play_built(built.sys, keys[i], actions[:, i])
        np.testing.assert_allclose(observed[:, i], expected, rtol=0, atol=1e-5)
    # The physics really differ per environment: the frictionless cart runs away fastest.
    assert float(jnp.abs(observed[-1, 1, 0] - observed[-1, 2, 0])) > 0.05


@pytest.mark.slow  # ~1 min cold; test_sysid recovers the physics through the same gradients
def test_rollout_gradient_with_respect_to_physics_matches_finite_differences():
    with jax.enable_x64(True):
        env = make_testbed("cartpole_swingup_real", dtype=jnp.float64)
        state = env.reset(jax.random.PRNGKey(3))
        actions = jax.random.uniform(jax.random.PRNGKey(4), (10, 1), jnp.float64, -1, 1)
        weights = jax.random.normal(jax.random.PRNGKey(5), (env.observation_size,), jnp.float64)

        def loss(theta):
            values = dict(zip(PHYSICS_FIELDS, theta, strict=True))
            final = trajectory_of_actions(
                env.with_physics_values(values), state, actions
            ).observations
            return jnp.dot(weights, final[-1])

        @jax.jit
        def analytic_and_finite(theta, eps=1e-6):
            bumps = eps * jnp.eye(theta.size, dtype=theta.dtype)
            values = jax.vmap(loss)(jnp.concatenate([theta + bumps, theta - bumps]))
            return jax.grad(loss)(theta), (values[: theta.size] - values[theta.size :]) / (2 * eps)

        # Near the friction's velocity scale, so that every parameter, friction_velocity too,
        # has a gradient well above rounding.
        analytic, finite = analytic_and_finite(jnp.array([0.7, 0.03, 0.5, 0.2, 0.9]))
        assert analytic.dtype == jnp.float64
        assert float(jnp.min(jnp.abs(finite))) > 1e-4, finite
        np.testing.assert_allclose(analytic, finite, rtol=1e-5)
