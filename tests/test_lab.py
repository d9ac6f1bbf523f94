"""The lab profile against physics: one test per effect, and every effect off is `sim`."""

import math

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from pods.rollout import reset_batch, trajectory_of_actions
from sim2real import InitialStateNoise, LabEffects, Physics, make_testbed
from sim2real.lab import slider_force
from sim2real.testbed_spec import load_mj_model

AT_REST = InitialStateNoise(angle=0.0, velocity=0.0, cart_position=0.0)
GEAR = 10.0


def _lab(system="cartpole", task="swingup", *, physics=None, timestep=0.005, **effects):
    """A lab testbed with only `effects` on, one physics step per control period (so that
    the env's steps are the physics steps), starting at rest."""
    return make_testbed(
        f"{system}_{task}_lab",
        physics=Physics.nominal() if physics is None else physics,
        lab=LabEffects.off(**effects),
        timestep=timestep,
        n_frames=1,
        initial_noise=AT_REST,
        backend="chain",
    )


def _play(env, actions, key=0):
    """The whole trajectory (observations, rewards, the final state) of open-loop commands."""

    def run(state, actions):
        def step(state, action):
            state = env.step(state, action)
            return state, (state.obs, state.reward, state.info["lab"].motor)

        final, (obs, rewards, motor) = jax.lax.scan(step, state, actions)
        return jnp.concatenate([state.obs[None], obs]), rewards, motor

    return jax.jit(run)(env.reset(jax.random.PRNGKey(key)), jnp.asarray(actions))


@pytest.mark.parametrize("system", ["cartpole", "double_cartpole"])
def test_every_effect_off_steps_exactly_like_sim(system):
    sim = make_testbed(f"{system}_swingup_sim", backend="chain")
    off = make_testbed(
        f"{system}_swingup_lab", physics=Physics.nominal(), lab=LabEffects.off(), backend="chain"
    )
    states = reset_batch(sim, jax.random.PRNGKey(1), 4)
    lab_states = reset_batch(off, jax.random.PRNGKey(1), 4)
    actions = jax.random.uniform(jax.random.PRNGKey(2), (4, 30, 1), minval=-1.2, maxval=1.2)

    def play(env, states):
        return jax.jit(jax.vmap(lambda s, a: trajectory_of_actions(env, s, a)))(states, actions)

    a, b = play(sim, states), play(off, lab_states)
    np.testing.assert_array_equal(b.observations, a.observations)
    np.testing.assert_array_equal(b.rewards, a.rewards)


@pytest.mark.parametrize("latency, n_frames", [(1, 1), (3, 1), (4, 2)])
def test_latency_shifts_the_response_by_exactly_its_steps(latency, n_frames):
    """A command sent at control step t acts from physics step t * n_frames + latency: with
    the latency a whole number of control periods, the response is the undelayed one, late
    by exactly that many steps. From rest upright, an exact equilibrium, so that nothing but
    the commands moves the system."""
    common = dict(
        physics=Physics.nominal(),
        timestep=0.01,
        n_frames=n_frames,
        initial_noise=AT_REST,
    )
    prompt = make_testbed("cartpole_balance_lab", lab=LabEffects.off(), backend="chain", **common)
    late = make_testbed(
        "cartpole_balance_lab", lab=LabEffects.off(latency_steps=latency), backend="chain", **common
    )
    shift = latency // n_frames
    actions = jnp.concatenate([jnp.zeros((2, 1)), jnp.sin(jnp.arange(20.0))[:, None]])
    obs_prompt, _, _ = _play(prompt, jnp.concatenate([actions, jnp.zeros((shift, 1))]))
    obs_late, _, _ = _play(late, jnp.concatenate([actions, jnp.zeros((shift, 1))]))
    np.testing.assert_array_equal(obs_late[shift:], obs_prompt[: len(obs_prompt) - shift])
    np.testing.assert_array_equal(
        obs_late[: shift + 3], np.broadcast_to(obs_late[0], (shift + 3, 5))
    )


