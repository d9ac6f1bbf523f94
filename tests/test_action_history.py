"""The action history in the observation (`env.action_history=m`): the layout
[sensors, u_{t-1}, ..., u_{t-m}] in the Brax testbeds, at the real-system boundary of a
gymnasium env (the MuJoCo C engine), in a learned model's env, and through the command line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_experiments import compose_config, run_train

from dynamics_models import MLPDynamics, ObsLayout, collect_transitions, k_step_error, load_dataset
from dynamics_models.learned_env import LearnedEnv
from experiments.deploy import deploy_config, load_policy
from experiments.deploy import main as deploy_main
from experiments.resume import config_differences
from experiments.schema import ConfigError
from pods.rollout import trajectory_of_actions
from sim2real import LabEffects, make_testbed
from sim2real.gym_adapter import GymAdapter
from sim2real.mujoco_lab import MujocoCartPole
from sim2real.real_system import RealSystem

QUIET_LAB = LabEffects(linear_velocity_noise=0.0, angular_velocity_noise=0.0)
"""Every lab effect but the velocity noise, whose draws the engines cannot share."""
SENSORS = 5
"""The single cart-pole's sensors: x, cos, sin, xdot, thetadot."""


def _variant(variant: str, history: int, **kwargs):
    lab = {"lab": kwargs.pop("lab", QUIET_LAB)} if variant == "lab" else {}
    return make_testbed(
        f"cartpole_swingup_{variant}", backend="chain", action_history=history, **lab, **kwargs
    )


def _expected_history(actions: np.ndarray, m: int) -> np.ndarray:
    """[horizon + 1, m]: at step t the commands of steps t-1 ... t-m, zeros before the start."""
    padded = np.concatenate([np.zeros((m, 1)), actions])
    return np.stack([padded[t : t + m][::-1, 0] for t in range(len(actions) + 1)])


def _play(env, actions, key=0):
    """Observations, rewards and the lab's queue (if any) before each step, open loop."""

    def run(state, actions):
        def step(state, action):
            nxt = env.step(state, action)
            queue = nxt.info["lab"].commands if "lab" in nxt.info else jnp.zeros((0, 1))
            return nxt, (nxt.obs, nxt.reward, queue)

        _, (obs, rewards, queues) = jax.lax.scan(step, state, actions)
        return jnp.concatenate([state.obs[None], obs]), rewards, queues

    return [np.asarray(a) for a in jax.jit(run)(env.reset(jax.random.PRNGKey(key)), actions)]


ACTIONS = jax.random.uniform(jax.random.PRNGKey(1), (8, 1), minval=-1.2, maxval=1.2)


@pytest.fixture(scope="module", params=["sim", "real", "lab"])
def played(request):
    """The same commands from the same start with no history and with m = 3."""
    variant = request.param
    plain, with_three = _variant(variant, 0), _variant(variant, 3)
    return variant, with_three, _play(plain, ACTIONS), _play(with_three, ACTIONS)


def test_without_a_history_the_observation_is_the_sensors_and_with_one_they_are_unchanged(played):
    variant, env, (obs0, rewards0, _), (obs3, rewards3, _) = played
    assert obs0.shape == (len(ACTIONS) + 1, SENSORS)
    assert (env.sensor_size, env.observation_size) == (SENSORS, SENSORS + 3)
    # The history observes; it does not act: sensors and rewards are those of m = 0, bit for bit.
    np.testing.assert_array_equal(obs3[:, :SENSORS], obs0)
    np.testing.assert_array_equal(rewards3, rewards0)
    np.testing.assert_array_equal(obs3[:, SENSORS:], _expected_history(np.asarray(ACTIONS), 3))


