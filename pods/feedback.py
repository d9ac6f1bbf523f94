"""Action improvement with feedback: an iLQR step per trajectory (`PODSConfig.feedback`).

The second-order step of `pods.improve` moves every action of a sequence at once and replays
the new sequence open loop. On a chaotic system (the double cart-pole) a change early in the
episode takes the states far from those the later actions were computed for, and from some
point no step size along the direction improves the whole return (README, "The double
cart-pole"). Here each trajectory gets an iLQR step instead (Li & Todorov 2004, with Tassa,
Mansard & Todorov 2014's clamping of the controls at their bounds):

1. linearize the env along the trajectory, dx_{t+1} = A_t dx_t + B_t du_t, with x the
   floating leaves of the env's state (`pods.rollout.state_vector`): one forward-mode
   Jacobian per step, every step at once (they are independent given the trajectory);
2. model the return with the Gauss-Newton matrix of `pods.improve`: the reward's Hessian in
   z_t = (s_{t+1}, a_t) projected on the PSD cone, pulled back through dz_t/d(x_t, a_t);
3. a backward Riccati pass gives each step a feedforward change k_t and gains K_t, with
   Levenberg damping relative to the control curvature (as `pods.improve`'s `damping`);
   a step whose a_t + k_t leaves the bounds is clamped there, with no gains on it;
4. the line search rolls every candidate alpha out closed loop,
   a_t' = clip(a_t + alpha k_t + K_t (x_t' - x_t)), all k x m rollouts in one `vmap`, and per
   trajectory keeps the best only if its return is finite and strictly above V(a).

The actions returned are those the closed loop took, with the states they visited:
distillation regresses the policy on a feedback law's actions at its own states. The law's
action at the states the step started from, a + alpha k, is returned too (`anchor_actions`):
`distill_states="both"` regresses on both, so the policy sees how the law's action changes
with the state, not only what it does along one trajectory. A gradient
window W applies here too: the backward pass restarts every W steps, so a step's change
answers only for the rewards of its own window, as in the open-loop steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State
from flax import struct
from jaxtyping import Array, Bool, Float

from pods.derivatives import RewardFn, reward_derivatives
from pods.rollout import (
    episode_of_feedback,
    state_vector,
    states_of_actions,
    with_state_vector,
)
from pods.step_size import ImprovementStep, _all_active, best_candidate


@struct.dataclass
class Linearization:
    """One trajectory's local model, step by step (leading axis: time)."""

    dynamics_state: Float[Array, "horizon n n"]
    """A_t = dx_{t+1}/dx_t."""
    dynamics_action: Float[Array, "horizon n m"]
    """B_t = dx_{t+1}/da_t."""
    cost_gradient: Float[Array, "horizon n+m"]
    """d(-r_t)/d(x_t, a_t)."""
    cost_curvature: Float[Array, "horizon n+m n+m"]
    """The Gauss-Newton matrix of -r_t in (x_t, a_t), PSD."""
    nominal: Float[Array, "horizon n"]
    """x_t, where the trajectory was linearized."""
    value: Float[Array, ""]
    """V(a), the return of the trajectory (steps after its episode ended masked out)."""