def test_motor_lag_reaches_63_percent_at_its_time_constant_and_drives_the_cart():
    """The delivered force's step response is 1 - exp(-t / tau), and what moves the cart is
    that force: the horizontal momentum of cart and pole changes by its impulse."""
    tau, h = 0.02, 0.005
    env = _lab(motor_time_constant=tau, timestep=h, integrator="rk4")
    obs, _, motor = _play(env, jnp.full((40, 1), 0.5))
    delivered = np.asarray(motor[:, 0]) / 0.5
    steps = round(tau / h)
    assert delivered[steps - 1] == pytest.approx(1 - math.exp(-1), abs=1e-6)
    np.testing.assert_allclose(delivered, 1 - np.exp(-h * np.arange(1, 41) / tau), atol=1e-6)
    q, qd = jax.vmap(env.state_from_obs)(obs)
    m_cart, m_pole, com = 1.0, 0.1, 0.5
    momentum = (m_cart + m_pole) * qd[:, 0] + m_pole * com * jnp.cos(q[:, 1]) * qd[:, 1]
    impulse = np.cumsum(GEAR * np.asarray(motor[:, 0])) * h
    np.testing.assert_allclose(momentum[1:] - momentum[0], impulse, rtol=1e-4, atol=1e-6)


def _cart_drift(env, force):
    """Cart position after 1 s under a constant force (N, through the motor)."""
    gain = env.physics.actuator_gain
    obs, _, _ = _play(env, jnp.full((round(1.0 / float(env.dt)), 1), force / (GEAR * gain)))
    return float(obs[-1, 0])


def test_cart_stays_still_under_a_force_below_breakaway():
    """Between the Coulomb level (1 N) and the breakaway force (1.6 N), the cart only creeps
    at the friction's regularization speed (v atanh(F / F_breakaway), ~5 mm/s at 0.8), while
    without stiction the same force slides it away; above breakaway it slides either way."""
    physics = Physics(
        slider_damping=0.0,
        hinge_damping=0.0,
        slider_friction=1.0,
        friction_velocity=0.005,
        actuator_gain=1.0,
    )
    sticky = _lab(physics=physics, stiction=0.6, integrator="rk4")
    slippery = _lab(physics=physics, integrator="rk4")
    below, above = 0.8 * 1.6, 1.2 * 1.6
    assert abs(_cart_drift(sticky, below)) < 0.01
    assert _cart_drift(slippery, below) > 0.05
    assert _cart_drift(sticky, above) > 0.05


def _at(env, q, qd):
    """A reset state of `env` moved to joint positions `q` and velocities `qd`."""
    state = env.reset(jax.random.PRNGKey(0))
    return state.replace(pipeline_state=env.pipeline_init(jnp.asarray(q), jnp.asarray(qd)))


def _run_from(env, state, actions):
    """Joint positions and velocities after each of `actions`, from `state`."""

    def step(state, action):
        state = env.step(state, action)
        return state, (state.pipeline_state.q, state.pipeline_state.qd)

    return jax.lax.scan(step, state, jnp.asarray(actions))[1]


