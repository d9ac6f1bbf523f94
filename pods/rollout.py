"""Differentiable rollouts through any Brax-style env.

An env here is anything with the Brax `Env` contract: `reset(key) -> State` and
`step(State, action) -> State`, pure and jittable. Rollouts are one `lax.scan` over time;
batch them with `jax.vmap` over initial states (and action sequences or noise keys).

Gradients through long rollouts of unstable systems explode (the state Jacobian grows like
exp(lambda t)). `gradient_window=K` stops the gradient of the env state every K steps, so an
action's gradient only sees the rewards of the window it acts in; the forward pass is
unchanged. The recorded observations keep the gradient of the window that reached them.

Rollouts are done-aware: PODS rolls out a fixed horizon from a reset, but an env that ends its
episode (Brax's `state.done`, e.g. a pole past its limit) keeps stepping. From the step whose
`done` is 1 on, every later reward is masked out of the return (the terminating step's own
reward counts, as in Brax's evaluation), with a select on a constant mask, so the return stays
differentiable in the actions of the episode and a return never counts what happens after it
ended. Envs that never set `done` (the testbeds) get exactly the unmasked numbers.
`EpisodeLimit` ends episodes at a step count carried in the state (PODS's growing horizon).

Besides open-loop and policy rollouts there is one of a time-varying affine feedback law on
the env's state vector (`episode_of_feedback`, `state_vector`), for `pods.feedback`'s iLQR
step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State, Wrapper
from jaxtyping import Array, Float, Int

Policy = Callable[[Float[Array, " obs_dim"]], Float[Array, " act_dim"]]
"""A deterministic policy with its parameters closed over: observation -> action."""


class Trajectory(NamedTuple):
    """One rollout. The leading axis is time; `vmap` adds a batch axis in front."""

    observations: Float[Array, "horizon+1 obs_dim"]
    """s_0 .. s_N: the observation before each action, then the final one."""
    actions: Float[Array, "horizon act_dim"]
    """a_0 .. a_{N-1}, as passed to `env.step`."""
    rewards: Float[Array, " horizon"]
    """r_t, the reward `env.step` returned for taking a_t in s_t; 0 after the episode ended."""

    @property
    def value(self) -> Float[Array, ""]:
        """The return V = sum_t r_t (undiscounted, as PODS optimizes it), up to termination."""
        return jnp.sum(self.rewards, axis=-1)

    @property
    def horizon(self) -> int:
        return self.actions.shape[-2]


class Episode(NamedTuple):
    """A rollout and which of its steps belong to the episode. The trajectory's fields are
    also readable directly (`episode.observations`, `episode.value`, ...)."""

    trajectory: Trajectory
    active: Float[Array, " horizon"]
    """1 for the steps taken while the episode ran (the one that ended it included), 0 after;
    all 1 for an env that never sets `done`."""

    observations = property(lambda self: self.trajectory.observations)
    actions = property(lambda self: self.trajectory.actions)
    rewards = property(lambda self: self.trajectory.rewards)
    value = property(lambda self: self.trajectory.value)
    horizon = property(lambda self: self.trajectory.horizon)

    @property
    def steps(self) -> Float[Array, ""]:
        """Steps the episode lasted within the horizon."""
        return jnp.sum(self.active, axis=-1)


def _check_window(gradient_window: int | None) -> int:
    if gradient_window is None or gradient_window == 0:
        return 0
    if not (isinstance(gradient_window, int) and gradient_window > 0):
        raise ValueError(
            f"gradient_window must be a positive integer or None, got {gradient_window!r}"
        )
    return gradient_window


def _window_cut(state: State, t: jax.Array, gradient_window: int) -> State:
    """Stops the gradient through `state` when step `t` starts a new window."""
    if not gradient_window:
        return state
    cut = (t % gradient_window == 0) & (t > 0)

    def maybe_stop(x):
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            return x
        return jnp.where(cut, jax.lax.stop_gradient(x), x)

    return jax.tree.map(maybe_stop, state)


def _ended(state: State) -> jax.Array:
    """1 where `state` ends its episode; a constant for differentiation."""
    return jax.lax.stop_gradient(jnp.asarray(state.done) > 0)


def _rollout(
    env: Env,
    state: State,
    choose_action: Callable[[State, Any], jax.Array],
    xs: Any,
    horizon: int,
    gradient_window: int | None,
) -> tuple[State, Episode]:
    window = _check_window(gradient_window)
    if not (isinstance(horizon, int) and horizon > 0):
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")

    def env_step(carry, x):
        arrived, active = carry
        t, x = x
        # The window starts from the cut state, but the recorded s_t keeps its gradient: it
        # is where the previous window's last action led, and r(s_t, a_{t-1}) belongs to
        # that window (the second-order terms differentiate the recorded states).
        state = _window_cut(arrived, t, window)
        action = choose_action(state, x)
        next_state = env.step(state, action)
        reward = jnp.asarray(next_state.reward)
        # A select, not a product: after termination the physics may run off to inf or NaN,
        # and 0 * NaN would poison the whole return. The gradient is the same either way.
        reward = jnp.where(active, reward, jnp.zeros_like(reward))
        carry = (next_state, active & ~_ended(next_state))
        return carry, (arrived.obs, action, reward, active)

    (final, _), (obs, actions, rewards, active) = jax.lax.scan(
        env_step, (state, ~_ended(state)), (jnp.arange(horizon), xs), length=horizon
    )
    observations = jnp.concatenate([obs, final.obs[None]], axis=0)
    trajectory = Trajectory(observations, actions, rewards)
    return final, Episode(trajectory, active.astype(rewards.dtype))


def episode_of_actions(
    env: Env,
    state: State,
    actions: Float[Array, "horizon act_dim"],
    *,
    gradient_window: int | None = None,
) -> Episode:
    """`trajectory_of_actions`, with the mask of the steps taken before the episode ended."""
    return _rollout(
        env, state, lambda _, action: action, actions, actions.shape[0], gradient_window
    )[1]


def trajectory_of_actions(
    env: Env,
    state: State,
    actions: Float[Array, "horizon act_dim"],
    *,
    gradient_window: int | None = None,
) -> Trajectory:
    """Plays a fixed action sequence open loop from `state`; differentiable in `actions`."""
    return episode_of_actions(env, state, actions, gradient_window=gradient_window).trajectory


def episode_of_policy(
    env: Env,
    state: State,
    policy: Policy,
    horizon: int,
    *,
    key: jax.Array | None = None,
    action_noise: float | jax.Array = 0.0,
    gradient_window: int | None = None,
) -> Episode:
    """Runs `policy` closed loop for `horizon` steps from `state`; the episode and its mask.

    With `key`, Gaussian noise of standard deviation `action_noise` is added to every action
    (exploration); the noisy action is the one recorded and played.
    """

    def choose_action(state, step_key):
        action = policy(state.obs)
        if key is None:
            return action
        return action + action_noise * jax.random.normal(step_key, action.shape, action.dtype)

    keys = None if key is None else jax.random.split(key, horizon)
    return _rollout(env, state, choose_action, keys, horizon, gradient_window)[1]


def trajectory_of_policy(
    env: Env, state: State, policy: Policy, horizon: int, **options
) -> Trajectory:
    """The trajectory of `episode_of_policy` (same options: `key`, `action_noise`,
    `gradient_window`)."""
    return episode_of_policy(env, state, policy, horizon, **options).trajectory


def policy_states_after(
    env: Env, states: State, policy: Policy, steps: Int[Array, " n"], max_steps: int
) -> State:
    """Where `policy` takes each of a batch of states in its own number of `steps`, each in
    [0, max_steps] (closed loop, deterministic): one scan of `max_steps` steps, each
    trajectory's state kept when its count is reached. Not differentiated: these are the
    starts of later rollouts."""

    def one(state, count):
        def step(carry, t):
            state, kept = carry
            kept = jax.tree.map(lambda k, s: jnp.where(t == count, s, k), kept, state)
            return (env.step(state, policy(state.obs)), kept), None

        (last, kept), _ = jax.lax.scan(step, (state, state), jnp.arange(max_steps))
        return jax.tree.map(lambda k, s: jnp.where(count == max_steps, s, k), kept, last)

    return jax.lax.stop_gradient(jax.vmap(one)(states, steps))


_LIMIT, _STEPS = "episode_limit", "episode_limit_steps"
"""The `state.info` keys of `EpisodeLimit`: the steps an episode may take, and those taken."""


class EpisodeLimit(Wrapper):
    """The env with each episode ended after `state.info[_LIMIT]` steps: `done` is 1 from
    the step that reaches the limit on (or wherever the env itself ends it), so every rollout
    here masks the rewards, gradients and distillation targets past it. The limit is an array
    in the state, set after `reset` by `with_episode_limit`, so it can change from epoch to
    epoch without a new compile (PODS's growing horizon)."""

    def step(self, state: State, action: jax.Array) -> State:
        arrived = self.env.step(state, action)
        steps = state.info[_STEPS] + 1
        info = {**arrived.info, _STEPS: steps, _LIMIT: state.info[_LIMIT]}
        done = jnp.where(steps >= state.info[_LIMIT], jnp.ones_like(arrived.done), arrived.done)
        return arrived.replace(done=done, info=info)


def with_episode_limit(states: State, limit: Int[Array, ""]) -> State:
    """A batch of states, each to end its episode `limit` steps from now (see `EpisodeLimit`)."""
    size = states.obs.shape[0]
    counters = {
        _LIMIT: jnp.full((size,), limit, jnp.int32),
        _STEPS: jnp.zeros((size,), jnp.int32),
    }
    return states.replace(info={**states.info, **counters})


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _dynamic_parts(state: State) -> tuple[Any, Any, Any]:
    """What of an env state can carry its dynamics: the pipeline state (None for a learned
    model), the observation (a learned model's whole state) and the info (e.g. the lab's
    command queue). Reward, done and metrics are outputs of the step, not inputs."""
    return state.pipeline_state, state.obs, state.info


def state_vector(state: State) -> Float[Array, " n"]:
    """Every floating leaf of one env state's dynamic parts, flattened into one vector: the
    coordinates a feedback law acts on. Integer leaves (keys, counters) are left out."""
    leaves = [leaf for leaf in jax.tree.leaves(_dynamic_parts(state)) if _is_float(leaf)]
    return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])