@pytest.mark.slow  # ~15 s cold each; the history is stepped by code the backends share
@pytest.mark.parametrize("backend", ["generalized", "mjx"])
def test_the_brax_pipelines_carry_the_history_as_the_chain_does(backend):
    env = make_testbed("cartpole_swingup_real", backend=backend, action_history=3)
    obs, _, _ = _play(env, ACTIONS)
    np.testing.assert_array_equal(obs[:, SENSORS:], _expected_history(np.asarray(ACTIONS), 3))


@pytest.mark.parametrize("latency, n_frames, m", [(3, 2, 2), (4, 1, 5)])
def test_with_latency_the_observation_at_t_holds_the_commands_of_t_minus_1_to_t_minus_m(
    latency, n_frames, m
):
    """The lab's latency of d physics steps (n_frames per control period) keeps the last
    ceil(d / n_frames) commands in flight, gain-scaled, in its own queue: the history holds
    the same commands as commanded, newest first, and as many as m asks for."""
    env = _variant(
        "lab",
        m,
        lab=LabEffects.off(latency_steps=latency),
        timestep=0.01,
        n_frames=n_frames,
    )
    obs, _, queues = _play(env, ACTIONS)
    expected = _expected_history(np.asarray(ACTIONS), m)
    np.testing.assert_array_equal(obs[:, SENSORS:], expected)
    gain = env.physics.actuator_gain
    in_flight = queues.shape[1]
    assert in_flight == -(-latency // n_frames)
    # The queue after step t (oldest first) is the history of step t + 1, reversed and scaled.
    shared = min(in_flight, m)
    np.testing.assert_allclose(
        queues[:, in_flight - shared :, 0][:, ::-1] / gain, expected[1:, :shared], rtol=1e-6
    )


def test_return_gradient_through_a_policy_that_reads_the_history_matches_finite_differences():
    """The lab (noise off) in float64, closed loop under u_t = a_t + K obs_t with K weighing
    the history: the actions reach the return through the history too."""
    with jax.enable_x64(True):
        env = make_testbed(
            "cartpole_swingup_lab",
            lab=QUIET_LAB,
            backend="chain",
            dtype=jnp.float64,
            action_history=2,
        )
        state = env.reset(jax.random.PRNGKey(7))
        gains = jnp.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.5, -0.3], jnp.float64)
        actions = 0.5 * jax.random.uniform(jax.random.PRNGKey(8), (8, 1), jnp.float64, -1, 1)

        def value(a):
            def step(state, a_t):
                state = env.step(state, a_t + gains @ state.obs)
                return state, state.reward

            return jnp.sum(jax.lax.scan(step, state, a)[1])

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
        assert float(jnp.linalg.norm(finite)) > 1e-3
        relative_error = jnp.linalg.norm(analytic - finite) / jnp.linalg.norm(finite)
        assert float(relative_error) <= 1e-4, float(relative_error)
        # The history is differentiable: the observation's last entry is u_{t-2}.
        final = lambda a: trajectory_of_actions(env, state, a).observations[-1, -1]  # noqa: E731
        np.testing.assert_array_equal(jax.grad(final)(actions)[:, 0], np.eye(8)[-2])


@pytest.fixture(scope="module")
def mujoco_real():
    """MuJoCo C's lab behind the boundary, with m = 2."""
    rig = MujocoCartPole("cartpole", "swingup", "lab", lab=QUIET_LAB)
    return RealSystem(rig, 40, episode_length=8, action_history=2)


