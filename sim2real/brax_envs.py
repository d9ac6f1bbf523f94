"""Brax's own envs (`reacher`, `inverted_pendulum`, `hopper`, ...) as envs PODS can train on.

A registry env (`brax.envs.get_environment`) is a raw `PipelineEnv`: no horizon, no name PODS
or the experiments can report, and a reward that may not be differentiable. `make_brax_env`
wraps one without changing its dynamics:

- `episode_length`: the horizon PODS rolls out from each reset (Brax's own trainers wrap the
  env with their episode and auto-reset wrappers from it; PODS does not, it rolls fixed
  horizons and masks the rewards after `done`, see `pods.rollout`);
- `reward`: optionally a function r(obs_next, action) replacing the env's reward, for envs
  whose reward has no gradient with respect to the actions (`inverted_pendulum`'s is a
  constant 1 per step alive) and for PODS's second order, which differentiates the reward in
  the observation directly (`task_reward`, as the testbeds have it).

These envs have no `real` variant: a run on one is trained and evaluated in sim only.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from brax import envs as brax_envs
from brax.envs.base import Env, State, Wrapper
from jaxtyping import Array, Float

RewardFn = Callable[[Float[Array, " obs_dim"], Float[Array, " act_dim"]], Float[Array, ""]]

BACKENDS = ("generalized", "positional", "spring", "mjx")
"""Brax's physics pipelines; each registry env has its own default."""


def registry_names() -> tuple[str, ...]:
    """The env names `brax.envs.get_environment` knows, less the testbeds, which sim2real
    registers there too (they have their own `env=` options, with a real variant)."""
    from sim2real.testbed_spec import list_testbeds

    # brax 0.14 has no public listing of its registry.
    return tuple(sorted(set(brax_envs._envs) - set(list_testbeds())))


class BraxTask(Wrapper):
    """A Brax env with a horizon, a name and (optionally) a replacement reward."""

    def __init__(self, env: Env, name: str, episode_length: int, reward: RewardFn | None = None):
        super().__init__(env)
        self.name, self.system_name, self.task = name, "brax", name
        self.episode_length = episode_length
        self.reward = reward

    @property
    def dtype(self) -> Any:
        sys = getattr(self.env.unwrapped, "sys", None)
        return jnp.float32 if sys is None else sys.init_q.dtype

    def __getattr__(self, name: str) -> Any:
        # PODS's second order looks for `task_reward`; without a replacement reward there is
        # none, whatever the wrapped env has.
        if name == "task_reward":
            if self.reward is None:
                raise AttributeError(name)
            return self.reward
        return super().__getattr__(name)

    def reset(self, rng: jax.Array) -> State:
        state = self.env.reset(rng)
        # One dtype for reward and done in every state: the rollout scan carries them, and
        # some envs return Python floats (inverted_pendulum's reward is 1.0).
        zero = jnp.zeros((), self.dtype)
        return state.replace(reward=zero, done=jnp.asarray(state.done, self.dtype))

    def step(self, state: State, action: jax.Array) -> State:
        next_state = self.env.step(state, action)
        reward = next_state.reward if self.reward is None else self.reward(next_state.obs, action)
        return next_state.replace(
            reward=jnp.asarray(reward, self.dtype), done=jnp.asarray(next_state.done, self.dtype)
        )


def resolve_reward(spec: str) -> RewardFn:
    """`module:function` -> the function, e.g. `sim2real.brax_envs:inverted_pendulum_upright`."""
    module_name, sep, attribute = spec.partition(":")
    if not (sep and module_name and attribute):
        raise ValueError(f"reward must be given as module:function, got {spec!r}")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import the reward {spec!r}: {err}") from None
    if not callable(function):
        raise ValueError(f"the reward {spec!r} is not callable")
    return function


def make_brax_env(
    name: str,
    *,
    episode_length: int = 100,
    backend: str | None = None,
    reward: RewardFn | str | None = None,
) -> BraxTask:
    """Brax's registry env `name`, with a horizon and, optionally, a replacement reward (a
    function r(obs_next, action) or its `module:function` name)."""
    names = registry_names()
    if name not in names:
        raise ValueError(f"unknown Brax env {name!r}; expected one of {names}")
    if not (isinstance(episode_length, int) and episode_length > 0):
        raise ValueError(f"episode_length must be a positive integer, got {episode_length!r}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown Brax backend {backend!r}; expected one of {BACKENDS}")
    if isinstance(reward, str):
        reward = resolve_reward(reward)
    kwargs = {} if backend is None else {"backend": backend}
    with warnings.catch_warnings():
        # Brax's notice that its pipelines are unmaintained, as for the testbeds.
        warnings.filterwarnings("ignore", message="Brax System, piplines")
        env = brax_envs.get_environment(name, **kwargs)
    return BraxTask(env, name, episode_length, reward)


def inverted_pendulum_upright(obs: Float[Array, " 4"], action: Float[Array, " 1"]) -> Array:
    """A differentiable reward for `inverted_pendulum`: 1 with the pole upright, falling
    quadratically to 0 at the 0.2 rad where the env ends the episode. The env's own reward,
    1 per step, has no gradient: PODS can only learn from a reward that does."""
    del action
    return 1.0 - (obs[1] / 0.2) ** 2


__all__ = [
    "BACKENDS",
    "BraxTask",
    "inverted_pendulum_upright",
    "make_brax_env",
    "registry_names",
    "resolve_reward",
]