def with_state_vector(state: State, x: Float[Array, " n"]) -> State:
    """`state` with its floating leaves read back from `x` (the inverse of `state_vector`)."""
    leaves, treedef = jax.tree.flatten(_dynamic_parts(state))
    filled, start = [], 0
    for leaf in leaves:
        if _is_float(leaf):
            size = leaf.size
            leaf = x[start : start + size].reshape(leaf.shape).astype(leaf.dtype)
            start += size
        filled.append(leaf)
    pipeline_state, obs, info = jax.tree.unflatten(treedef, filled)
    return state.replace(pipeline_state=pipeline_state, obs=obs, info=info)


def states_of_actions(env: Env, state: State, actions: Float[Array, "horizon act_dim"]) -> State:
    """The env state before each action of an open-loop replay, stacked on a leading time
    axis: where a trajectory is linearized."""

    def step(state, action):
        return env.step(state, action), state

    return jax.lax.scan(step, state, actions)[1]


def episode_of_feedback(
    env: Env,
    state: State,
    feedforward: Float[Array, "horizon act_dim"],
    gains: Float[Array, "horizon act_dim n"],
    nominal: Float[Array, "horizon n"],
    *,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
) -> Episode:
    """Runs the time-varying affine feedback law
    a_t = clip(feedforward_t + gains_t (x_t - nominal_t)) closed loop from `state`, with
    x_t = `state_vector` of the state reached. Done-aware like every rollout here."""
    low, high = action_bounds

    def choose_action(state, law):
        u, gain, x_bar = law
        return jnp.clip(u + gain @ (state_vector(state) - x_bar), low, high)

    horizon = feedforward.shape[0]
    return _rollout(env, state, choose_action, (feedforward, gains, nominal), horizon, None)[1]


