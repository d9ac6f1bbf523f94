"""Action improvement, PODS step 2: better action sequences from the simulator's derivatives.

The actions a[0..N-1] of each rollout are treated as free variables of the return V(a),
the sum of rewards of an open-loop replay from the same initial state:

- first order:  a' = a + alpha * d,  d = dV/da (optionally normalized or clipped);
- second order: a' = a + alpha * d,  d = H^-1 dV/da with H the Gauss-Newton matrix of -V
  (Mora et al. 2021, eq. 8): H = sum_t (dz_t/da)^T (-d2r/dz2)_+ (dz_t/da), z_t = (s_{t+1}, a_t).
  The simulator's second derivatives are dropped and the reward's Hessian is projected onto
  the PSD cone, so H is positive semi-definite even where r is not concave; Levenberg damping
  makes it definite and the solve is a Cholesky.

The step size alpha comes from one batched rollout over a geometric grid of candidates
(trajectories x candidates in a single `vmap`): per trajectory the best candidate replaces the
actions only if its return is strictly higher. A trajectory whose direction is not finite is
rejected and counted; it keeps its actions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State
from jaxtyping import Array, Float

from pods.derivatives import RewardFn, action_gradient, first_order_direction, newton_step
from pods.rollout import episode_of_actions
from pods.step_size import (
    ImprovedActions,
    LineSearchResult,
    StepSizeSearch,
    _all_active,
    anneal_step_size,
    line_search,
)


def _is_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


def improve_actions(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    observations: Float[Array, "k horizon+1 obs_dim"],
    step_sizes: Float[Array, " m"],
    *,
    order: int = 1,
    gradient_normalization: str = "rms",
    max_gradient_norm: float = 1.0,
    damping: float = 1e-3,
    gradient_window: int | None = None,
    reward_fn: RewardFn | None = None,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
    active: Float[Array, "k horizon"] | None = None,
) -> ImprovedActions:
    """One first- or second-order improvement step with a batched line search, for k rollouts.

    `observations` (and `active`, the steps before each episode ended; all of them if None)
    are those of the rollouts of `actions` from `states`; they are returned for the
    trajectories the line search leaves alone, so that distillation can regress on the states
    each returned action sequence actually visits, while its episode runs.
    """

    def search(direction, value):
        return line_search(
            env, states, actions, direction, value, step_sizes, action_bounds=action_bounds
        )

    return improve_along_direction(
        env,
        states,
        actions,
        observations,
        search,
        order=order,
        gradient_normalization=gradient_normalization,
        max_gradient_norm=max_gradient_norm,
        damping=damping,
        gradient_window=gradient_window,
        reward_fn=reward_fn,
        action_bounds=action_bounds,
        active=active,
    )


def improve_along_direction(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    observations: Float[Array, "k horizon+1 obs_dim"],
    step_size_search: StepSizeSearch,
    *,
    order: int = 1,
    gradient_normalization: str = "rms",
    max_gradient_norm: float = 1.0,
    damping: float = 1e-3,
    gradient_window: int | None = None,
    reward_fn: RewardFn | None = None,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
    active: Float[Array, "k horizon"] | None = None,
) -> ImprovedActions:
    """One improvement step for k rollouts, whatever chooses the step size.

    The direction (first order: the normalized gradient; second order: the damped
    Gauss-Newton step), the guard that rejects a trajectory whose direction is not finite,
    and the result; `step_size_search(direction, value)` picks alpha per trajectory.
    """
    if order == 1:

        def direction_of(state, a):
            value, gradient = action_gradient(env, state, a, gradient_window=gradient_window)
            direction = first_order_direction(gradient, gradient_normalization, max_gradient_norm)
            return value, gradient, direction

    elif order == 2:

        def direction_of(state, a):
            return newton_step(
                env, state, a, damping=damping, reward_fn=reward_fn, gradient_window=gradient_window
            )

    else:
        raise ValueError(f"order must be 1 or 2, got {order!r}")

    value, gradient, direction = jax.vmap(direction_of)(states, actions)
    finite = jax.vmap(_is_finite)(direction) & jax.vmap(_is_finite)(gradient) & jnp.isfinite(value)
    # A non-finite direction becomes zero: every candidate then replays `actions`, which
    # cannot beat `value` strictly, so the trajectory is rejected by the search itself.
    direction = jnp.where(finite[:, None, None], direction, 0.0)
    search = step_size_search(direction, value)
    accepted = search.accepted & finite
    kept = jnp.where(accepted[:, None, None], search.actions, jnp.clip(actions, *action_bounds))
    return ImprovedActions(
        actions=kept,
        value=value,
        value_improved=jnp.where(accepted, search.value, value),
        gradient_norm=jax.vmap(jnp.linalg.norm)(gradient),
        step_size=jnp.where(accepted, search.step_size, 0.0),
        accepted=accepted,
        nonfinite=~finite,
        observations=jnp.where(accepted[:, None, None], search.observations, observations),
        active=jnp.where(accepted[:, None], search.active, _all_active(actions, active)),
        anchor_actions=kept,
    )


def improve_actions_annealed(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    observations: Float[Array, "k horizon+1 obs_dim"],
    key: jax.Array,
    *,
    step_size_min: float,
    step_size_max: float,
    iterations: int,
    initial_temperature: float,
    cooling: float,
    proposal_scale: float,
    order: int = 1,
    gradient_normalization: str = "rms",
    max_gradient_norm: float = 1.0,
    damping: float = 1e-3,
    gradient_window: int | None = None,
    reward_fn: RewardFn | None = None,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
    active: Float[Array, "k horizon"] | None = None,
) -> ImprovedActions:
    """`improve_actions` with alpha from simulated annealing instead of the grid line search.

    One chain per trajectory: each trajectory's return is its own function of alpha (their
    gradients span orders of magnitude through unstable rollouts, the reason the line search is
    per trajectory too), a shared alpha would let one diverging trajectory veto every other's
    step, and k chains cost the same batched rollout per proposal as one. As with the line
    search, a trajectory takes the best alpha seen only if its return is finite and strictly
    above V(a); otherwise it keeps its actions.
    """
    low, high = action_bounds

    def search(direction, value) -> LineSearchResult:
        def candidates(alphas):
            return jnp.clip(actions + alphas[:, None, None] * direction, low, high)

        def objective(alphas):
            episodes = jax.vmap(lambda state, a: episode_of_actions(env, state, a))(
                states, candidates(alphas)
            )
            return episodes.value, (episodes.observations, episodes.active)

        annealed = anneal_step_size(
            objective,
            key,
            actions.shape[0],
            step_size_min=step_size_min,
            step_size_max=step_size_max,
            iterations=iterations,
            initial_temperature=initial_temperature,
            cooling=cooling,
            proposal_scale=proposal_scale,
            dtype=actions.dtype,
        )
        observations_seen, active_seen = annealed.aux
        return LineSearchResult(
            actions=candidates(annealed.step_size),
            value=annealed.value,
            step_size=annealed.step_size,
            accepted=annealed.value > value,
            observations=observations_seen,
            active=active_seen,
        )

    return improve_along_direction(
        env,
        states,
        actions,
        observations,
        search,
        order=order,
        gradient_normalization=gradient_normalization,
        max_gradient_norm=max_gradient_norm,
        damping=damping,
        gradient_window=gradient_window,
        reward_fn=reward_fn,
        action_bounds=action_bounds,
        active=active,
    )


__all__ = ["improve_actions", "improve_actions_annealed", "improve_along_direction"]
