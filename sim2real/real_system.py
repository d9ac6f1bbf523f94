"""The real-system boundary: the one place where "real" transitions are produced.

A real system is reached only as a physical one lets itself be: reset, step, observe. Nothing
that leaves `RealSystem` carries a gradient (every output is a host numpy array), and every
transition taken is counted against a budget fixed when the system is built. A request that
would go past the budget is refused with a ValueError before any transition of it is taken.

Two kinds of system stand behind it:
- a Brax testbed (the differentiable twin of the `real` or `lab` profile), whose episodes
  run batched in one jitted, vmapped rollout;
- any `gymnasium.Env` (gymnasium 1.x): the MuJoCo C engine of `sim2real.mujoco_lab`, another
  simulator, or a hardware driver, stepped one transition at a time, with a `GymAdapter`
  (`sim2real.gym_adapter`) mapping its observations and actions to the testbed's layout.

A policy that observes its last m commands (`action_history=m`, `pods.action_history`) gets
them from the boundary: a Brax testbed carries them in its own observation; for a gymnasium
env the boundary appends the commands it sent to the adapted sensors, since the controller
knows them without a sensor. What is recorded (`RealTrajectories.observations`) is the sensors
alone: the history is the recorded commands, and a dynamics model fitted on the data predicts
the sensors whatever history the policy observes.

An episode of a gymnasium env may end early (it terminates, or reports a non-finite
observation, which ends the episode before that observation): its transitions up to there are
kept and counted, the rest of the episode's record repeats its last observation with zero
commands and is marked not `valid`, and nothing downstream learns from it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from dynamics_models import random_actions
from pods.action_history import check_action_history, push_command, with_history
from pods.rollout import reset_batch, trajectories_of_actions, trajectories_of_policy
from sim2real.gym_adapter import GymAdapter, gym_sensor_size
from sim2real.testbeds import make_testbed


class RealTrajectories(NamedTuple):
    """Whole trajectories collected on the real system, as host arrays."""

    observations: np.ndarray
    """[n, horizon + 1, sensor_size]: s_0 .. s_N of each trajectory, what the sensors read
    (without the action history the policy also observed: that is `actions`, shifted)."""
    actions: np.ndarray
    """[n, horizon, act_dim], as sent to the motor (before it saturates)."""
    rewards: np.ndarray
    """[n, horizon]: the task reward of each transition."""
    valid: np.ndarray | None = None
    """[n, horizon] bool: the transition was taken (False after an episode ended early);
    None: every one was."""

    @property
    def transitions(self) -> int:
        """Transitions taken."""
        if self.valid is None:
            return int(self.actions.shape[0] * self.actions.shape[1])
        return int(self.valid.sum())


def _whole(observations, actions, rewards) -> RealTrajectories:
    """Trajectories none of which ended early."""
    observations, actions, rewards = (np.asarray(x) for x in (observations, actions, rewards))
    return RealTrajectories(observations, actions, rewards, np.ones(rewards.shape, bool))


class _BraxSystem:
    """A Brax testbed as a real system: batched episodes in one jitted rollout each."""

    def __init__(self, testbed: Any):
        if getattr(testbed, "variant", None) not in ("real", "lab"):
            raise ValueError(
                "RealSystem wraps a `real` or `lab` testbed, got variant "
                f"{getattr(testbed, 'variant', None)!r} ({getattr(testbed, 'name', testbed)!r})"
            )
        self.env = testbed
        self.name, self.dtype = testbed.name, testbed.dtype
        self.observation_size, self.action_size = testbed.observation_size, testbed.action_size
        self.sensor_size = testbed.sensor_size
        self.action_history = testbed.action_history
        self.episode_length, self.dt = testbed.episode_length, float(testbed.dt)
        self._reset, self._step = jax.jit(testbed.reset), jax.jit(testbed.step)
        self._state = None
        self.rollouts: dict[tuple, Callable] = {}

    def reset(self, key: jax.Array) -> np.ndarray:
        self._state = jax.lax.stop_gradient(self._reset(key))
        return np.asarray(jax.device_get(self._state.obs))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        action = jnp.asarray(action, self.dtype)
        self._state = jax.lax.stop_gradient(self._step(self._state, action))
        return np.asarray(jax.device_get(self._state.obs)), float(self._state.reward), False

    def _sensors(self, trajectories) -> tuple:
        observations, actions, rewards = trajectories
        return observations[..., : self.sensor_size], actions, rewards

    def collect(self, key, num_trajectories, horizon, *, make_policy, params, action_noise):
        cache_key = (make_policy, num_trajectories, horizon)
        if cache_key not in self.rollouts:
            env, zeros = self.env, jnp.zeros((self.action_size,), self.dtype)

            def rollouts(params, key, action_noise):
                key_reset, key_noise = jax.random.split(key)
                states = reset_batch(env, key_reset, num_trajectories)
                policy = make_policy(params) if make_policy is not None else (lambda _: zeros)
                trajectories = trajectories_of_policy(
                    env, states, policy, horizon, key=key_noise, action_noise=action_noise
                )
                return jax.lax.stop_gradient(self._sensors(trajectories))

            self.rollouts[cache_key] = jax.jit(rollouts)
        run = self.rollouts[cache_key]
        return _whole(*jax.device_get(run(params, key, jnp.asarray(action_noise, self.dtype))))

    def play(self, key: jax.Array, actions: np.ndarray) -> RealTrajectories:
        if "play" not in self.rollouts:
            env = self.env

            def play(key, actions):
                states = reset_batch(env, key, actions.shape[0])
                return jax.lax.stop_gradient(
                    self._sensors(trajectories_of_actions(env, states, actions))
                )

            self.rollouts["play"] = jax.jit(play)
        return _whole(*jax.device_get(self.rollouts["play"](key, jnp.asarray(actions, self.dtype))))


def _seed(key: jax.Array) -> int:
    """A gymnasium seed drawn from a JAX key."""
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


class _GymSystem:
    """A gymnasium env as a real system: one transition at a time, through a `GymAdapter`."""

    def __init__(
        self, env: gymnasium.Env, adapter: GymAdapter, episode_length: int, action_history: int
    ):
        self.env, self.adapter = env, adapter
        size = gym_sensor_size(env, adapter)
        self.sensor_size, self.action_size = size, adapter.action_size
        self.action_history = action_history
        self.observation_size = size + action_history * adapter.action_size
        self.episode_length = episode_length
        unwrapped = env.unwrapped
        self.name = str(getattr(unwrapped, "name", None) or (env.spec.id if env.spec else "gym"))
        self.dt = float(getattr(unwrapped, "dt", math.nan))
        self.dtype = np.float64
        self._history = np.zeros(self.observation_size - size)
        self.rollouts: dict[Any, Callable] = {}

    def _observe(self, raw: Any) -> np.ndarray:
        return np.asarray(self.adapter.observation(np.asarray(raw)), np.float64).reshape(-1)

    def reset(self, key: jax.Array) -> np.ndarray:
        """s_0: the sensors, then a history of zeros."""
        raw, _ = self.env.reset(seed=_seed(key))
        sensors = self._observe(raw)
        if not np.all(np.isfinite(sensors)):
            raise ValueError(f"{self.name}: reset returned a non-finite observation")
        self._history = np.zeros_like(self._history)
        return with_history(sensors, self._history, xp=np)

    def step(self, command: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """(s', r, ended): `ended` when the env terminated or truncated the episode; s' is the
        sensors, then the history with `command` (as commanded, before the adapter) first."""
        action = np.asarray(self.adapter.action(np.asarray(command)), self.env.action_space.dtype)
        raw, reward, terminated, truncated, _ = self.env.step(action)
        sensors = self._observe(raw)
        if self.adapter.reward is not None:
            reward = self.adapter.reward(sensors, command, float(reward))
        self._history = push_command(self._history, np.asarray(command, np.float64), xp=np)
        observation = with_history(sensors, self._history, xp=np)
        return observation, float(reward), bool(terminated or truncated)

    def _episodes(self, key, n, horizon, choose) -> RealTrajectories:
        """n episodes; `choose(i, t, observation)` gives command t of episode i from the
        observation the policy sees (the history included); the sensors are recorded."""
        obs = np.zeros((n, horizon + 1, self.sensor_size))
        actions = np.zeros((n, horizon, self.action_size))
        rewards = np.zeros((n, horizon))
        valid = np.zeros((n, horizon), bool)
        for i, episode_key in enumerate(jax.random.split(key, n)):
            seen = self.reset(episode_key)
            obs[i, 0] = seen[: self.sensor_size]
            for t in range(horizon):
                command = np.asarray(choose(i, t, seen), np.float64).reshape(-1)
                seen, reward, ended = self.step(command)
                observation = seen[: self.sensor_size]
                if not np.all(np.isfinite(observation)):
                    warnings.warn(
                        f"{self.name}: non-finite observation at step {t + 1} of episode {i}; "
                        "the episode ends before it",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    obs[i, t + 1 :] = obs[i, t]
                    break
                obs[i, t + 1], actions[i, t], rewards[i, t], valid[i, t] = (
                    observation,
                    command,
                    reward,
                    True,
                )
                if ended and t + 1 < horizon:
                    obs[i, t + 2 :] = observation
                    break
        return RealTrajectories(obs, actions, rewards, valid)

    def collect(self, key, num_trajectories, horizon, *, make_policy, params, action_noise):
        key_episodes, key_noise = jax.random.split(key)
        noise = np.random.default_rng(_seed(key_noise))
        policy = None
        if make_policy is not None:
            if make_policy not in self.rollouts:
                self.rollouts[make_policy] = jax.jit(lambda p, o: make_policy(p)(o))
            apply = self.rollouts[make_policy]

            def policy(observation):
                return np.asarray(apply(params, jnp.asarray(observation, jnp.result_type(float))))

        def choose(i, t, observation):
            command = np.zeros(self.action_size) if policy is None else policy(observation)
            return command + action_noise * noise.standard_normal(self.action_size)

        return self._episodes(key_episodes, num_trajectories, horizon, choose)

    def play(self, key: jax.Array, actions: np.ndarray) -> RealTrajectories:
        return self._episodes(
            key, actions.shape[0], actions.shape[1], lambda i, t, _: actions[i, t]
        )


class RealSystem:
    """A real system behind the interface of a physical one, with a transition budget.

    `system`: a `real` or `lab` Brax testbed (or its registered name), or a `gymnasium.Env`
    (then `adapter` maps its layout, and `episode_length` is the horizon of an episode).
    `action_history`: how many past commands the observations end with (the module
    docstring); a Brax testbed has its own (None or the same number), a gymnasium env none.

    Step by step: `reset(key)` starts an episode and returns the first observation,
    `step(action)` applies one action and returns (observation, reward), `observe()` returns
    the current observation. In batches: `collect(...)` runs whole trajectories of a policy
    plus Gaussian noise, `play(...)` open-loop commands. `transitions` counts every transition
    taken by either; `remaining` is what the budget still allows.
    """

    def __init__(
        self,
        system: Any,
        budget: int,
        *,
        adapter: GymAdapter | None = None,
        episode_length: int | None = None,
        action_history: int | None = None,
    ):
        if not (isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0):
            raise ValueError(f"RealSystem budget must be an integer >= 0, got {budget!r}")
        if action_history is not None:
            check_action_history(action_history)
        if isinstance(system, str):
            system = make_testbed(system, action_history=action_history or 0)
        if isinstance(system, gymnasium.Env):
            length = episode_length or getattr(system.unwrapped, "episode_length", None)
            if not (isinstance(length, int) and length > 0):
                raise ValueError(
                    f"RealSystem of a gymnasium env needs a positive episode_length, got {length!r}"
                )
            self._system: Any = _GymSystem(
                system, adapter or GymAdapter(), length, action_history or 0
            )
        else:
            if adapter is not None:
                raise ValueError("a GymAdapter maps a gymnasium env; a Brax testbed needs none")
            own = getattr(system, "action_history", 0)
            if action_history is not None and action_history != own:
                raise ValueError(
                    f"RealSystem action_history={action_history!r}, but the Brax testbed "
                    f"{getattr(system, 'name', system)!r} observes its own, {own}: build the "
                    "testbed with the history instead"
                )
            self._system = _BraxSystem(system)
        self.budget = budget
        self.transitions = 0
        self._observation: np.ndarray | None = None

    @property
    def is_gym(self) -> bool:
        """Whether a gymnasium env (not a Brax testbed) stands behind this system."""
        return isinstance(self._system, _GymSystem)

    @property
    def env(self) -> Any:
        """The testbed or gymnasium env behind the boundary (for evaluation, not training)."""
        return self._system.env

    @property
    def _rollouts(self) -> dict:
        return self._system.rollouts

    name = property(lambda self: self._system.name)
    observation_size = property(lambda self: self._system.observation_size)
    sensor_size = property(lambda self: self._system.sensor_size)
    """The observation's leading entries that the sensors read (what trajectories record)."""
    action_history = property(lambda self: self._system.action_history)
    action_size = property(lambda self: self._system.action_size)
    episode_length = property(lambda self: self._system.episode_length)
    dt = property(lambda self: self._system.dt)

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
        self._observation = self._system.reset(key)
        return self.observe()

    def observe(self) -> np.ndarray:
        if self._observation is None:
            raise ValueError("RealSystem.observe before reset: no episode is running")
        return self._observation.copy()

    def step(self, action: Any) -> tuple[np.ndarray, float]:
        """Applies one action (a counted transition); returns (s_{t+1}, r_t)."""
        if self._observation is None:
            raise ValueError("RealSystem.step before reset: no episode is running")
        self._reserve(1)
        action = np.asarray(action, np.float64).reshape(self.action_size)
        observation, reward, _ = self._system.step(action)
        self.transitions += 1
        self._observation = observation
        return self.observe(), reward

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
        Every trajectory starts from a fresh reset. On a Brax testbed all run in one jitted
        vmapped rollout, compiled once per (make_policy, num_trajectories, horizon): new params
        or noise reuse it. The num_trajectories * horizon transitions are checked against the
        budget before any is taken; those taken are counted exactly.
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
        trajectories = self._system.collect(
            key,
            num_trajectories,
            horizon,
            make_policy=make_policy,
            params=params,
            action_noise=action_noise,
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
        self._reserve(actions.shape[0] * actions.shape[1])
        trajectories = self._system.play(key, actions)
        self.transitions += trajectories.transitions
        return trajectories

    def play_random(self, key: jax.Array, n: int, *, correlation: float) -> RealTrajectories:
        """`n` episodes of random commands (`dynamics_models.random_actions`, correlated by
        `correlation`) from fresh resets: the exploration data of the HDS loop's first round
        and of system identification."""
        commands = random_actions(
            key, n, self.episode_length, self.action_size, correlation=correlation
        )
        return self.play(jax.random.fold_in(key, 1), commands)


__all__ = ["RealSystem", "RealTrajectories"]
