"""Sim-vs-real evaluation: returns on held-out initial states, the normalized real score and
the sim2real gap closure.

A task is *solved* from a start when every pole ends upright and stays there: within 0.2 rad
of upright over the last 50 steps (2.5 s) of a single-pole swing-up, the last 30 steps of a
double-pole one, and the whole episode of a balance task (`Solved`). The share of held-out
starts solved is reported beside the return: a return says how much, solved whether.

Every seed has two independent random streams: training draws only from the first, and
evaluation only from the second, so no policy is ever scored on an initial state (or a real
episode) it was trained on. `seed_streams` is the one place that splits them.

Scores, with R the mean return on `real` over the held-out initial states:

    score       = (R - R_random) / (R_oracle - R_random)          0 = random commands, 1 = oracle
    gap closure = (R - R_sim_only) / (R_oracle - R_sim_only)      0 = PODS trained in sim only,
                                                                  1 = the oracle
The oracle is PODS trained directly on the differentiable `real` testbed: fair here, because
`real` is a simulator, and it gives the ceiling a method working from real data could reach.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pods.rollout import Policy, reset_batch, trajectories_of_actions, trajectories_of_policy
from scoring import gap_closure, normalized_score
from sim2real.real_system import RealSystem

TRAIN_STREAM, EVAL_STREAM = 0, 1


def seed_streams(seed: int) -> tuple[jax.Array, jax.Array]:
    """(training key, evaluation key) of a seed: independent streams, never mixed."""
    key = jax.random.PRNGKey(seed)
    return jax.random.fold_in(key, TRAIN_STREAM), jax.random.fold_in(key, EVAL_STREAM)


@dataclasses.dataclass(frozen=True)
class Solved:
    """Whether a trajectory solved its task: every pole within `tolerance` of upright at each
    of the episode's last `window` steps (None: every step)."""

    n_poles: int
    window: int | None
    """Control steps at the end of the episode that must all be upright; None for all."""
    tolerance: float = 0.2
    """rad, on each pole's absolute angle."""

    SWINGUP_WINDOW = {1: 50, 2: 30}
    """Steps held upright that solve a swing-up, by number of poles: 2.5 s for one pole and
    1.5 s for two (the control period is 50 ms), whatever the episode's length."""

    @classmethod
    def of_task(cls, task: str, n_poles: int) -> Solved:
        if task == "balance":
            return cls(n_poles, None)
        return cls(n_poles, cls.SWINGUP_WINDOW[n_poles])

    def steps(self, horizon: int) -> int:
        """How many of the episode's last steps must be upright (at most all of them)."""
        return horizon if self.window is None else min(self.window, horizon)

    def __call__(self, observations: Any, valid: Any = None, *, xp: Any = jnp) -> Any:
        """[n] bool from observations [n, horizon + 1, obs] in the testbeds' layout (and the
        `valid` mask [n, horizon] of episodes that ended early: those are not solved)."""
        upright = self.max_deviation(observations, xp=xp) <= self.tolerance
        if valid is not None:
            upright = upright & xp.all(valid, axis=1)
        return upright

    def max_deviation(self, observations: Any, *, xp: Any = jnp) -> Any:
        """[n]: the largest angle from upright (rad) of any pole over the window's steps."""
        after = observations[:, 1:]
        window = self.steps(after.shape[1])
        return xp.max(self.lean(after[:, -window:], xp=xp), axis=(1, 2))

    def lean(self, observations: Any, *, xp: Any = jnp) -> Any:
        """[..., n_poles]: each pole's angle from upright (rad, in [0, pi]) in observations
        [..., obs] of the testbeds' layout, from its absolute angle."""
        cos = observations[..., 1 : 1 + 2 * self.n_poles : 2]
        sin = observations[..., 2 : 2 + 2 * self.n_poles : 2]
        absolute = xp.cumsum(xp.arctan2(sin, cos), axis=-1)
        return xp.abs(xp.arctan2(xp.sin(absolute), xp.cos(absolute)))


def held_from(lean: np.ndarray, tolerance: float) -> np.ndarray:
    """[n]: from lean [n, steps] (rad), the first step from which every later step is within
    `tolerance` (the number of steps where the last one is not): an episode of T steps whose
    last `window` must be upright is solved from a start exactly when T >= held_from + window."""
    outside = lean > tolerance
    steps = lean.shape[1]
    last_outside = steps - 1 - np.argmax(outside[:, ::-1], axis=1)
    return np.where(outside.any(axis=1), last_outside + 1, 0)


def solved_criterion(env: Any) -> Solved | None:
    """The `Solved` criterion of a testbed's task; None for an env that is no cart-pole."""
    if not (hasattr(env, "task") and hasattr(env, "n_poles")):
        return None
    return Solved.of_task(env.task, env.n_poles)


class Evaluation(NamedTuple):
    """Mean returns on one env over n held-out initial states, and what was solved."""

    policy: float
    """The deterministic policy's mean return."""
    random: float
    """Uniform random commands' mean return, from the same initial states."""
    observations: np.ndarray
    """[horizon + 1, obs_dim]: the policy's first trajectory (for an animation)."""
    solved: float = math.nan
    """The share of the initial states from which the policy solved the task (`Solved`)."""
    random_solved: float = math.nan
    """The share random commands solved from the same initial states (0, nearly always)."""
    returns: np.ndarray | None = None
    """[n]: the policy's return from each initial state (its spread, paired comparisons)."""
    solved_each: np.ndarray | None = None
    """[n] bool: whether the policy solved the task from each initial state."""

    @property
    def return_std(self) -> float:
        """The standard deviation of the return over the initial states."""
        return math.nan if self.returns is None else float(np.std(self.returns))