def test_position_dependent_forces_follow_the_cart_position():
    """Cable and cogging push a cart at rest by a force that depends on where it stands:
    from rest, with the pole hanging still, the cart accelerates at F(x) I / (M I - (m l)^2)
    (M: total mass, m, l, I: the pole's mass, hinge-to-centre distance, inertia about the
    hinge), F(x) = -k (x - anchor) - A sin(2 pi x / period)."""
    k, anchor, amplitude, period = 2.0, -0.5, 0.2, 0.04
    h = 1e-3
    env = _lab(
        cable_stiffness=k,
        cable_anchor=anchor,
        cogging_amplitude=amplitude,
        cogging_period=period,
        integrator="rk4",
        timestep=h,
    )
    positions = np.linspace(-0.1, 0.1, 11)

    @jax.jit
    def acceleration_from_rest(x):
        state = _at(env, jnp.stack([x, jnp.pi]), jnp.zeros(2))
        _, qd = _run_from(env, state, jnp.zeros((1, 1)))
        return qd[0, 0] / h

    measured = jax.vmap(acceleration_from_rest)(jnp.asarray(positions, jnp.float32))
    m_cart, m_pole, com = 1.0, 0.1, 0.5
    model = env.sys.mj_model
    inertia = float(model.body_inertia[model.body("pole").id, 1]) + m_pole * com**2
    total = m_cart + m_pole
    force = -k * (positions - anchor) - amplitude * np.sin(2 * np.pi * positions / period)
    expected = force * inertia / (total * inertia - (m_pole * com) ** 2)
    np.testing.assert_allclose(measured, expected, rtol=2e-3, atol=2e-4)
    # Cogging alone is zero at its teeth, every half period.
    lab = LabEffects.off(cogging_amplitude=amplitude, cogging_period=period)
    physics = {"slider_damping": 0.0, "slider_friction": 0.0, "friction_velocity": 1.0}
    teeth = np.arange(5) * period / 2
    np.testing.assert_allclose(
        slider_force(physics, lab, teeth, np.zeros(5), xp=np), 0.0, atol=1e-12
    )


def test_body_mismatch_sets_the_hanging_pole_frequency_of_the_scaled_body():
    """Small swings of the hanging pole on a free cart have omega^2 = M m g l / (M I - (m l)^2)
    with the lab's scaled masses, centre of mass and inertia (a rod's: mass x length^2)."""
    scales = dict(
        cart_mass_scale=1.15, pole_mass_scale=0.88, pole_length_scale=1.1, pole_com_scale=1.12
    )
    h = 0.005
    env = _lab(integrator="rk4", timestep=h, **scales)
    state = _at(env, jnp.array([0.0, np.pi + 0.05]), jnp.zeros(2))
    q, _ = jax.jit(lambda s: _run_from(env, s, jnp.zeros((800, 1))))(state)
    swing = np.asarray(q[:, 1]) - np.pi
    crossings = np.nonzero(np.diff(np.sign(swing)) != 0)[0]
    period = 2 * np.mean(np.diff(crossings)) * h
    nominal = load_mj_model("cartpole")
    pole = nominal.body("pole").id
    m_cart, m_pole, com = 1.0 * 1.15, 0.1 * 0.88, 0.5 * 1.12
    inertia_com = float(nominal.body_inertia[pole, 1]) * 0.88 * 1.1**2
    model = env.sys.mj_model
    assert float(model.body_mass[pole]) == pytest.approx(m_pole)
    assert float(model.body_inertia[pole, 1]) == pytest.approx(inertia_com)
    inertia = inertia_com + m_pole * com**2
    total = m_cart + m_pole
    omega2 = total * m_pole * 9.81 * com / (total * inertia - (m_pole * com) ** 2)
    assert period == pytest.approx(2 * np.pi / np.sqrt(omega2), rel=0.005)
    # The nominal body's period differs by more than the tolerance: the test can tell them apart.
    nominal_inertia = float(nominal.body_inertia[pole, 1]) + 0.1 * 0.5**2
    nominal_omega2 = 1.1 * 0.1 * 9.81 * 0.5 / (1.1 * nominal_inertia - 0.05**2)
    assert abs(np.sqrt(nominal_omega2 / omega2) - 1) > 0.02


@pytest.mark.parametrize("system", ["double_cartpole"])
def test_body_mismatch_moves_the_second_hinge_with_the_first_pole(system):
    env = _lab(system, pole_length_scale=1.1)
    model = env.sys.mj_model
    assert float(model.body_pos[model.body("pole2").id, 2]) == pytest.approx(0.66)
    assert env.pole_lengths == pytest.approx((0.66, 0.66))


