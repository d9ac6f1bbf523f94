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

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State, Wrapper
from flax import struct
from jaxtyping import Array, Bool, Float

from pods.rollout import episode_of_actions, rollout_actions

RewardFn = Callable[[Float[Array, " obs_dim"], Float[Array, " act_dim"]], Float[Array, ""]]
"""r(s_{t+1}, a_t): the reward for arriving at observation s_{t+1} by action a_t."""

GRADIENT_NORMALIZATIONS = ("rms", "clip", "none")


@struct.dataclass
class ImprovedActions:
    """The outcome of one improvement step on a batch of k trajectories."""

    actions: Float[Array, "k horizon act_dim"]
    """a' where the line search found a better return, else the original a (clipped to bounds)."""
    value: Float[Array, " k"]
    """V(a), the return before the step."""
    value_improved: Float[Array, " k"]
    """V(a'), never below `value` for a finite `value`."""
    gradient_norm: Float[Array, " k"]
    """||dV/da||, before any normalization."""
    step_size: Float[Array, " k"]
    """The accepted alpha, 0 where the step was rejected."""
    accepted: Bool[Array, " k"]
    nonfinite: Bool[Array, " k"]
    """The direction (gradient or Newton step) was not finite: the trajectory was rejected."""
    observations: Float[Array, "k horizon+1 obs_dim"]
    """The states the returned actions visit: the candidate's rollout where accepted, else the
    rollout of the original actions."""
    active: Float[Array, "k horizon"]
    """1 for the steps of `actions` taken before their episode ended (see `pods.rollout`):
    distillation learns only from those."""
    anchor_actions: Float[Array, "k horizon act_dim"] | None = None
    """What the step would play at the states it started from (the rollout it improved,
    `observations` of the input): an open-loop step's `actions` themselves; a feedback
    step's a + alpha k, its law without the gains' correction. Distilled with
    `distill_states="both"`, beside `actions` at the states they visit, they show the policy
    how the improved action changes with the state."""


def step_size_grid(largest: float, smallest: float, count: int) -> Float[Array, " count"]:
    """Geometric candidates for alpha, largest first."""
    if not (0 < smallest <= largest and count >= 1):
        raise ValueError(
            f"need 0 < smallest <= largest and count >= 1, got {smallest}, {largest}, {count}"
        )
    if count == 1:
        return jnp.array([largest])
    return jnp.geomspace(largest, smallest, count)


def _is_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


class RematerializedStep(Wrapper):
    """The env with `step` recomputed in the backward pass instead of its intermediates stored.

    Measured on the 2-core CPU: the batched gradient through a 50-step cart-pole ran 3.4x
    faster (0.043 s against 0.148 s for k=16), since the Brax step's many small intermediates
    no longer make a round trip through memory.
    """

    def step(self, state: State, action: jax.Array) -> State:
        return jax.checkpoint(self.env.step)(state, action)


def action_gradient(
    env: Env,
    state: State,
    actions: Float[Array, "horizon act_dim"],
    *,
    gradient_window: int | None = None,
    rematerialize: bool = True,
) -> tuple[Float[Array, ""], Float[Array, "horizon act_dim"]]:
    """V(a) and dV/da by reverse mode through one open-loop rollout."""
    env = RematerializedStep(env) if rematerialize else env
    return jax.value_and_grad(
        lambda a: rollout_actions(env, state, a, gradient_window=gradient_window).value
    )(actions)


@struct.dataclass
class GaussNewton:
    """V(a), dV/da and the Gauss-Newton matrix of -V in blocks: H = blockdiag(B_b^T B_b).

    With a gradient window of W steps, an action reaches only the rewards of its own window
    (the state's gradient is cut where the next one starts), so H is block-diagonal with one
    block per window. Block b's columns are the actions of steps b W .. b W + W - 1 (every
    action coordinate of each); the last block's columns past the horizon are padding.
    """

    value: Float[Array, ""]
    gradient: Float[Array, " n"]
    """dV/da, flattened (n = horizon * act_dim)."""
    blocks: Float[Array, "blocks rows columns"]
    """B_b: each block's rows of the factor, over its own columns."""
    real: Bool[Array, "blocks columns"]
    """The columns that are actions, not padding."""

    def dense_factor(self) -> Float[Array, "rows n"]:
        """B, over all n actions: the blocks on its block diagonal."""
        count, rows, columns = self.blocks.shape
        n = self.gradient.shape[0]
        dense = jnp.zeros((count, rows, count * columns), self.blocks.dtype)
        for b in range(count):
            dense = dense.at[b, :, b * columns : (b + 1) * columns].set(self.blocks[b])
        return dense.reshape(count * rows, count * columns)[:, :n]


