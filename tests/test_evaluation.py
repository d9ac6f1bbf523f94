"""The solved criterion: every pole upright over the end of the episode (or all of it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from doubles import LinearQuadraticEnv

from sim2real.evaluation import Solved, evaluate, held_out_starts, solved_criterion
from sim2real.testbeds import make_testbed


def _observations(angles: np.ndarray) -> np.ndarray:
    """Observations [n, T + 1, obs] in the testbeds' layout from hinge angles [n, T + 1, poles]."""
    n, steps, poles = angles.shape
    obs = np.zeros((n, steps, 2 + 3 * poles))
    obs[..., 1 : 1 + 2 * poles : 2] = np.cos(angles)
    obs[..., 2 : 2 + 2 * poles : 2] = np.sin(angles)
    return obs


def test_swingup_is_solved_when_the_pole_stays_up_over_the_last_50_steps():
    criterion = solved_criterion(make_testbed("cartpole_swingup_sim"))
    assert criterion == Solved(1, 50) and criterion.steps(100) == 50
    assert criterion.steps(200) == 50 and criterion.steps(20) == 20
    angles = np.full((4, 101, 1), np.pi)
    angles[0, 51:] = 0.15  # up from step 50 on, within 0.2 rad
    angles[1, 52:] = 2 * np.pi - 0.1  # up one step too late; angles wrap
    angles[2, 51:] = 0.1
    angles[2, 80] = 0.25  # up, but one step beyond the tolerance
    angles[3, 51:] = -2 * np.pi + 0.05  # a full turn round, then up
    solved = criterion(jnp.asarray(_observations(angles)))
    np.testing.assert_array_equal(solved, [True, False, False, True])
    np.testing.assert_array_equal(criterion(_observations(angles), xp=np), solved)


def test_balance_is_solved_only_if_the_pole_never_leaves_the_top():
    criterion = solved_criterion(make_testbed("cartpole_balance_sim"))
    angles = np.full((2, 101, 1), 0.05)
    angles[1, 3] = -0.21
    np.testing.assert_array_equal(criterion(_observations(angles), xp=np), [True, False])


def test_double_pole_counts_absolute_angles_over_the_last_30_steps():
    criterion = solved_criterion(make_testbed("double_cartpole_swingup_sim"))
    assert criterion.steps(100) == 30
    angles = np.zeros((3, 101, 2))
    angles[1, -10, 1] = 0.3  # the second pole bends at its hinge
    angles[2, -10] = [0.15, -0.15]  # each hinge tilts, but the second pole is upright
    np.testing.assert_array_equal(criterion(_observations(angles), xp=np), [True, False, True])
    # The largest absolute angle in the window: hinge angles add up, the start is not counted.
    angles[0, 0] = [0.5, 0.5]
    angles[0, -5] = [0.1, 0.05]
    np.testing.assert_allclose(
        criterion.max_deviation(_observations(angles), xp=np), [0.15, 0.3, 0.15], atol=1e-12
    )


def test_lean_is_each_poles_absolute_angle_from_upright_wrapped_to_pi():
    criterion = Solved(2, None)
    hinges = np.array([[0.1, 0.2], [-0.3, 0.1], [3.0, 0.5], [2 * np.pi + 0.05, 0.0]])
    lean = criterion.lean(_observations(hinges[:, None])[:, 0], xp=np)
    expected = [[0.1, 0.3], [0.3, 0.2], [3.0, 2 * np.pi - 3.5], [0.05, 0.05]]
    np.testing.assert_allclose(lean, expected, atol=1e-12)


@pytest.mark.parametrize("ended", [50, 99])
def test_an_episode_that_ended_early_is_not_solved(ended):
    criterion = Solved(1, 50)
    obs = _observations(np.zeros((1, 101, 1)))
    valid = np.arange(100)[None] < ended
    assert not criterion(obs, valid, xp=np)[0]
    assert criterion(obs, np.ones((1, 100), bool), xp=np)[0]


def test_held_out_starts_are_the_states_evaluate_plays_from():
    env = LinearQuadraticEnv()
    key = jax.random.PRNGKey(3)
    hold = lambda params: lambda obs: jnp.zeros((env.action_size,), obs.dtype)
    first_trajectory = evaluate(env, hold, None, key, 4).observations
    starts = held_out_starts(env, key, 4).obs
    np.testing.assert_array_equal(starts[0], first_trajectory[0])
    assert not np.allclose(starts[0], held_out_starts(env, jax.random.PRNGKey(4), 4).obs[0])