def test_sensors_quantize_positions_and_add_velocity_noise_as_set():
    resolution, angle_resolution, noise_x, noise_th = 1e-3, 2 * np.pi / 512, 0.02, 0.05
    env = make_testbed(
        "cartpole_swingup_lab",
        physics=Physics.nominal(),
        lab=LabEffects.off(
            position_resolution=resolution,
            angle_resolution=angle_resolution,
            linear_velocity_noise=noise_x,
            angular_velocity_noise=noise_th,
        ),
        backend="chain",
    )
    states = reset_batch(env, jax.random.PRNGKey(3), 2000)
    actions = jax.random.uniform(jax.random.PRNGKey(4), (2000, 5, 1), minval=-1, maxval=1)
    states = jax.jit(
        jax.vmap(lambda s, a: jax.lax.scan(lambda s, u: (env.step(s, u), None), s, a)[0])
    )(states, actions)
    q, qd = states.pipeline_state.q, states.pipeline_state.qd
    sensed_q, sensed_qd = jax.vmap(env.state_from_obs)(states.obs)
    x_steps = np.asarray(sensed_q[:, 0]) / resolution
    np.testing.assert_allclose(x_steps, np.round(x_steps), atol=1e-3)
    assert np.max(np.abs(np.asarray(sensed_q[:, 0] - q[:, 0]))) <= 0.5 * resolution + 1e-7
    wrapped = np.angle(np.exp(1j * np.asarray(q[:, 1])))
    angle_error = np.angle(np.exp(1j * (np.asarray(sensed_q[:, 1]) - wrapped)))
    assert np.max(np.abs(angle_error)) <= 0.5 * angle_resolution + 1e-5
    error = np.asarray(sensed_qd - qd)
    assert abs(error[:, 0].mean()) < 3 * noise_x / np.sqrt(2000)
    assert np.std(error[:, 0]) == pytest.approx(noise_x, rel=0.06)
    assert np.std(error[:, 1]) == pytest.approx(noise_th, rel=0.06)
    # Fresh noise every step, and the reward is the true state's.
    assert np.corrcoef(error[:1000, 1], error[1000:, 1])[0, 1] < 0.1
    np.testing.assert_allclose(
        states.reward,
        jax.vmap(env.task_reward)(jax.vmap(env.observe)(q, qd), actions[:, -1]),
        rtol=1e-5,
        atol=1e-7,
    )


def test_rk4_at_the_fine_step_is_near_continuous_time_and_euler_at_the_coarse_one_is_not():
    """The integration error alone: the same commands through RK4 at 5 ms and at 1 ms agree
    far more closely than the simulator's Euler at 25 ms does with either."""
    actions = 0.8 * jnp.sin(jnp.arange(40.0) / 3.0)[:, None]

    def final(**effects):
        env = make_testbed(
            "cartpole_swingup_lab",
            physics=Physics.nominal(),
            lab=LabEffects.off(**effects),
            initial_noise=AT_REST,
            backend="chain",
        )
        obs, _, _ = _play(env, actions)
        return np.asarray(jnp.concatenate(env.state_from_obs(obs[-1])))

    reference = final(integrator="rk4", timestep=0.001)
    fine = final(integrator="rk4", timestep=0.005)
    coarse = final()
    assert np.max(np.abs(fine - reference)) < 1e-4
    assert np.max(np.abs(coarse - reference)) > 100 * np.max(np.abs(fine - reference))


def test_bad_lab_effects_raise_one_line_naming_the_field():
    for field, value in [
        ("latency_steps", -1),
        ("latency_steps", 1.5),
        ("motor_time_constant", -0.1),
        ("pole_mass_scale", 0.0),
        ("integrator", "verlet"),
        ("timestep", 0.0),
    ]:
        with pytest.raises(ValueError, match=f"LabEffects.{field}") as err:
            LabEffects(**{field: value})
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="0.007"):
        make_testbed("cartpole_swingup_lab", lab=LabEffects(timestep=0.007), backend="chain")
    with pytest.raises(ValueError, match="lab effects"):
        make_testbed("cartpole_swingup_real", lab=LabEffects(), backend="chain")
    with pytest.raises(ValueError, match="mjx"):
        make_testbed("cartpole_swingup_lab", backend="mjx")