def reward_derivatives(
    reward_of_z: Callable[[Float[Array, " dim"]], Float[Array, ""]],
    z: Float[Array, "*lead dim"],
) -> tuple[Float[Array, " *lead"], Float[Array, "*lead dim"], Float[Array, "*lead dim dim"]]:
    """r(z), dr/dz and d2r/dz2 at every z_t of `z`, from one forward-over-reverse pass.

    The numbers of `jax.hessian`, `jax.grad` and the value apart, to the bit in the PODS
    epoch, for less tracing: the three traced separately, each under a vmap per leading
    axis, took a quarter of the epoch's trace."""

    def gradient_and_aux(z_t):
        value, gradient = jax.value_and_grad(reward_of_z)(z_t)
        return gradient, (value, gradient)

    derivatives = jax.jacfwd(gradient_and_aux, has_aux=True)
    for _ in z.shape[:-1]:
        derivatives = jax.vmap(derivatives)
    hessian, (value, gradient) = derivatives(z)
    return value, gradient, hessian


def gauss_newton(
    env: Env,
    state: State,
    actions: Float[Array, "horizon act_dim"],
    *,
    reward_fn: RewardFn | None = None,
    gradient_window: int | None = None,
    tangent_period: int | None = None,
) -> GaussNewton:
    """V(a), dV/da and the blocks of the Gauss-Newton matrix, from one vmapped JVP rollout.

    The Jacobian ds/da comes from forward mode: the states are larger than the actions, and a
    vmapped JVP rollout is cheaper than reverse passes. dV/da is assembled from the same
    Jacobian, so the second-order path needs no reverse pass at all. With a gradient window
    W, one tangent per offset within a window serves every window at once: tangent j moves
    actions j, W + j, 2W + j, ..., and since no window's states see another window's actions,
    each state's derivative along it is its derivative with respect to its own window's action
    j. That is W tangents instead of the horizon's (10 instead of 100 for the swing-up's
    10-step windows), and exactly the same Jacobian (tested). `tangent_period` overrides the
    period (the horizon: one tangent per action, the reference).

    Steps after the episode ended add nothing to V, to its gradient or to H, as in the
    rollout's return.
    """
    reward_fn = reward_fn if reward_fn is not None else getattr(env, "task_reward", None)
    if reward_fn is None:
        raise ValueError("second-order improvement needs reward_fn(obs, action) or env.task_reward")
    horizon, act_dim = actions.shape
    period = tangent_period or min(gradient_window or horizon, horizon)
    if not (isinstance(period, int) and 0 < period <= horizon):
        raise ValueError(f"tangent_period must be in [1, {horizon}], got {period!r}")
    count = -(-horizon // period)
    padded = count * period
    columns = period * act_dim

    def next_observations(a):
        episode = episode_of_actions(env, state, a, gradient_window=gradient_window)
        return episode.observations[1:], episode.active

    # Tangent m = (j, c) moves coordinate c of every action whose step is j modulo the period.
    step, coordinate = jnp.arange(columns) // act_dim, jnp.arange(columns) % act_dim
    tangents = (jnp.arange(horizon)[None, :, None] % period == step[:, None, None]) & (
        jnp.arange(act_dim)[None, None, :] == coordinate[:, None, None]
    )
    (obs, active), (d_obs, _) = jax.vmap(
        lambda t: jax.jvp(next_observations, (actions,), (t,)), out_axes=((None, None), 0)
    )(tangents.astype(actions.dtype))
    obs_dim = obs.shape[-1]

    def by_block(x):
        """[horizon, ...] -> [count, period, ...], zero past the horizon."""
        x = jnp.pad(x, [(0, padded - horizon)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(count, period, *x.shape[1:])

    # dz_t/da for z_t = (s_{t+1}, a_t), over the columns of t's block: the rollout's Jacobian
    # stacked on the selector of a_t.
    d_obs = by_block(jnp.moveaxis(d_obs, 0, -1))  # (count, period, obs_dim, columns)
    d_act = jnp.broadcast_to(
        jnp.eye(columns, dtype=actions.dtype).reshape(period, act_dim, columns),
        (count, period, act_dim, columns),
    )
    dz = jnp.concatenate([d_obs, d_act], axis=2)
    z = by_block(jnp.concatenate([obs, actions], axis=1))
    live = by_block(active > 0)

    def reward_of_z(z_t):
        return reward_fn(z_t[:obs_dim], z_t[obs_dim:])

    rewards, reward_grads, reward_hessians = reward_derivatives(reward_of_z, z)
    # Selects, not products, for the steps after termination: their states may be non-finite.
    rewards = jnp.where(live, rewards, 0.0)
    reward_grads = jnp.where(live[..., None], reward_grads, 0.0)
    curvature = jnp.where(live[..., None, None], -reward_hessians, 0.0)
    dz = jnp.where(live[..., None, None], dz, 0.0)
    eigenvalues, eigenvectors = jnp.linalg.eigh(curvature)
    # (-d2r/dz2)_+ = L L^T with the negative eigenvalues dropped; B stacks L_t^T dz_t/da.
    roots = eigenvectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))[..., None, :]
    blocks = jnp.einsum("bwij,bwik->bwjk", roots, dz).reshape(count, -1, columns)
    gradient = jnp.einsum("bwi,bwik->bk", reward_grads, dz).reshape(padded, act_dim)[:horizon]
    real = (jnp.arange(count)[:, None] * period + step[None, :]) < horizon
    return GaussNewton(jnp.sum(rewards), gradient.reshape(-1), blocks, real)


def gauss_newton_factor(
    env: Env,
    state: State,
    actions: Float[Array, "horizon act_dim"],
    *,
    reward_fn: RewardFn | None = None,
    gradient_window: int | None = None,
) -> tuple[Float[Array, ""], Float[Array, " n"], Float[Array, "m n"]]:
    """V(a), dV/da (flattened, n = horizon * act_dim) and B with B^T B the Gauss-Newton
    matrix, B dense (see `gauss_newton` for its blocks)."""
    gn = gauss_newton(env, state, actions, reward_fn=reward_fn, gradient_window=gradient_window)
    return gn.value, gn.gradient, gn.dense_factor()


def gauss_newton_matrix(
    env: Env,
    state: State,
    actions: Float[Array, "horizon act_dim"],
    *,
    reward_fn: RewardFn | None = None,
    gradient_window: int | None = None,
) -> Float[Array, "n n"]:
    """The Gauss-Newton approximation of -d2V/da2 (n = horizon * act_dim), PSD by construction."""
    _, _, factor = gauss_newton_factor(
        env, state, actions, reward_fn=reward_fn, gradient_window=gradient_window
    )
    return factor.T @ factor


def newton_direction(gn: GaussNewton, damping: float) -> Float[Array, " n"]:
    """(H + damping * mean(diag H) * I)^-1 dV/da, one Cholesky per block of H.

    B is divided by its largest entry first: through an unstable rollout ds/da reaches 1e10
    and (ds/da)^2 would overflow float32, while the solution is invariant to that scale. The
    damping is relative to the mean curvature over the actions, so one `damping` suits any
    task's scale; padding columns, whose curvature and gradient are zero, get the damping
    alone and a zero step.
    """
    count, _, columns = gn.blocks.shape
    n = gn.gradient.shape[0]
    scale = jnp.max(jnp.abs(gn.blocks))
    scale = jnp.where(scale > 0, scale, 1.0)
    b = gn.blocks / scale
    matrices = jnp.einsum("bri,brj->bij", b, b)
    diagonal = jnp.diagonal(matrices, axis1=1, axis2=2)
    mean_curvature = jnp.sum(jnp.where(gn.real, diagonal, 0.0)) / jnp.sum(gn.real)
    matrices = matrices + damping * mean_curvature * jnp.eye(columns, dtype=matrices.dtype)
    gradient = jnp.pad(gn.gradient, (0, count * columns - n)).reshape(count, columns)
    steps = jax.vmap(lambda m, g: jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(m), True), g))(
        matrices, gradient / scale**2
    )
    return steps.reshape(-1)[:n]


