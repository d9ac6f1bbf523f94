"""The benchmarks' own pieces that decide what they measure: the trajectory optimizer's
tolerance barrier, the objective it optimizes in place of the reward."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim2real.testbeds import make_testbed


def _load(name: str):
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trajectory_optimizer = _load("trajectory_optimizer")


def _upright_obs(hinges) -> jnp.ndarray:
    """A double cart-pole observation at rest with the given hinge angles."""
    hinges = jnp.asarray(hinges)
    cos_sin = jnp.stack([jnp.cos(hinges), jnp.sin(hinges)], -1).ravel()
    return jnp.concatenate([jnp.zeros(1), cos_sin, jnp.zeros(3)])


def test_the_barrier_is_zero_inside_its_onset_quadratic_past_it_and_bounded():
    env = make_testbed("double_cartpole_balance_sim", backend="chain")
    barrier = trajectory_optimizer.ToleranceBarrier(env, weight=100.0)
    assert (barrier.onset, barrier.width) == pytest.approx((0.15, 0.15))
    penalty = jax.jit(barrier.penalty)
    # Every pole within 0.15 rad of upright (the second at 0.1 + 0.04): nothing to pay.
    assert float(penalty(_upright_obs([0.1, 0.04]))) == 0.0
    # The second pole's absolute angle is 0.1 + 0.08 = 0.18: 100 (0.03)^2.
    np.testing.assert_allclose(penalty(_upright_obs([0.1, 0.08])), 100 * 0.03**2, rtol=1e-4)
    # A pole past onset + width pays the bound, however far it has fallen.
    np.testing.assert_allclose(penalty(_upright_obs([0.0, 2.0])), 100 * 0.15**2, rtol=1e-5)
    np.testing.assert_allclose(penalty(_upright_obs([0.0, -3.0])), 100 * 0.15**2, rtol=1e-5)


def test_the_barriers_step_and_task_reward_are_the_testbeds_less_the_penalty():
    env = make_testbed("double_cartpole_balance_sim", backend="chain")
    barrier = trajectory_optimizer.ToleranceBarrier(env, weight=30.0, onset=0.05)
    state = env.reset(jax.random.PRNGKey(3))
    action = jnp.array([0.7])
    plain, barred = jax.jit(env.step)(state, action), jax.jit(barrier.step)(state, action)
    np.testing.assert_array_equal(barred.obs, plain.obs)
    penalty = barrier.penalty(plain.obs)
    assert float(penalty) > 0.0
    np.testing.assert_allclose(barred.reward, plain.reward - penalty, rtol=1e-6)
    np.testing.assert_allclose(
        barrier.task_reward(plain.obs, action), env.task_reward(plain.obs, action) - penalty
    )


@pytest.mark.parametrize("flag, value", [("--tolerance-weight", "-1"), ("--tolerance-onset", "0")])
def test_the_trajectory_optimizer_refuses_a_bad_barrier_in_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        trajectory_optimizer.main([flag, value])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert flag in lines[-1] and value in lines[-1]


def test_held_from_is_the_step_from_which_the_pole_stays_up():
    classical = _load("classical_swingup")
    lean = np.full((3, 10), 3.0)
    lean[0, 4:] = 0.1  # up from step 4 on
    lean[1, :] = 0.1  # never down
    lean[2, 6:] = 0.1
    lean[2, 8] = 0.3  # down again at step 8: held from 9
    np.testing.assert_array_equal(classical.held_from(lean, 0.2), [4, 0, 9])