@pytest.mark.parametrize(
    "system", ["cartpole", pytest.param("double_cartpole", marks=pytest.mark.slow)]
)
def test_lab_return_gradient_matches_finite_differences_in_float64(system):
    """The whole lab profile, noise off: latency, lag, stiction, cable, cogging, the scaled
    body and RK4 at 5 ms are all differentiable, and reverse mode agrees with central
    differences as on the other testbeds."""
    with jax.enable_x64(True):
        env = make_testbed(
            f"{system}_swingup_lab",
            lab=LabEffects(linear_velocity_noise=0.0, angular_velocity_noise=0.0),
            dtype=jnp.float64,
            backend="chain",
        )
        state = env.reset(jax.random.PRNGKey(7))
        actions = 0.6 * jax.random.uniform(jax.random.PRNGKey(8), (10, 1), jnp.float64, -1, 1)

        def value(a):
            return trajectory_of_actions(env, state, a).value

        @jax.jit
        def analytic_and_finite(a, eps=1e-6):
            flat = a.ravel()
            bumps = eps * jnp.eye(flat.size, dtype=a.dtype)
            points = jnp.concatenate([flat + bumps, flat - bumps]).reshape(-1, *a.shape)
            values = jax.vmap(value)(points)
            finite = (values[: flat.size] - values[flat.size :]) / (2 * eps)
            return jax.grad(value)(a), finite.reshape(a.shape)

        analytic, finite = analytic_and_finite(actions)
        assert analytic.dtype == jnp.float64
        # The latency: the last command reaches the motor only 20 ms into its period.
        assert float(jnp.linalg.norm(finite)) > 1e-3
        relative_error = jnp.linalg.norm(analytic - finite) / jnp.linalg.norm(finite)
        assert float(relative_error) <= 1e-4, float(relative_error)


@pytest.mark.parametrize("system", ["cartpole", "double_cartpole"])
@pytest.mark.parametrize("mismatch", [False, True])
def test_closed_form_dynamics_agree_with_brax_and_mujoco(system, mismatch):
    """The lab's RK4 evaluates the body's equations of motion in closed form; they are those
    of Brax's generalized pipeline and of MuJoCo C, to rounding, at arbitrary states."""
    from brax import kinematics
    from brax.generalized import dynamics, mass
    from brax.generalized.base import State

    scales = (
        {}
        if not mismatch
        else dict(
            cart_mass_scale=1.2, pole_mass_scale=0.8, pole_length_scale=1.15, pole_com_scale=0.9
        )
    )
    with jax.enable_x64(True):
        env = make_testbed(
            f"{system}_swingup_lab",
            lab=LabEffects.off(**scales),
            dtype=jnp.float64,
            backend="chain",
        )
        sys, model = env.sys, env.sys.mj_model
        data = mujoco.MjData(model)
        rng = np.random.default_rng(0)
        for _ in range(4):
            q, qd, tau = (rng.normal(size=model.nv) * s for s in (2.0, 3.0, 1.0))
            x, xd = kinematics.forward(sys, jnp.array(q), jnp.array(qd))
            state = dynamics.transform_com(sys, State.init(jnp.array(q), jnp.array(qd), x, xd))
            brax = jnp.linalg.solve(
                mass.matrix(sys, state), dynamics.forward(sys, state, jnp.array(tau))
            )
            data.qpos[:], data.qvel[:], data.qfrc_applied[:] = q, qd, tau
            mujoco.mj_forward(model, data)
            closed = env._chain.acceleration(jnp.array(q), jnp.array(qd), jnp.array(tau), xp=jnp)
            np.testing.assert_allclose(closed, brax, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(
                env._chain.acceleration(q, qd, tau, xp=np), data.qacc, rtol=1e-10, atol=1e-10
            )