def linearize(
    env: Env,
    state: State,
    actions: Float[Array, "horizon act_dim"],
    reward_fn: RewardFn,
    active: Float[Array, " horizon"],
) -> Linearization:
    """A_t, B_t and the Gauss-Newton model of -r_t along the replay of `actions` from `state`.

    Each step's Jacobian comes from n + m forward-mode tangents of one env step. The steps
    after the episode ended (`active` 0) get a zero model: their rewards do not count, and
    their states may not be finite."""
    states = states_of_actions(env, state, actions)

    def step_model(state_t, action_t):
        x = state_vector(state_t)
        n, m = x.shape[0], action_t.shape[0]

        def step(x, a):
            arrived = env.step(with_state_vector(state_t, x), a)
            return state_vector(arrived), arrived.obs

        basis = jnp.eye(n + m, dtype=x.dtype)
        (_, obs), (dx_next, d_obs) = jax.vmap(
            lambda v: jax.jvp(step, (x, action_t), (v[:n], v[n:])), out_axes=(None, 0)
        )(basis)
        obs_dim = obs.shape[0]
        # z = (s_{t+1}, a_t) as a function of (x_t, a_t): the observation's Jacobian stacked
        # on the selector of a_t.
        dz = jnp.concatenate([d_obs.T, basis[n:]], axis=0)  # (obs_dim + m, n + m)

        def reward_of_z(z):
            return reward_fn(z[:obs_dim], z[obs_dim:])

        z = jnp.concatenate([obs, action_t])
        reward, reward_gradient, reward_hessian = reward_derivatives(reward_of_z, z)
        eigenvalues, eigenvectors = jnp.linalg.eigh(-reward_hessian)
        roots = eigenvectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))[None, :]
        factor = roots.T @ dz
        return x, dx_next[:n].T, dx_next[n:].T, -dz.T @ reward_gradient, factor.T @ factor, reward

    x, a_matrix, b_matrix, gradient, curvature, rewards = jax.vmap(step_model)(states, actions)
    live = active > 0

    def masked(array):
        return jnp.where(live.reshape((-1,) + (1,) * (array.ndim - 1)), array, 0.0)

    return Linearization(
        dynamics_state=masked(a_matrix),
        dynamics_action=masked(b_matrix),
        cost_gradient=masked(gradient),
        cost_curvature=masked(curvature),
        nominal=x,
        value=jnp.sum(masked(rewards)),
    )


@struct.dataclass
class FeedbackLaw:
    """The backward pass's result for one trajectory."""

    feedforward: Float[Array, "horizon m"]
    """k_t: the change of a_t at alpha = 1 on the nominal states."""
    gains: Float[Array, "horizon m n"]
    """K_t: the change of a_t per unit of x_t - nominal_t."""
    gradient: Float[Array, "horizon m"]
    """dV/da_t of the open-loop return (the same windows), for the gradient-norm metric."""


def backward_pass(
    model: Linearization,
    actions: Float[Array, "horizon m"],
    *,
    damping: float,
    gradient_window: int | None = None,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
) -> FeedbackLaw:
    """The Riccati recursion of iLQR on the Gauss-Newton model (minimizing the cost -V).

    Q_uu gets `damping` times its mean diagonal added before it is solved (plus a floor of
    1e-12 for a control that costs nothing), so one value suits any task's scale. A control
    whose a_t + k_t would leave `action_bounds` is clamped at the bound and gets no gains.
    The value update uses the (clamped) k and K in the general form, so it stays the cost of
    the law actually applied.
    """
    low, high = action_bounds
    horizon, n = model.nominal.shape
    m = actions.shape[1]
    window = gradient_window or 0

    def step(carry, inputs):
        value_gradient, value_hessian, costate = carry
        t, a_matrix, b_matrix, gradient, curvature, action = inputs
        if window:
            # The window that starts at t + 1 answers for none of the rewards before it.
            cut = (t + 1) % window == 0
            value_gradient = jnp.where(cut, 0.0, value_gradient)
            value_hessian = jnp.where(cut, 0.0, value_hessian)
            costate = jnp.where(cut, 0.0, costate)
        l_x, l_u = gradient[:n], gradient[n:]
        l_xx, l_ux, l_uu = curvature[:n, :n], curvature[n:, :n], curvature[n:, n:]
        q_x = l_x + a_matrix.T @ value_gradient
        q_u = l_u + b_matrix.T @ value_gradient
        q_xx = l_xx + a_matrix.T @ value_hessian @ a_matrix
        q_ux = l_ux + b_matrix.T @ value_hessian @ a_matrix
        q_uu = l_uu + b_matrix.T @ value_hessian @ b_matrix
        q_uu = 0.5 * (q_uu + q_uu.T)
        scale = jnp.maximum(jnp.mean(jnp.diagonal(q_uu)), 0.0)
        regularized = q_uu + (damping * scale + 1e-12) * jnp.eye(m, dtype=q_uu.dtype)
        factor = jnp.linalg.cholesky(regularized)
        solve = lambda b: jax.scipy.linalg.cho_solve((factor, True), b)  # noqa: E731
        feedforward = -solve(q_u)
        gains = -solve(q_ux)
        target = action + feedforward
        clamped = (target > high) | (target < low)
        feedforward = jnp.clip(target, low, high) - action
        gains = jnp.where(clamped[:, None], 0.0, gains)
        value_gradient = q_x + gains.T @ q_uu @ feedforward + gains.T @ q_u + q_ux.T @ feedforward
        value_hessian = q_xx + gains.T @ q_uu @ gains + gains.T @ q_ux + q_ux.T @ gains
        value_hessian = 0.5 * (value_hessian + value_hessian.T)
        # The open-loop costate: d(cost to go)/dx_t with the later actions held.
        open_loop_gradient = -(l_u + b_matrix.T @ costate)
        costate = l_x + a_matrix.T @ costate
        return (value_gradient, value_hessian, costate), (feedforward, gains, open_loop_gradient)

    dtype = model.nominal.dtype
    start = (jnp.zeros(n, dtype), jnp.zeros((n, n), dtype), jnp.zeros(n, dtype))
    inputs = (
        jnp.arange(horizon),
        model.dynamics_state,
        model.dynamics_action,
        model.cost_gradient,
        model.cost_curvature,
        actions,
    )
    _, (feedforward, gains, gradient) = jax.lax.scan(step, start, inputs, reverse=True)
    return FeedbackLaw(feedforward, gains, gradient)


