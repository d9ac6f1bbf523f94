"""The step size of an improvement step: the searches that pick alpha, and what a step returns.

Along a direction d, each trajectory's candidates clip(a + alpha d) are rolled out, and a
trajectory takes its best candidate only if that return is finite and strictly above V(a):
no trajectory ever gets worse. PODS searches a geometric grid of alphas in one batched
rollout (`line_search`, as a `StepSizeSearch`: `searched_on_grid`); HDS anneals alpha, one
chain per trajectory (`anneal_step_size`, `searched_by_annealing`). A search returns a
`LineSearchResult`, an improvement step an `ImprovementStep`: both a `StepTaken`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State
from flax import struct
from jaxtyping import Array, Bool, Float

from pods.rollout import episode_of_actions


@struct.dataclass
class StepTaken:
    """What a step did to each of k trajectories: the fields a step-size search's result and an
    improvement step's share."""

    actions: Float[Array, "k horizon act_dim"]
    """The step's actions where it was accepted (it strictly raised the return), else the
    input actions (clipped to the bounds)."""
    step_size: Float[Array, " k"]
    """The accepted alpha, 0 where the actions were kept."""
    accepted: Bool[Array, " k"]
    observations: Float[Array, "k horizon+1 obs_dim"]
    """The states the accepted step's actions visit; where none was accepted, see the
    subclass."""
    active: Float[Array, "k horizon"]
    """1 for the steps of `actions` taken before their episode ended (see `pods.rollout`):
    distillation learns only from those."""


@struct.dataclass
class LineSearchResult(StepTaken):
    """A step-size search's outcome along one direction per trajectory (`line_search`, or
    annealing): where no candidate was accepted, `observations` are NaN rows and `active` 0."""

    value: Float[Array, " k"]
    """The return `actions` reach: the accepted candidate's, else the `value` it had to beat."""


@struct.dataclass
class ImprovementStep(StepTaken):
    """The outcome of one improvement step on a batch of k trajectories: a step-size search's
    along the step's direction, with the direction's diagnostics. Where the step was
    rejected, `observations` and `active` are those of the rollout of the input actions."""

    value: Float[Array, " k"]
    """V(a), the return before the step."""
    value_improved: Float[Array, " k"]
    """V(a'), never below `value` for a finite `value`."""
    gradient_norm: Float[Array, " k"]
    """||dV/da||, before any normalization."""
    nonfinite: Bool[Array, " k"]
    """The direction (gradient or Newton step) was not finite: the trajectory was rejected."""
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


@dataclasses.dataclass(frozen=True)
class AnnealingSettings:
    """How `anneal_step_size` searches alpha. Static and hashable, as `DirectionSettings`."""

    step_size_min: float
    """The lower bound of alpha."""
    step_size_max: float
    """The upper bound of alpha; the chains start at the bounds' geometric midpoint."""
    iterations: int
    """Metropolis steps per chain."""
    initial_temperature: float
    """T_0; step i's temperature is T_0 * cooling^i."""
    cooling: float
    """The temperature's factor per step."""
    proposal_scale: float
    """The standard deviation of a proposal's Gaussian step on log(alpha)."""


@struct.dataclass
class AnnealingResult:
    """The best step size each chain visited, and what the chains did on the way."""

    step_size: Float[Array, " k"]
    """The best alpha seen (the start included)."""
    value: Float[Array, " k"]
    """The objective at `step_size`; -inf where every evaluation was non-finite."""
    aux: Any
    """The objective's auxiliary output at `step_size` (leading axis k)."""
    start_value: Float[Array, " k"]
    """The objective at the chains' start, the geometric midpoint of the bounds."""
    proposal_value: Float[Array, "iterations k"]
    """The objective at each proposal (-inf where non-finite)."""
    worse: Bool[Array, "iterations k"]
    """The proposal was strictly worse than the chain's current point."""
    acceptance_probability: Float[Array, "iterations k"]
    """min(1, exp(delta / T_i)), delta = proposal - current."""
    moved: Bool[Array, "iterations k"]
    """The chain moved to the proposal."""


