"""Action improvement, PODS step 2: one improvement step of k action sequences.

An open-loop step moves each trajectory's actions along a direction d from the derivatives of
its return (`pods.derivatives`): first order d = dV/da (optionally normalized or clipped),
second order d = H^-1 dV/da with H the damped Gauss-Newton matrix. A step-size search picks
alpha per trajectory (`pods.step_size`): PODS's batched line search over a geometric grid, or
HDS's simulated annealing. Per trajectory, a' = clip(a + alpha d) replaces the actions only if
its return is strictly higher; a trajectory whose direction is not finite is rejected and
counted, and keeps its actions. With feedback, the step is an iLQR step instead
(`pods.feedback`).

`make_improvement_step(config, step_sizes)` builds the step a config asks for, in the one form
PODS and HDS call it; `improve_actions` and `improve_actions_annealed` are the open-loop
steps with their settings as keywords. An epoch's steps 1-2 over a batch (its rollouts and
every improvement step) are one `Improvement`, which distillation reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State
from flax import struct
from jaxtyping import Array, Bool, Float

from pods.config import HDSConfig, PODSConfig
from pods.derivatives import RewardFn, action_gradient, first_order_direction, newton_step
from pods.feedback import improve_with_feedback
from pods.rollout import Episode
from pods.step_size import (
    AnnealingSettings,
    ImprovementStep,
    StepSizeSearch,
    _all_active,
    searched_by_annealing,
    searched_on_grid,
)


@dataclasses.dataclass(frozen=True)
class DirectionSettings:
    """How an open-loop step makes its direction, and the bounds its actions are clipped to.
    Static and hashable: a jitted function closes over it (or takes it as a static argument)."""

    order: int = 1
    """1: the gradient dV/da; 2: the damped Gauss-Newton step H^-1 dV/da."""
    gradient_normalization: str = "rms"
    """First order: `rms`, `clip` or `none` (`pods.derivatives.first_order_direction`)."""
    max_gradient_norm: float = 1.0
    """The threshold of `gradient_normalization="clip"`."""
    damping: float = 1e-3
    """Second order: Levenberg damping, relative to the mean curvature
    (`pods.derivatives.newton_direction`)."""
    gradient_window: int | None = None
    """Stop the gradient through the state every this many steps (None: never)."""
    reward_fn: RewardFn | None = None
    """Second order: r(s_{t+1}, a_t); None uses the env's `task_reward`."""
    action_bounds: tuple[float, float] = (-1.0, 1.0)
    """The bounds every candidate's actions are clipped to."""

    @classmethod
    def of(cls, config: PODSConfig) -> DirectionSettings:
        """The settings `config` asks for (its env's reward and the default bounds)."""
        return cls(
            order=config.order,
            gradient_normalization=config.gradient_normalization,
            max_gradient_norm=config.max_gradient_norm,
            damping=config.damping,
            gradient_window=config.gradient_window,
        )


SearchStep = Callable[[Env, State, jax.Array, jax.Array, jax.Array, jax.Array], ImprovementStep]
"""(env, states, actions, observations, active, key) -> one improvement step of every
trajectory (`active`: the steps before each episode ended)."""


def make_improvement_step(config: PODSConfig, step_sizes: Float[Array, " m"]) -> SearchStep:
    """PODS step 2 as a `SearchStep`, the one `config` asks for: with `feedback`, an iLQR step
    whose closed-loop line search runs over `step_sizes`; else the config's first- or
    second-order direction, its step size from the line search over `step_sizes` or, for an
    `HDSConfig` with `step_size_search="annealing"`, from simulated annealing (the step's
    key seeds the chains)."""
    settings = DirectionSettings.of(config)
    if config.feedback:

        def feedback_step(env, states, actions, observations, active, _key) -> ImprovementStep:
            return improve_with_feedback(
                env,
                states,
                actions,
                observations,
                step_sizes,
                damping=settings.damping,
                gradient_window=settings.gradient_window,
                reward_fn=settings.reward_fn,
                action_bounds=settings.action_bounds,
                active=active,
            )

        return feedback_step

    if isinstance(config, HDSConfig) and config.step_size_search == "annealing":
        annealing = AnnealingSettings(
            step_size_min=config.step_size_min,
            step_size_max=config.step_size_max,
            iterations=config.annealing_iterations,
            initial_temperature=config.annealing_temperature,
            cooling=config.annealing_cooling,
            proposal_scale=config.annealing_proposal_scale,
        )

        def search_of(env, states, actions, key) -> StepSizeSearch:
            return searched_by_annealing(
                env, states, actions, key, annealing, settings.action_bounds
            )

    else:

        def search_of(env, states, actions, _key) -> StepSizeSearch:
            return searched_on_grid(env, states, actions, step_sizes, settings.action_bounds)

    def open_loop_step(env, states, actions, observations, active, key) -> ImprovementStep:
        search = search_of(env, states, actions, key)
        return improve_along_direction(
            env, states, actions, observations, search, settings, active=active
        )

    return open_loop_step


