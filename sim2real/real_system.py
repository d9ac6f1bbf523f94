"""The real-system boundary: the one place where "real" transitions are produced.

The `real` testbed is a simulator here, but HDS may only treat it as a physical system would
let it: reset, step, observe. Nothing that leaves `RealSystem` carries a gradient (every
output is a host numpy array), and every transition taken is counted against a budget
fixed when the system is built. A request that would go past the budget is refused with a
ValueError before any transition of it is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pods.rollout import reset_batch, rollout_actions
from sim2real.testbeds import make_testbed


class RealTrajectories(NamedTuple):
    """Whole trajectories collected on the real system, as host arrays."""

    observations: np.ndarray
    """[n, horizon + 1, obs_dim]: s_0 .. s_N of each trajectory."""
    actions: np.ndarray
    """[n, horizon, act_dim], as sent to the motor (before it saturates)."""
    rewards: np.ndarray
    """[n, horizon]: the task reward of each transition."""

    @property
    def transitions(self) -> int:
        """Transitions held: n * horizon."""
        return int(self.actions.shape[0] * self.actions.shape[1])


class RealSystem:
    """A `real` testbed behind the interface of a physical system, with a transition budget.

    Step by step: `reset(key)` starts an episode and returns the first observation,
    `step(action)` applies one action and returns (observation, reward), `observe()` returns
    the current observation. In batches: `collect(...)` runs whole trajectories of a policy
    plus Gaussian noise, one jitted vmapped rollout per call. `transitions` counts every
    transition taken by either; `remaining` is what the budget still allows.
    """

    def __init__(self, testbed: Any, budget: int):
        if isinstance(testbed, str):
            testbed = make_testbed(testbed)
        if getattr(testbed, "variant", None) != "real":
            raise ValueError(
                "RealSystem wraps a `real` testbed, got variant "
                f"{getattr(testbed, 'variant', None)!r} ({getattr(testbed, 'name', testbed)!r})"
            )
        if not (isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0):
            raise ValueError(f"RealSystem budget must be an integer >= 0, got {budget!r}")
        self._env = testbed
        self.budget = budget
        self.transitions = 0
        self._reset = jax.jit(testbed.reset)
        self._step = jax.jit(testbed.step)
        self._state = None
        self._rollouts: dict[tuple, Callable] = {}

    @property
    def name(self) -> str:
        return self._env.name

    @property
    def observation_size(self) -> int:
        return self._env.observation_size

    @property
    def action_size(self) -> int:
        return self._env.action_size

    @property
    def episode_length(self) -> int:
        return self._env.episode_length

    @property
    def dt(self) -> float:
        return float(self._env.dt)

    @property
    def remaining(self) -> int:
        return self.budget - self.transitions

    def _reserve(self, requested: int) -> None:
        if requested > self.remaining:
            raise ValueError(
                f"real-system budget of {self.budget} transitions exceeded: {requested} requested, "
                f"{self.transitions} already used, {self.remaining} left"
            )

    def reset(self, key: jax.Array) -> np.ndarray:
        """Starts an episode from the system's initial-state distribution; returns s_0."""
        self._state = jax.lax.stop_gradient(self._reset(key))
        return self.observe()

    def observe(self) -> np.ndarray:
        if self._state is None:
            raise ValueError("RealSystem.observe before reset: no episode is running")
        return np.asarray(jax.device_get(self._state.obs))

    def step(self, action: Any) -> tuple[np.ndarray, float]:
        """Applies one action (a counted transition); returns (s_{t+1}, r_t)."""
        if self._state is None:
            raise ValueError("RealSystem.step before reset: no episode is running")
        self._reserve(1)
        action = jnp.asarray(
            np.asarray(action, np.float64).reshape(self.action_size), self._env.dtype
        )
        self._state = jax.lax.stop_gradient(self._step(self._state, action))
        self.transitions += 1
        return self.observe(), float(self._state.reward)

    def _rollout_fn(self, make_policy: Callable | None, num_trajectories: int, horizon: int):
        cache_key = (make_policy, num_trajectories, horizon)
        if cache_key not in self._rollouts:
            env = self._env

            def rollouts(params, key, action_noise):
                key_reset, key_noise = jax.random.split(key)
                states = jax.vmap(env.reset)(jax.random.split(key_reset, num_trajectories))

                def one(state, key):
                    policy = make_policy(params) if make_policy is not None else None

                    def env_step(state, step_key):
                        obs = state.obs
                        action = (
                            policy(obs)
                            if policy is not None
                            else jnp.zeros((env.action_size,), obs.dtype)
                        )
                        action = action + action_noise * jax.random.normal(
                            step_key, action.shape, action.dtype
                        )
                        next_state = env.step(state, action)
                        return next_state, (obs, action, next_state.reward)

                    final, (obs, actions, rewards) = jax.lax.scan(
                        env_step, state, jax.random.split(key, horizon)
                    )
                    return jnp.concatenate([obs, final.obs[None]]), actions, rewards

                out = jax.vmap(one)(states, jax.random.split(key_noise, num_trajectories))
                return jax.lax.stop_gradient(out)

            self._rollouts[cache_key] = jax.jit(rollouts)
        return self._rollouts[cache_key]

    def collect(
        self,
        key: jax.Array,
        num_trajectories: int,
        *,
        make_policy: Callable | None = None,
        params: Any = None,
        action_noise: float = 0.0,
        horizon: int | None = None,
    ) -> RealTrajectories:
        """`num_trajectories` whole trajectories of `make_policy(params)` plus N(0, noise^2).

        Without `make_policy` the actions are the noise alone (a random-exploration dataset).
        Every trajectory starts from a fresh reset; all run in one jitted vmapped rollout,
        compiled once per (make_policy, num_trajectories, horizon): new params or noise reuse
        it. The num_trajectories * horizon transitions are checked against the budget before
        any is taken, and counted exactly.
        """
        horizon = self.episode_length if horizon is None else horizon
        for name, value in (("num_trajectories", num_trajectories), ("horizon", horizon)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(
                    f"RealSystem.collect {name} must be a positive integer, got {value!r}"
                )
        if not (np.isfinite(action_noise) and action_noise >= 0):
            raise ValueError(f"RealSystem.collect action_noise must be >= 0, got {action_noise!r}")
        if (make_policy is None) != (params is None):
            raise ValueError("RealSystem.collect needs make_policy and params together, or neither")
        self._reserve(num_trajectories * horizon)
        rollouts = self._rollout_fn(make_policy, num_trajectories, horizon)
        observations, actions, rewards = jax.device_get(
            rollouts(params, key, jnp.asarray(action_noise, self._env.dtype))
        )
        trajectories = RealTrajectories(
            np.asarray(observations), np.asarray(actions), np.asarray(rewards)
        )
        self.transitions += trajectories.transitions
        return trajectories

    def play(self, key: jax.Array, actions: Any) -> RealTrajectories:
        """Open-loop commands `actions` [n, horizon, act_dim] from n fresh resets (keys from
        `key`): how a random-exploration dataset of correlated commands is recorded. Checked
        against the budget before any transition is taken; one compile per shape."""
        actions = np.asarray(actions)
        if actions.ndim != 3 or actions.shape[-1] != self.action_size or 0 in actions.shape:
            raise ValueError(
                f"RealSystem.play wants actions [n, horizon, {self.action_size}], "
                f"got shape {actions.shape}"
            )
        if not np.all(np.isfinite(actions)):
            raise ValueError("RealSystem.play got non-finite actions")
        n, horizon = actions.shape[:2]
        self._reserve(n * horizon)
        if "play" not in self._rollouts:
            env = self._env

            def play(key, actions):
                states = reset_batch(env, key, actions.shape[0])
                trajectory = jax.vmap(lambda s, a: rollout_actions(env, s, a))(states, actions)
                return jax.lax.stop_gradient(tuple(trajectory))

            self._rollouts["play"] = jax.jit(play)
        observations, played, rewards = jax.device_get(
            self._rollouts["play"](key, jnp.asarray(actions, self._env.dtype))
        )
        trajectories = RealTrajectories(
            np.asarray(observations), np.asarray(played), np.asarray(rewards)
        )
        self.transitions += trajectories.transitions
        return trajectories


__all__ = ["RealSystem", "RealTrajectories"]