def held_out_starts(env: Any, key: jax.Array, num_trajectories: int) -> Any:
    """The initial states `evaluate` plays a policy from, for the evaluation key `key` (a
    seed's, `seed_streams(seed)[1]`, in `experiments.train`)."""
    return reset_batch(env, jax.random.split(key)[0], num_trajectories)


@functools.lru_cache(maxsize=32)
def _evaluator(
    env: Any, make_policy: Callable[[Any], Policy], num_trajectories: int, criterion: Solved
):
    """The jitted evaluation of one (env, policy family, batch): the parameters are an
    argument, not constants baked into the program, so every policy of the family reuses
    one compile (and the persistent cache serves other runs of the same shapes)."""

    @jax.jit
    def run(params, key):
        key_actions = jax.random.split(key)[1]
        states = held_out_starts(env, key, num_trajectories)
        horizon = env.episode_length
        shape = (num_trajectories, horizon, env.action_size)
        random_actions = jax.random.uniform(key_actions, shape, env.dtype, -1.0, 1.0)
        random = trajectories_of_actions(env, states, random_actions)
        learned = trajectories_of_policy(env, states, make_policy(params), horizon)
        if criterion is None:
            unsolved = jnp.full((num_trajectories,), jnp.nan, learned.value.dtype)
            solved, random_solved = unsolved, unsolved
        else:
            solved = criterion(learned.observations).astype(learned.value.dtype)
            random_solved = criterion(random.observations).astype(learned.value.dtype)
        return learned.value, random.value, learned.observations[0], solved, random_solved

    return run


def evaluate(
    env: Any,
    make_policy: Callable[[Any], Policy],
    params: Any,
    key: jax.Array,
    num_trajectories: int,
    *,
    criterion: Solved | None = None,
) -> Evaluation:
    """Mean returns of the policy `make_policy(params)` and of random commands over
    `num_trajectories` initial states drawn from `key`, for `env.episode_length` steps, and
    the share of them from which the policy solved the task (`criterion`, by default the
    testbed's own).

    `env` is a Brax env (all episodes in one jitted rollout) or a `RealSystem` (one step at a
    time: a gymnasium env, whose initial states come from its own reset, seeded by `key`).
    """
    if not (isinstance(num_trajectories, int) and num_trajectories > 0):
        raise ValueError(f"num_trajectories must be a positive integer, got {num_trajectories!r}")
    if criterion is None:
        criterion = solved_criterion(env)
    if isinstance(env, RealSystem):
        return _evaluate_real_system(env, make_policy, params, key, num_trajectories, criterion)
    run = _evaluator(env, make_policy, num_trajectories, criterion)
    returns, random_returns, observations, solved, random_solved = jax.device_get(run(params, key))
    return _evaluation(returns, random_returns, np.asarray(observations), solved, random_solved)


def _evaluation(returns, random_returns, observations, solved, random_solved) -> Evaluation:
    """An `Evaluation` of per-start returns and solved flags (NaN flags: no criterion)."""
    returns, solved = np.asarray(returns, np.float64), np.asarray(solved, np.float64)
    known = not np.any(np.isnan(solved))
    return Evaluation(
        float(np.mean(returns)),
        float(np.mean(random_returns)),
        observations,
        float(np.mean(solved)) if known else math.nan,
        float(np.mean(random_solved)) if known else math.nan,
        returns,
        solved.astype(bool) if known else None,
    )


def _evaluate_real_system(
    system: RealSystem,
    make_policy,
    params,
    key: jax.Array,
    num_trajectories: int,
    criterion: Solved,
) -> Evaluation:
    key_reset, key_actions = jax.random.split(key)
    horizon = system.episode_length
    shape = (num_trajectories, horizon, system.action_size)
    random_actions = np.asarray(jax.random.uniform(key_actions, shape, minval=-1.0, maxval=1.0))
    learned = system.collect(key_reset, num_trajectories, make_policy=make_policy, params=params)
    # `collect` resets episode i from split(split(key)[0], n)[i]; `play` from split(key, n)[i]:
    # the random commands start from the policy's initial states.
    random = system.play(jax.random.split(key_reset)[0], random_actions)
    n = (num_trajectories,)
    return _evaluation(
        np.sum(learned.rewards, axis=1),
        np.sum(random.rewards, axis=1),
        learned.observations[0],
        np.full(n, np.nan)
        if criterion is None
        else criterion(learned.observations, learned.valid, xp=np),
        np.full(n, np.nan)
        if criterion is None
        else criterion(random.observations, random.valid, xp=np),
    )


def evaluate_sim_and_real(
    make_policy: Callable[[Any], Policy],
    params: Any,
    sim: Any,
    real: Any,
    key: jax.Array,
    num_trajectories: int,
) -> dict[str, Evaluation]:
    """`evaluate` in `sim` and in `real` from the same key: the same held-out initial states
    (the variants share the initial-state distribution) and the same random commands. A
    `real` that is a gymnasium env behind a `RealSystem` draws its own initial states, from
    the same distribution where it implements the testbed's (the MuJoCo C engine does)."""
    criterion = solved_criterion(sim)
    return {
        "sim": evaluate(sim, make_policy, params, key, num_trajectories, criterion=criterion),
        "real": evaluate(real, make_policy, params, key, num_trajectories, criterion=criterion),
    }


__all__ = [
    "EVAL_STREAM",
    "TRAIN_STREAM",
    "Evaluation",
    "Solved",
    "evaluate",
    "evaluate_sim_and_real",
    "gap_closure",
    "held_from",
    "held_out_starts",
    "normalized_score",
    "seed_streams",
    "solved_criterion",
]