def anneal_step_size(
    objective: Callable[[Float[Array, " k"]], tuple[Float[Array, " k"], Any]],
    key: jax.Array,
    k: int,
    settings: AnnealingSettings,
    *,
    dtype: Any = jnp.float32,
) -> AnnealingResult:
    """k independent annealing chains maximizing `objective` over alpha in
    [settings.step_size_min, settings.step_size_max].

    `objective(alphas)` evaluates all k chains' points at once (one batched rollout) and
    returns (values, aux). Each chain starts at the geometric midpoint of the bounds and takes
    `settings.iterations` Metropolis steps: a Gaussian random walk on log(alpha), clipped to
    the bounds;
    a proposal better than the current point is always taken, a worse one with probability
    exp(delta / T_i), T_i = initial_temperature * cooling^i. Non-finite values count as -inf
    (never moved to). The best point seen is returned, not the chain's last one.
    """
    log_low, log_high = math.log(settings.step_size_min), math.log(settings.step_size_max)
    log_alpha = jnp.full((k,), 0.5 * (log_low + log_high), dtype)

    def evaluate(log_alpha):
        values, aux = objective(jnp.exp(log_alpha))
        return jnp.where(jnp.isfinite(values), values, -jnp.inf), aux

    value, aux = evaluate(log_alpha)

    def metropolis_step(carry, x):
        log_alpha, value, best_log_alpha, best_value, best_aux = carry
        step_key, temperature = x
        key_proposal, key_accept = jax.random.split(step_key)
        proposal = jnp.clip(
            log_alpha + settings.proposal_scale * jax.random.normal(key_proposal, (k,), dtype),
            log_low,
            log_high,
        )
        proposal_value, proposal_aux = evaluate(proposal)
        delta = proposal_value - value
        # delta is NaN only where both are -inf: nothing to gain by moving.
        probability = jnp.where(delta >= 0, 1.0, jnp.exp(delta / temperature))
        probability = jnp.where(jnp.isnan(delta), 0.0, probability).astype(dtype)
        moved = jax.random.uniform(key_accept, (k,), dtype) < probability
        better = proposal_value > best_value

        def pick(mask, new, old):
            return jax.tree.map(
                lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o),
                new,
                old,
            )

        carry = (
            jnp.where(moved, proposal, log_alpha),
            jnp.where(moved, proposal_value, value),
            jnp.where(better, proposal, best_log_alpha),
            jnp.where(better, proposal_value, best_value),
            pick(better, proposal_aux, best_aux),
        )
        return carry, (delta < 0, probability, moved, proposal_value)

    steps = jnp.arange(settings.iterations, dtype=dtype)
    temperatures = settings.initial_temperature * settings.cooling**steps
    (_, _, best_log_alpha, best_value, best_aux), trace = jax.lax.scan(
        metropolis_step,
        (log_alpha, value, log_alpha, value, aux),
        (jax.random.split(key, settings.iterations), temperatures),
    )
    worse, probability, moved, proposal_value = trace
    return AnnealingResult(
        step_size=jnp.exp(best_log_alpha),
        value=best_value,
        aux=best_aux,
        start_value=value,
        proposal_value=proposal_value,
        worse=worse,
        acceptance_probability=probability,
        moved=moved,
    )


def searched_on_grid(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    step_sizes: Float[Array, " m"],
    action_bounds: tuple[float, float] = (-1.0, 1.0),
) -> StepSizeSearch:
    """The `StepSizeSearch` of `actions` from `states`: `line_search` over `step_sizes`."""

    def search(direction, value) -> LineSearchResult:
        return line_search(
            env, states, actions, direction, value, step_sizes, action_bounds=action_bounds
        )

    return search


def searched_by_annealing(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    key: jax.Array,
    settings: AnnealingSettings,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
) -> StepSizeSearch:
    """The `StepSizeSearch` of `actions` from `states` by simulated annealing over alpha in
    the `settings`' bounds, one chain per trajectory (`anneal_step_size`).

    One chain per trajectory: each trajectory's return is its own function of alpha (their
    gradients span orders of magnitude through unstable rollouts, the reason the line search is
    per trajectory too), a shared alpha would let one diverging trajectory veto every other's
    step, and k chains cost the same batched rollout per proposal as one. As with the line
    search, a trajectory takes the best alpha seen only if its return is finite and strictly
    above `value`.
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

        annealed = anneal_step_size(objective, key, actions.shape[0], settings, dtype=actions.dtype)
        observations_seen, active_seen = annealed.aux
        return LineSearchResult(
            actions=candidates(annealed.step_size),
            value=annealed.value,
            step_size=annealed.step_size,
            accepted=annealed.value > value,
            observations=observations_seen,
            active=active_seen,
        )

    return search


def _all_active(actions: jax.Array, active: jax.Array | None) -> jax.Array:
    """`active`, or every step of `actions` where it is None."""
    return jnp.ones(actions.shape[:2], actions.dtype) if active is None else active


__all__ = [
    "AnnealingResult",
    "AnnealingSettings",
    "ImprovementStep",
    "LineSearchResult",
    "StepSizeSearch",
    "StepTaken",
    "anneal_step_size",
    "best_candidate",
    "line_search",
    "searched_by_annealing",
    "searched_on_grid",
    "step_size_grid",
]
