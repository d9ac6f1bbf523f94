"""The testbeds in MuJoCo C against the Brax twin, and as gymnasium envs."""

import math
import subprocess
import sys
import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from pods.rollout import reset_batch
from sim2real import InitialStateNoise, LabEffects, Physics, list_testbeds, make_testbed
from sim2real.mujoco_lab import (
    MujocoCartPole,
    gymnasium_id,
    make_mujoco_testbed,
    trajectory_of_actions,
)
from sim2real.testbed_spec import task_reward

QUIET_LAB = LabEffects(linear_velocity_noise=0.0, angular_velocity_noise=0.0)
"""The lab with every effect on but the velocity noise, whose draws the engines cannot share."""
TWIN_TOLERANCE = {"cartpole": 1e-14, "double_cartpole": 5e-14}
"""Max |MuJoCo C - twin| of any joint position or velocity over 20 steps in float64 (the
README gives the measured figures and the command)."""


def _twin_trajectories(env, states, actions):
    def run(state, actions):
        def step(state, action):
            state = env.step(state, action)
            ps = state.pipeline_state
            return state, (ps.q, ps.qd, state.reward, state.obs)

        return jax.lax.scan(step, state, actions)[1]

    return [np.asarray(a) for a in jax.jit(jax.vmap(run))(states, actions)]


PAIRS = [(s, v) for s in ("cartpole", "double_cartpole") for v in ("sim", "real", "lab")]


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{s}-{v}" for s, v in PAIRS])
def paired(request):
    """The float64 twin and MuJoCo C on the same 4 x 20 commands (some beyond [-1, 1]) from
    the same initial states; the MuJoCo env is reused across runs, as a lab rig is."""
    system, variant = request.param
    lab = {"lab": QUIET_LAB} if variant == "lab" else {}
    name = f"{system}_swingup_{variant}"
    with jax.enable_x64(True):
        twin = make_testbed(name, dtype=jnp.float64, backend="chain", **lab)
        states = reset_batch(twin, jax.random.PRNGKey(0), 4)
        actions = jax.random.uniform(jax.random.PRNGKey(1), (4, 20, 1), jnp.float64, -1.5, 1.5)
        expected = _twin_trajectories(twin, states, actions)
        starts = (np.asarray(states.pipeline_state.q), np.asarray(states.pipeline_state.qd))
    env = make_mujoco_testbed(name, **lab)
    runs = [trajectory_of_actions(env, q, qd, a) for q, qd, a in zip(*starts, np.asarray(actions))]
    return system, env, expected, runs


def test_mujoco_reproduces_the_twin_at_the_same_step_and_integrator(paired):
    system, env, (q, qd, rewards, obs), runs = paired
    got_q = np.stack([r.qpos[1:] for r in runs])
    got_qd = np.stack([r.qvel[1:] for r in runs])
    deviation = max(np.abs(got_q - q).max(), np.abs(got_qd - qd).max())
    assert deviation <= TWIN_TOLERANCE[system], deviation
    # The runs go somewhere: agreement is not two engines standing still.
    assert np.abs(got_q[:, -1] - got_q[:, 0]).max() > 0.1
    np.testing.assert_allclose(np.stack([r.rewards for r in runs]), rewards, rtol=0, atol=1e-13)
    got_obs = np.stack([r.observations[1:] for r in runs])
    if env.lab is None:
        np.testing.assert_allclose(got_obs, obs, rtol=0, atol=1e-13)
    else:
        # Encoders round: a state within rounding of a count's edge may read one count apart.
        count = max(env.lab.position_resolution, env.lab.angle_resolution)
        assert np.abs(got_obs - obs).max() <= count + 1e-12
        assert np.mean(np.abs(got_obs - obs) < 1e-12) > 0.99


def test_gymnasium_env_checker_passes_on_every_variant():
    for name in ("cartpole_swingup_lab", "double_cartpole_balance_sim", "cartpole_balance_real"):
        env = gymnasium.make(gymnasium_id(name)).unwrapped
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env)
        # The only complaint: velocities have no bound, so neither has the observation box.
        assert all("infinity" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_every_testbed_is_registered_and_takes_constructor_overrides():
    for name in list_testbeds():
        assert gymnasium.spec(gymnasium_id(name)).kwargs["variant"] == name.rsplit("_", 1)[1]
    env = gymnasium.make(
        "sim2real/double_cartpole_balance_lab-v0", lab=LabEffects.off(), episode_length=7
    ).unwrapped
    assert isinstance(env, MujocoCartPole) and env.name == "double_cartpole_balance_lab"
    assert env.lab == LabEffects.off() and env.episode_length == 7
    assert env.observation_space.shape == (8,) and env.action_space.shape == (1,)
    with pytest.raises(ValueError, match="cartpole_swingup_hardware"):
        gymnasium_id("cartpole_swingup_hardware")


def test_importing_sim2real_does_not_import_gymnasium():
    code = "import sys, sim2real; assert 'gymnasium' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("cartpole_swingup_lab", {}),
        ("double_cartpole_swingup_lab", {"lab": LabEffects(timestep=0.01)}),
        ("cartpole_balance_lab", {"lab": LabEffects.off(), "timestep": 0.01, "n_frames": 5}),
        ("double_cartpole_balance_sim", {}),
        ("cartpole_swingup_real", {"physics": Physics(slider_damping=2.0), "episode_length": 30}),
    ],
)
def test_arguments_mean_what_they_mean_for_the_twin(name, overrides):
    twin, env = (
        make_testbed(name, backend="chain", **overrides),
        make_mujoco_testbed(name, **overrides),
    )
    assert env.name == twin.name and env.n_poles == twin.n_poles
    assert (env.physics, env.lab) == (twin.physics, twin.lab)
    assert env.episode_length == twin.episode_length
    assert env.timestep == float(twin.sys.opt.timestep) and env.n_frames == twin._n_frames
    assert env.dt == pytest.approx(float(twin.dt))
    assert (env.observation_size, env.action_size) == (twin.observation_size, twin.action_size)
    for field in ("body_mass", "body_inertia", "body_ipos", "body_pos"):
        np.testing.assert_array_equal(getattr(env.model, field), getattr(twin.sys.mj_model, field))