def reset_batch(env: Env, key: jax.Array, batch_size: int) -> State:
    """`batch_size` initial states from independent keys, stacked on a leading axis."""
    return jax.vmap(env.reset)(jax.random.split(key, batch_size))


def trajectories_of_actions(
    env: Env, states: State, actions: Float[Array, "n horizon act_dim"]
) -> Trajectory:
    """`trajectory_of_actions` from each of a batch of states, its own action sequence each."""
    return jax.vmap(lambda state, a: trajectory_of_actions(env, state, a))(states, actions)


def trajectories_of_policy(
    env: Env,
    states: State,
    policy: Policy,
    horizon: int,
    *,
    key: jax.Array | None = None,
    action_noise: float | jax.Array = 0.0,
) -> Trajectory:
    """`trajectory_of_policy` from each of a batch of states: deterministic without `key`; with
    it, exploration noise of std `action_noise` from a key of its own per trajectory (split
    from `key`). Collection and evaluation of a batch use it."""
    if key is None:
        return jax.vmap(lambda state: trajectory_of_policy(env, state, policy, horizon))(states)
    keys = jax.random.split(key, states.obs.shape[0])
    return jax.vmap(
        lambda state, k: trajectory_of_policy(
            env, state, policy, horizon, key=k, action_noise=action_noise
        )
    )(states, keys)


def evaluate_policy(
    env: Env, policy: Policy, key: jax.Array, num_trajectories: int, horizon: int | None = None
) -> jax.Array:
    """Returns of the deterministic `policy` from `num_trajectories` fresh initial states."""
    horizon = horizon or env.episode_length
    return trajectories_of_policy(
        env, reset_batch(env, key, num_trajectories), policy, horizon
    ).value
