import copy

import jax
import numpy as np
import pytest

from dynamics_models import TransitionDataset, random_actions
from pods.rollout import reset_batch, trajectory_of_actions
from sim2real import Physics, make_testbed
from sim2real.real_system import RealTrajectories
from sim2real.sysid import SysIDConfig, identify
from sim2real.testbed_spec import physics_from_sys

# Enough Adam steps for the cosine schedule to settle on 6 short trajectories; one
# compilation of the fit serves both recoveries below (same config, env and data shapes).
CONFIG = SysIDConfig(window=4, num_steps=500, batch_size=None)
N_TRAJECTORIES, HORIZON = 6, 20


@pytest.fixture(scope="module")
def sim():
    return make_testbed("cartpole_swingup_sim", backend="chain")


@pytest.fixture(scope="module")
def record():
    """Noise-free trajectories of the `real` testbed with the given physics, from random
    commands. The testbed's system is an argument of one jitted rollout, so recording
    several physics compiles once."""
    real = make_testbed("cartpole_swingup_real", backend="chain")

    @jax.jit
    def play(sys):
        env = copy.copy(real)
        env.sys = sys
        states = reset_batch(env, jax.random.PRNGKey(0), N_TRAJECTORIES)
        actions = random_actions(jax.random.PRNGKey(1), N_TRAJECTORIES, HORIZON, 1, correlation=0.8)
        return jax.vmap(lambda s, a: trajectory_of_actions(env, s, a))(states, actions)

    def record(physics: Physics) -> RealTrajectories:
        trajectory = play(
            make_testbed("cartpole_swingup_real", physics=physics, backend="chain").sys
        )
        return RealTrajectories(*(np.asarray(x) for x in trajectory))

    return record


def _assert_recovered(physics: Physics, truth: Physics, history: dict) -> None:
    for name in CONFIG.parameters:
        assert getattr(physics, name) == pytest.approx(getattr(truth, name), rel=0.02), name
    # Not fitted: kept from the simulator.
    assert physics.friction_velocity == 0.05
    loss = history["sysid/loss"]
    assert loss.shape == (CONFIG.num_steps,) and loss[-1] < 1e-3 * loss[0]
    assert history["sysid/rejected_nonfinite"].sum() == 0


def test_recovers_the_real_physics(sim, record):
    physics, history = identify(CONFIG, sim, record(Physics()), jax.random.PRNGKey(1))
    _assert_recovered(physics, Physics(), history)
    # The fit starts from the simulator's values (damping and friction floored).
    assert history["sysid/actuator_gain"][0] == pytest.approx(1.0)
    assert history["sysid/slider_damping"][0] == pytest.approx(CONFIG.initial_floor)
    identified = sim.with_physics(physics)
    assert identified.physics == physics and identified.name == sim.name
    assert float(physics_from_sys(identified.sys)["actuator_gain"]) == pytest.approx(
        physics.actuator_gain
    )


def test_recovers_other_physics_from_a_transition_dataset(sim, record):
    truth = Physics(slider_damping=0.4, hinge_damping=0.03, slider_friction=0.5, actuator_gain=1.2)
    trajectories = record(truth)
    data = TransitionDataset(trajectories.observations, trajectories.actions)
    physics, history = identify(CONFIG, sim, data, jax.random.PRNGKey(3))
    _assert_recovered(physics, truth, history)


@pytest.mark.parametrize(
    "field, value",
    [
        ("parameters", ("slider_damping", "stiction")),
        ("parameters", ()),
        ("parameters", ("actuator_gain", "actuator_gain")),
        ("window", 0),
        ("num_steps", 2.5),
        ("learning_rate", float("nan")),
        ("batch_size", -4),
        ("initial_floor", 0.0),
        ("family", "grey_box"),
        ("max_delay_steps", -1),
        ("lab_parameters", ("stiction",)),
        ("cart_mass_scale", 0.0),
        ("lab_timestep", -0.005),
        ("lab_integrator", "midpoint"),
    ],
)
def test_bad_config_raises_one_line_naming_the_value(field, value):
    with pytest.raises(ValueError, match=f"SysIDConfig.{field}") as err:
        SysIDConfig(**{field: value})
    assert repr(value) in str(err.value) and "\n" not in str(err.value)


def test_data_that_does_not_fit_the_simulator_is_refused_before_fitting(sim):
    double = make_testbed("double_cartpole_swingup_real", backend="chain")
    observations = np.zeros((2, 4, double.observation_size), np.float32)
    actions = np.zeros((2, 3, 1), np.float32)
    with pytest.raises(ValueError, match="obs_dim"):
        identify(CONFIG, sim, TransitionDataset(observations, actions), jax.random.PRNGKey(0))
    short = TransitionDataset(np.zeros((2, 4, sim.observation_size), np.float32), actions)
    with pytest.raises(ValueError, match="window 4 is longer than the trajectories"):
        identify(CONFIG, sim, short, jax.random.PRNGKey(0))