def test_the_boundary_appends_the_sent_commands_to_a_gymnasium_envs_sensors_as_the_twin_does(
    mujoco_real,
):
    real = mujoco_real
    assert (real.sensor_size, real.observation_size) == (SENSORS, SENSORS + 2)
    commands = np.asarray(ACTIONS, np.float64)[:6]
    first = real.reset(jax.random.PRNGKey(3))
    rig = real.env
    q, qd = rig._q.copy(), rig._qd.copy()
    seen = [first] + [real.step(u)[0] for u in commands]
    seen = np.stack(seen)
    np.testing.assert_array_equal(seen[:, SENSORS:], _expected_history(commands, 2))
    with jax.enable_x64(True):
        twin = make_testbed(
            "cartpole_swingup_lab",
            lab=QUIET_LAB,
            backend="chain",
            dtype=jnp.float64,
            action_history=2,
        )
        start = twin.reset(jax.random.PRNGKey(0))
        start = start.replace(pipeline_state=twin.pipeline_init(jnp.asarray(q), jnp.asarray(qd)))
        start = start.replace(obs=jnp.concatenate([jnp.asarray(first[:SENSORS]), jnp.zeros(2)]))
        brax = np.asarray(trajectory_of_actions(twin, start, jnp.asarray(commands)).observations)
    # The same layout: the same history exactly, the same sensors to an encoder count.
    np.testing.assert_array_equal(brax[:, SENSORS:], seen[:, SENSORS:])
    count = max(QUIET_LAB.position_resolution, QUIET_LAB.angle_resolution)
    assert np.abs(brax[:, :SENSORS] - seen[:, :SENSORS]).max() <= count + 1e-12


def _echo(params):
    """A policy that reads its history: u_t = a + b u_{t-1}."""
    return lambda obs: params[0] + params[1] * obs[SENSORS : SENSORS + 1]


def _echo_commands(params, n):
    u, out = 0.0, []
    for _ in range(n):
        u = params[0] + params[1] * u
        out.append(u)
    return np.array(out)


def test_a_gymnasium_collection_feeds_the_policy_its_history_and_records_the_sensors(mujoco_real):
    params = np.array([0.3, 0.5])
    episodes = mujoco_real.collect(
        jax.random.PRNGKey(4), 2, make_policy=_echo, params=params, horizon=4
    )
    assert episodes.observations.shape == (2, 5, SENSORS)
    np.testing.assert_allclose(episodes.actions[:, :, 0], np.stack([_echo_commands(params, 4)] * 2))


def test_a_brax_real_system_records_the_sensors_of_what_its_policy_saw():
    twin = _variant("lab", 2, episode_length=4)
    real = RealSystem(twin, 8, action_history=2)
    params = jnp.array([0.3, 0.5])
    episodes = real.collect(jax.random.PRNGKey(4), 2, make_policy=_echo, params=params)
    assert episodes.observations.shape == (2, 5, SENSORS)
    np.testing.assert_allclose(
        episodes.actions[:, :, 0], np.stack([_echo_commands(params, 4)] * 2), rtol=1e-6
    )
    with pytest.raises(ValueError, match="action_history=1"):
        RealSystem(twin, 8, action_history=1)


def test_a_gymnasium_space_check_compares_the_sensors_only():
    rig = MujocoCartPole("cartpole", "swingup", "sim")
    real = RealSystem(
        rig, 4, episode_length=4, adapter=GymAdapter(observation_size=SENSORS), action_history=3
    )
    assert real.observation_size == SENSORS + 3
    with pytest.raises(ValueError, match=r"sensors are \(7,\)"):
        RealSystem(
            rig, 4, episode_length=4, adapter=GymAdapter(observation_size=7), action_history=2
        )
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"action_history must be an integer >= 0, got {bad}"):
            RealSystem(rig, 4, episode_length=4, action_history=bad)
        with pytest.raises(ValueError, match=f"got {bad}"):
            make_testbed("cartpole_swingup_sim", action_history=bad)


@pytest.fixture(scope="module")
def learned():
    """Sensor datasets of the sim with m = 0 and m = 2 from one key, and a model fitted
    (initialized) on the m = 0 data."""
    plain, with_two = _variant("sim", 0, episode_length=6), _variant("sim", 2, episode_length=6)
    key = jax.random.PRNGKey(5)
    data = collect_transitions(plain, key, 3, action_correlation=0.5)
    data_two = collect_transitions(with_two, key, 3, action_correlation=0.5)
    model = MLPDynamics.for_dataset(
        jax.random.PRNGKey(6), data, ObsLayout.of_env(with_two), width=8, depth=1
    )
    return plain, with_two, data, data_two, model