def test_commands_beyond_the_range_saturate_after_the_gain():
    """`real` delivers 0.8 of the command: 5 and 1.25 both saturate at the motor's full force,
    1.0 does not; the reward still charges the command sent."""
    env = make_mujoco_testbed("cartpole_balance_real")
    start = {"qpos": [0.0, 0.05], "qvel": [0.0, 0.0]}

    def one_step(action):
        env.reset(options=start)
        _, reward, _, _, info = env.step(np.array([action]))
        return np.concatenate([info["qpos"], info["qvel"]]), reward

    (full, r_full), (also_full, r_also), (partial, _) = map(one_step, (5.0, 1.25, 1.0))
    np.testing.assert_array_equal(full, also_full)
    assert np.abs(full - partial).max() > 1e-3
    assert r_also - r_full == pytest.approx(0.01 * (25.0 - 1.25**2))


def test_sensors_quantize_positions_and_add_velocity_noise_as_set():
    resolution, angle_resolution, noise_x, noise_th = 1e-3, 2 * np.pi / 512, 0.02, 0.05
    lab = LabEffects.off(
        position_resolution=resolution,
        angle_resolution=angle_resolution,
        linear_velocity_noise=noise_x,
        angular_velocity_noise=noise_th,
    )
    env = MujocoCartPole(physics=Physics.nominal(), lab=lab, episode_length=2000)
    obs, info = env.reset(seed=3)
    actions = np.random.default_rng(4).uniform(-1, 1, (2000, 1))
    sensed, true_q, true_qd, rewards = [], [], [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        sensed.append(obs)
        true_q.append(info["qpos"])
        true_qd.append(info["qvel"])
        rewards.append(reward)
        assert not terminated
    assert truncated
    sensed, true_q, true_qd = np.array(sensed), np.array(true_q), np.array(true_qd)
    x_counts = sensed[:, 0] / resolution
    np.testing.assert_allclose(x_counts, np.round(x_counts), atol=1e-6)
    assert np.abs(sensed[:, 0] - true_q[:, 0]).max() <= 0.5 * resolution + 1e-12
    angle_error = np.angle(np.exp(1j * (np.arctan2(sensed[:, 2], sensed[:, 1]) - true_q[:, 1])))
    assert np.abs(angle_error).max() <= 0.5 * angle_resolution + 1e-12
    assert np.abs(angle_error).max() > 0.4 * angle_resolution
    error = sensed[:, 3:] - true_qd
    assert abs(error[:, 0].mean()) < 3 * noise_x / np.sqrt(2000)
    assert np.std(error[:, 0]) == pytest.approx(noise_x, rel=0.06)
    assert np.std(error[:, 1]) == pytest.approx(noise_th, rel=0.06)
    # Fresh noise every step, and the reward is the true state's.
    assert abs(np.corrcoef(error[:-1, 1], error[1:, 1])[0, 1]) < 0.1
    expected = [
        task_reward(env.observe(q, qd), a, 1, env.reward_weights, xp=np)
        for q, qd, a in zip(true_q, true_qd, actions)
    ]
    np.testing.assert_array_equal(rewards, expected)
    # The noise comes from the env's seeded stream.
    env.reset(seed=3)
    assert np.array_equal(env.step(actions[0])[0], sensed[0])


def test_reset_draws_the_testbeds_initial_states():
    noise = InitialStateNoise(angle=0.1, velocity=0.05, cart_position=0.1)
    env = make_mujoco_testbed("double_cartpole_swingup_sim", initial_noise=noise)
    starts = []
    for seed in range(200):
        _, info = env.reset(seed=seed)
        starts.append(np.concatenate([info["qpos"], info["qvel"]]))
    starts = np.array(starts)
    offsets = starts - np.array([0.0, np.pi, 0.0, 0.0, 0.0, 0.0])
    bounds = np.array([0.1, 0.1, 0.1, 0.05, 0.05, 0.05])
    assert np.all(np.abs(offsets) <= bounds)
    assert np.all(np.abs(offsets).max(axis=0) > 0.9 * bounds)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, env.observe(starts[0][:3], starts[0][3:]))


def test_episodes_truncate_at_their_length():
    env = make_mujoco_testbed("cartpole_balance_sim", episode_length=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(1))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_bad_input_raises_one_line_naming_the_value():
    env = make_mujoco_testbed("cartpole_swingup_lab")
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(1))
    env.reset(seed=0)
    cases = [
        (lambda: MujocoCartPole("tripole"), "tripole"),
        (lambda: MujocoCartPole(variant="hardware"), "hardware"),
        (lambda: MujocoCartPole(variant="sim", lab=LabEffects()), "'sim'"),
        (lambda: MujocoCartPole(lab=LabEffects(timestep=0.007)), "0.007"),
        (lambda: env.reset(options={"qpos": [0.0, 0.0]}), "'qpos'"),
        (lambda: env.reset(options={"qpos": [0.0], "qvel": [0.0, 0.0]}), r"\[0.0\]"),
        (lambda: env.reset(options={"qpos": [0.0, math.nan], "qvel": [0, 0]}), "nan"),
        (lambda: env.step(np.array([math.inf])), "inf"),
        (lambda: env.step(np.zeros(2)), r"array\(\[0., 0.\]\)"),
        (lambda: env.step("push"), "push"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