def improve_actions(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    observations: Float[Array, "k horizon+1 obs_dim"],
    step_sizes: Float[Array, " m"],
    *,
    active: Float[Array, "k horizon"] | None = None,
    **settings: Any,
) -> ImprovementStep:
    """One first- or second-order improvement step with a batched line search, for k rollouts;
    `settings` are `DirectionSettings`'s fields (its defaults where not given).

    `observations` (and `active`, the steps before each episode ended; all of them if None)
    are those of the rollouts of `actions` from `states`; they are returned for the
    trajectories the line search leaves alone, so that distillation can regress on the states
    each returned action sequence actually visits, while its episode runs.
    """
    direction = DirectionSettings(**settings)
    search = searched_on_grid(env, states, actions, step_sizes, direction.action_bounds)
    return improve_along_direction(
        env, states, actions, observations, search, direction, active=active
    )


def improve_actions_annealed(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    observations: Float[Array, "k horizon+1 obs_dim"],
    key: jax.Array,
    annealing: AnnealingSettings,
    *,
    active: Float[Array, "k horizon"] | None = None,
    **settings: Any,
) -> ImprovementStep:
    """`improve_actions` with alpha from simulated annealing instead of the grid line search
    (`pods.step_size.searched_by_annealing`); `settings` are `DirectionSettings`'s fields."""
    direction = DirectionSettings(**settings)
    search = searched_by_annealing(env, states, actions, key, annealing, direction.action_bounds)
    return improve_along_direction(
        env, states, actions, observations, search, direction, active=active
    )


def improve_along_direction(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    observations: Float[Array, "k horizon+1 obs_dim"],
    step_size_search: StepSizeSearch,
    settings: DirectionSettings,
    *,
    active: Float[Array, "k horizon"] | None = None,
) -> ImprovementStep:
    """One improvement step for k rollouts, whatever chooses the step size.

    The direction (first order: the normalized gradient; second order: the damped
    Gauss-Newton step), the guard that rejects a trajectory whose direction is not finite,
    and the result; `step_size_search(direction, value)` picks alpha per trajectory.
    """
    window = settings.gradient_window
    if settings.order == 1:

        def direction_of(state, a):
            value, gradient = action_gradient(env, state, a, gradient_window=window)
            direction = first_order_direction(
                gradient, settings.gradient_normalization, settings.max_gradient_norm
            )
            return value, gradient, direction

    elif settings.order == 2:

        def direction_of(state, a):
            return newton_step(
                env,
                state,
                a,
                damping=settings.damping,
                reward_fn=settings.reward_fn,
                gradient_window=window,
            )

    else:
        raise ValueError(f"order must be 1 or 2, got {settings.order!r}")

    value, gradient, direction = jax.vmap(direction_of)(states, actions)
    finite = jax.vmap(_is_finite)(direction) & jax.vmap(_is_finite)(gradient) & jnp.isfinite(value)
    # A non-finite direction becomes zero: every candidate then replays `actions`, which
    # cannot beat `value` strictly, so the trajectory is rejected by the search itself.
    direction = jnp.where(finite[:, None, None], direction, 0.0)
    search = step_size_search(direction, value)
    accepted = search.accepted & finite
    kept = jnp.where(
        accepted[:, None, None], search.actions, jnp.clip(actions, *settings.action_bounds)
    )
    return ImprovementStep(
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


def _is_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


@struct.dataclass
class Improvement:
    """PODS steps 1-2 on a batch of k trajectories: what distillation and the metrics need."""

    data: Episode
    """The rollouts the actions were improved from (with exploration noise, if any)."""
    evaluation: Episode
    """The deterministic policy's rollouts from the same initial states."""
    steps: ImprovementStep
    """Every improvement step, stacked on a leading axis (trajectories second)."""
    selected: Bool[Array, " k"]
    """The trajectories to distill: the elite of the batch (see `pods.distill.elite`)."""
    noise: jax.Array
    """The exploration noise level used."""

    @property
    def improved(self) -> ImprovementStep:
        """The last improvement step."""
        return jax.tree.map(lambda x: x[-1], self.steps)

    @staticmethod
    def concatenate(parts: list[Improvement]) -> Improvement:
        """The batches of `parts` as one, e.g. HDS's two env groups (each its own elite)."""

        def joined(field: str, axis: int = 0):
            leaves = [getattr(part, field) for part in parts]
            return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *leaves)

        return Improvement(
            data=joined("data"),
            evaluation=joined("evaluation"),
            steps=joined("steps", axis=1),
            selected=joined("selected"),
            noise=parts[0].noise,
        )


__all__ = [
    "DirectionSettings",
    "Improvement",
    "SearchStep",
    "improve_actions",
    "improve_actions_annealed",
    "improve_along_direction",
    "make_improvement_step",
]