def newton_step(
    env: Env,
    state: State,
    actions: Float[Array, "horizon act_dim"],
    *,
    damping: float,
    reward_fn: RewardFn | None = None,
    gradient_window: int | None = None,
) -> tuple[Float[Array, ""], Float[Array, "horizon act_dim"], Float[Array, "horizon act_dim"]]:
    """V(a), dV/da and the damped Gauss-Newton direction, shaped like the actions."""
    gn = gauss_newton(env, state, actions, reward_fn=reward_fn, gradient_window=gradient_window)
    direction = newton_direction(gn, damping)
    return gn.value, gn.gradient.reshape(actions.shape), direction.reshape(actions.shape)


def first_order_direction(
    gradient: Float[Array, "horizon act_dim"], normalization: str, max_norm: float
) -> Float[Array, "horizon act_dim"]:
    """dV/da, rescaled so that the step-size grid means the same thing on every trajectory.

    `rms`: unit root-mean-square per action, so alpha is the typical change of an action;
    `clip`: norm clipped at `max_norm`; `none`: the raw gradient, whose norm spans many orders
    of magnitude through an unstable rollout.
    """
    if normalization == "rms":
        rms = jnp.sqrt(jnp.mean(gradient**2))
        return gradient / jnp.where(rms > 0, rms, 1.0)
    if normalization == "clip":
        norm = jnp.linalg.norm(gradient)
        return gradient * jnp.minimum(1.0, max_norm / jnp.where(norm > 0, norm, 1.0))
    if normalization == "none":
        return gradient
    raise ValueError(
        f"gradient normalization must be one of {GRADIENT_NORMALIZATIONS}, got {normalization!r}"
    )