def improve_with_feedback(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    observations: Float[Array, "k horizon+1 obs_dim"],
    step_sizes: Float[Array, " s"],
    *,
    damping: float = 1e-3,
    gradient_window: int | None = None,
    reward_fn: RewardFn | None = None,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
    active: Float[Array, "k horizon"] | None = None,
) -> ImprovementStep:
    """One iLQR step with a batched closed-loop line search, for k rollouts (module
    docstring). Arguments and result as `pods.improve.improve_actions`; `step_size` is the
    accepted alpha, the fraction of the feedforward change."""
    reward_fn = reward_fn if reward_fn is not None else getattr(env, "task_reward", None)
    if reward_fn is None:
        raise ValueError("feedback improvement needs reward_fn(obs, action) or env.task_reward")
    low, high = action_bounds
    actions = jnp.clip(actions, low, high)
    active = _all_active(actions, active)

    def law_of(state, a, live):
        model = linearize(env, state, a, reward_fn, live)
        law = backward_pass(
            model, a, damping=damping, gradient_window=gradient_window, action_bounds=action_bounds
        )
        return model.value, model.nominal, law

    value, nominal, law = jax.vmap(law_of)(states, actions, active)
    finite = (
        jnp.isfinite(value)
        & _all_finite(law.feedforward)
        & _all_finite(law.gains)
        & _all_finite(law.gradient)
    )
    # A law that is not finite becomes "keep the actions": every candidate replays them and
    # cannot beat V(a) strictly, so the trajectory is rejected by the search itself.
    feedforward = jnp.where(finite[:, None, None], law.feedforward, 0.0)
    gains = jnp.where(finite[:, None, None, None], law.gains, 0.0)

    def candidates(state, a, k, gain, x_bar):
        def one(alpha):
            return episode_of_feedback(
                env, state, a + alpha * k, gain, x_bar, action_bounds=action_bounds
            )

        return jax.vmap(one)(step_sizes)

    episodes = jax.vmap(candidates)(states, actions, feedforward, gains, nominal)
    best, best_return, chosen = best_candidate(episodes.value, episodes)
    accepted = (best_return > value) & finite
    alpha = jnp.where(accepted, step_sizes[best], 0.0)
    return ImprovementStep(
        actions=jnp.where(accepted[:, None, None], chosen.actions, actions),
        value=value,
        value_improved=jnp.where(accepted, best_return, value),
        gradient_norm=jax.vmap(jnp.linalg.norm)(law.gradient),
        step_size=alpha,
        accepted=accepted,
        nonfinite=~finite,
        observations=jnp.where(accepted[:, None, None], chosen.observations, observations),
        active=jnp.where(accepted[:, None], chosen.active, active),
        anchor_actions=jnp.clip(actions + alpha[:, None, None] * feedforward, low, high),
    )


def _all_finite(x: jax.Array) -> Bool[Array, " k"]:
    return jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