def test_datasets_and_model_layouts_hold_the_sensors_whatever_the_history(learned):
    plain, with_two, data, data_two, _ = learned
    assert data_two.obs_dim == SENSORS
    np.testing.assert_array_equal(data_two.observations, data.observations)
    assert ObsLayout.of_env(with_two) == ObsLayout.of_env(plain)
    # An open-loop replay in a simulator that observes a history starts it empty.
    np.testing.assert_array_equal(
        k_step_error(with_two, data, 2).rmse, k_step_error(plain, data, 2).rmse
    )


def test_a_learned_env_predicts_the_sensors_and_shifts_the_history_exactly(learned):
    _, with_two, _, _, model = learned
    env = LearnedEnv(model, with_two)
    assert (env.sensor_size, env.observation_size) == (SENSORS, SENSORS + 2)
    trajectory = jax.jit(lambda s, a: trajectory_of_actions(env, s, a))(
        env.reset(jax.random.PRNGKey(0)), ACTIONS[:5]
    )
    obs = np.asarray(trajectory.observations)
    np.testing.assert_array_equal(obs[:, SENSORS:], _expected_history(np.asarray(ACTIONS[:5]), 2))
    predicted = jax.vmap(model)(jnp.asarray(obs[:-1, :SENSORS]), ACTIONS[:5])
    np.testing.assert_allclose(obs[1:, :SENSORS], predicted, rtol=1e-6, atol=1e-6)
    rewards = jax.vmap(with_two.task_reward)(predicted, ACTIONS[:5])
    np.testing.assert_allclose(trajectory.rewards, rewards, rtol=1e-6, atol=1e-6)
    # The same model without a history: the sensors alone, as before histories existed.
    plain = LearnedEnv(model)
    assert plain.observation_size == SENSORS


def test_the_config_key_builds_every_engine_and_refuses_a_bad_value_in_one_line():
    import experiments.train as entry

    cfg = compose_config(["env.action_history=2", "env.real_profile=lab", "real.engine=mujoco"])
    sim, real = entry.build_envs(cfg, None)
    assert sim.observation_size == real.twin.observation_size == SENSORS + 2
    assert real.system(4).observation_size == SENSORS + 2
    for bad in ("-1", "1.5", "true", "two"):
        with pytest.raises(ConfigError, match=r"^env.action_history must be an integer >= 0"):
            entry.build_envs(compose_config([f"env.action_history={bad}"]), None)
    with pytest.raises(ConfigError, match="trained observing 2 past commands"):
        deploy_config(cfg, ["env.action_history=0"])
    assert deploy_config(cfg, ["real.engine=brax"]).env.action_history == 2
    # A run directory written before the key existed continues as m = 0, the sensors alone.
    before = {"env": {"system": "cartpole"}}
    assert config_differences(before, {"env": {"system": "cartpole", "action_history": 0}}) == []
    assert config_differences(before, {"env": {"system": "cartpole", "action_history": 2}}) == [
        "env.action_history: 0 -> 2"
    ]


def test_a_tiny_run_with_a_history_trains_evaluates_on_mujoco_and_deploys(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ("env.action_history=2", "env.real_profile=lab", "real.engine=mujoco")
    run_train(run_dir, "algo.num_epochs=2", "run.animation=false", *overrides)
    loaded = load_policy(run_dir)
    assert loaded.params.normalizer.mean.shape == (SENSORS + 2,)
    out = tmp_path / "deployed.npz"
    assert deploy_main([str(run_dir), "--episodes", "2", "--out", str(out)]) == 0
    assert load_dataset(out).observations.shape == (2, 9, SENSORS)
    refused = run_train(tmp_path / "bad", "env.action_history=1.5", check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: env.action_history must be an integer >= 0, got 1.5"
    )