@struct.dataclass
class LineSearchResult:
    actions: Float[Array, "k horizon act_dim"]
    """The best candidate where it strictly improves the return, else the input actions."""
    value: Float[Array, " k"]
    step_size: Float[Array, " k"]
    """The accepted alpha, 0 where the actions were kept."""
    accepted: Bool[Array, " k"]
    observations: Float[Array, "k horizon+1 obs_dim"]
    """The states the accepted candidate visits (NaN rows where none was accepted)."""
    active: Float[Array, "k horizon"]
    """The accepted candidate's steps before its episode ended (0 where none was accepted)."""


def best_candidate(
    returns: Float[Array, "k m"], candidates: Any
) -> tuple[jax.Array, Float[Array, " k"], Any]:
    """Per trajectory (axis 0), the candidate (axis 1) with the highest finite return: its
    index, its return (-inf where none is finite) and `candidates` (a pytree of arrays shaped
    [k, m, ...]) at it."""
    returns = jnp.where(jnp.isfinite(returns), returns, -jnp.inf)
    best = jnp.argmax(returns, axis=1)

    def pick(x):
        return jnp.take_along_axis(x, best.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]

    return best, pick(returns), jax.tree.map(pick, candidates)


def line_search(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    direction: Float[Array, "k horizon act_dim"],
    value: Float[Array, " k"],
    step_sizes: Float[Array, " m"],
    *,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
) -> LineSearchResult:
    """Per trajectory, the best of the candidates clip(a + alpha_j d), if it is better than a.

    All k x m candidates clip(a + alpha_j d) are rolled out in one vmapped rollout. A
    trajectory takes its best candidate only if that return is finite and strictly above
    `value`; otherwise it keeps `actions`, so no trajectory ever gets worse.
    """
    low, high = action_bounds
    candidates = jnp.clip(
        actions[:, None] + step_sizes[None, :, None, None] * direction[:, None], low, high
    )

    def candidate_rollouts(state, candidates_of_state):
        episodes = jax.vmap(lambda a: episode_of_actions(env, state, a))(candidates_of_state)
        return episodes.value, episodes.observations, episodes.active

    returns, observations, active = jax.vmap(candidate_rollouts)(states, candidates)
    best, best_return, (best_actions, best_observations, best_active) = best_candidate(
        returns, (candidates, observations, active)
    )
    accepted = best_return > value
    return LineSearchResult(
        actions=jnp.where(accepted[:, None, None], best_actions, jnp.clip(actions, low, high)),
        value=jnp.where(accepted, best_return, value),
        step_size=jnp.where(accepted, step_sizes[best], 0.0),
        accepted=accepted,
        observations=jnp.where(accepted[:, None, None], best_observations, jnp.nan),
        active=jnp.where(accepted[:, None], best_active, 0.0),
    )


StepSizeSearch = Callable[[Float[Array, "k horizon act_dim"], Float[Array, " k"]], LineSearchResult]
"""(direction, value) -> per trajectory, the step taken along `direction` from the actions and
whether it beats `value` (see `line_search`; HDS's simulated annealing is the other one). A
trajectory whose direction was not finite gets a zero direction."""


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


def _all_active(actions: jax.Array, active: jax.Array | None) -> jax.Array:
    """`active`, or every step of `actions` where it is None."""
    return jnp.ones(actions.shape[:2], actions.dtype) if active is None else active
