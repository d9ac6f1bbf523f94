"""LQR on the balance tasks: the exact linearization of the simulator at the upright
equilibrium, a discrete algebraic Riccati equation, and a saturated linear state feedback.

The state is the testbed's minimal one, z = (q, qd): cart position, hinge angles, then their
velocities (0 is upright, at rest, with the cart at the origin). One control step of the
simulator, z' = f(z, u), is differentiated with `jax.jacfwd` at (z, u) = (0, 0), so A and B
are the Jacobians of the very step PODS rolls out (every physics substep, the exact mass-matrix
solve), not of a hand-derived model. The policy reads z back from the observation
(`state_from_obs`) and plays u = clip(-K z, -1, 1): the command range of the testbeds.

The state weights are the second-order expansion of the testbeds' task reward
(`sim2real.RewardWeights` defaults) about the upright: (1 + cos phi) / 2 = 1 - phi^2 / 4 + ...,
so near the top LQR minimizes the objective PODS maximizes. The command weight is not the
reward's: LQR knows nothing of the motor's saturation, and with the reward's 0.01 the double
pole's gains saturate the motor and 28% of 64 balance starts fall in `sim` (mean return -255
of at most 100); at 1.0 every one is caught (99.7).

Linearize the `sim` testbed. The `real` one linearizes too, but misleadingly: at rest its
friction F tanh(v / v_s) has the slope F / v_s = 20 N s/m, which the linear model takes for a
damping that only holds below a few cm/s (its LQR balances worse in `real` than sim's does).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, Float

from pods.drivers import Metrics
from pods.rollout import Policy
from pods.validation import is_number, require

ProgressFn = Callable[[int, Metrics], None]


@dataclasses.dataclass(frozen=True)
class LQRConfig:
    """Weights of the quadratic cost sum_t z_t^T Q z_t + R u_t^2 that LQR minimizes.

    Like the task reward, Q weighs the poles' absolute angles (the sums of the hinge angles
    below each pole) and the hinges' own angular velocities.
    """

    cart_position: float = 0.05
    """Per m^2 of cart displacement (the reward's w_x)."""
    pole_angle: float = 0.25
    """Per rad^2 of the mean over poles of the squared absolute angle: 1/4 is the curvature
    of the reward's (1 + cos phi) / 2 at the top."""
    cart_velocity: float = 0.0
    """Per (m/s)^2 of cart velocity (the reward has none)."""
    hinge_velocity: float = 0.001
    """Per (rad/s)^2 of each hinge's angular velocity (the reward's w_v)."""
    action: float = 1.0
    """R: per unit^2 of motor command. Larger than the reward's w_u = 0.01, so that the
    feedback stays within the motor's range [-1, 1], where the linear design holds."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            positive = field.name == "action"
            require(
                is_number(value) and (value > 0 if positive else value >= 0),
                self,
                field.name,
                f"a finite number {'> 0' if positive else '>= 0'}",
            )


def step_state(
    env: Any, z: Float[Array, " nz"], action: Float[Array, " act"]
) -> Float[Array, " nz"]:
    """One control step of a testbed on the minimal state z = (q, qd)."""
    nq = env.sys.q_size()
    pipeline_state = env.pipeline_step(env.pipeline_init(z[:nq], z[nq:]), action)
    return jnp.concatenate([pipeline_state.q, pipeline_state.qd])


def upright(env: Any) -> Float[Array, " nz"]:
    """The equilibrium LQR stabilizes: cart at the origin, every pole up, all at rest."""
    return jnp.zeros(env.sys.q_size() + env.sys.qd_size(), env.dtype)


def linearize(env: Any) -> tuple[Float[Array, "nz nz"], Float[Array, "nz act"]]:
    """(A, B) = the Jacobians of `step_state` at (upright, u = 0), in the env's dtype."""
    z0, u0 = upright(env), jnp.zeros(env.action_size, env.dtype)
    # Forward mode: the Jacobian is square, and jacfwd compiled in 60% of jacrev's CPU time.
    return jax.jit(jax.jacfwd(lambda z, u: step_state(env, z, u), argnums=(0, 1)))(z0, u0)


def cost_matrices(config: LQRConfig, n_poles: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, R) on z = (x, hinge angles, xdot, hinge velocities) for `n_poles` poles."""
    # Absolute pole angles are cumulative sums of the hinge angles.
    to_absolute = np.tril(np.ones((n_poles, n_poles)))
    angles = to_absolute.T @ to_absolute * (config.pole_angle / n_poles)
    rates = config.hinge_velocity * np.eye(n_poles)
    q = scipy.linalg.block_diag(config.cart_position, angles, config.cart_velocity, rates)
    return q, np.array([[config.action]])


def make_policy_factory(env: Any) -> Callable[[Float[Array, "act nz"]], Policy]:
    """`make_policy(K)`: the saturated state feedback obs -> clip(-K (z - upright), -1, 1)."""
    z_star = upright(env)

    def make_policy(gain: Float[Array, "act nz"]) -> Policy:
        def policy(obs: Float[Array, " obs"]) -> Float[Array, " act"]:
            z = jnp.concatenate(env.state_from_obs(obs))
            return jnp.clip(-gain @ (z - z_star), -1.0, 1.0)

        return policy

    return make_policy


def train(
    config: LQRConfig, env: Any, key: jax.Array, *, progress_fn: ProgressFn | None = None
) -> tuple[Callable[[Float[Array, "act nz"]], Policy], Float[Array, "act nz"], list[Metrics]]:
    """The LQR policy of `env` (normally a `sim` balance testbed) about its upright.

    Returns `(make_policy, K, metrics)`, the baselines' convention: `make_policy(K)` is the
    policy for `pods.rollout.trajectory_of_policy`; `metrics` holds one entry, also passed to
    `progress_fn(0, ...)`. LQR is deterministic: `key` is accepted for the common signature and
    not used.
    """
    del key
    start = time.perf_counter()
    a, b = (np.asarray(m, np.float64) for m in linearize(env))
    q, r = cost_matrices(config, env.n_poles)
    p = scipy.linalg.solve_discrete_are(a, b, q, r)
    gain = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
    metrics = {
        "train/wall_clock_s": time.perf_counter() - start,
        "train/open_loop_spectral_radius": float(np.max(np.abs(np.linalg.eigvals(a)))),
        "train/closed_loop_spectral_radius": float(np.max(np.abs(np.linalg.eigvals(a - b @ gain)))),
        "train/gain_norm": float(np.linalg.norm(gain)),
    }
    if progress_fn is not None:
        progress_fn(0, metrics)
    return make_policy_factory(env), jnp.asarray(gain, env.dtype), [metrics]


__all__ = [
    "LQRConfig",
    "cost_matrices",
    "linearize",
    "make_policy_factory",
    "step_state",
    "train",
    "upright",
]
