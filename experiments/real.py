"""The run's real system, as the config describes it: a profile and an engine.

    env.real_profile   friction: the `real` testbed (the `env.real` node: inside the
                       simulator's family, where system identification must be exact)
                       lab: the `lab` testbed (the `env.lab` node: a lab rig's physics)
    real.engine        brax: the differentiable Brax twin of the profile itself
                       mujoco: the same rig in MuJoCo C (`sim2real.mujoco_lab`)
                       gym: a user's gymnasium env, `real.gym_id` (made with `real.gym_kwargs`),
                       mapped to the testbed's layout by `real.gym_adapter` ("module:name" of a
                       `sim2real.gym_adapter.GymAdapter`, or of a function returning one)

`real.gym_id` is a registered id, or `module:EnvId` as `gymnasium.make` takes it: the module
(which registers the env when imported) is imported first. The adapter's module is imported
before the id is looked up, so a module that registers its env beside its adapter needs no
`module:` prefix. The env is made once when the config is checked, and its spaces through the
adapter are checked against the testbed's layout: every mismatch is one line before any
compute.

The oracle trains on the profile's Brax twin; with `real.engine=gym` there is none.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import gymnasium
from omegaconf import DictConfig, OmegaConf

from experiments.schema import (
    ENGINES,
    ConfigError,
    build_lab,
    build_physics,
    check_real_profile,
)
from sim2real.gym_adapter import GymAdapter, check_gym_layout
from sim2real.real_system import RealSystem
from sim2real.testbeds import CartPole, make_testbed


@dataclasses.dataclass
class RealSpec:
    """What stands for the physical system in a run, and its differentiable twin."""

    engine: str
    twin: CartPole | None
    """The Brax testbed of the profile (the oracle's env); None for `engine=gym`."""
    episode_length: int
    make_env: Callable[[], gymnasium.Env] | None = None
    """A fresh gymnasium env of the real system (engines `mujoco` and `gym`)."""
    adapter: GymAdapter | None = None
    action_history: int = 0
    """Past commands the policy observes: the twin carries them, the boundary appends them to
    a gymnasium env's sensors."""
    gym_id: str | None = None
    """The registered id of a gymnasium real (`engine=gym`)."""

    @property
    def name(self) -> str:
        """What the real system is called: the twin's name, the MuJoCo C env's, or the
        gymnasium id (a user's env is not made, hardware not opened, to name it)."""
        if self.twin is not None and self.engine == "brax":
            return self.twin.name
        if self.gym_id is not None:
            return self.gym_id
        env = self.make_env()
        try:
            return str(getattr(env.unwrapped, "name", None) or env.spec.id)
        finally:
            env.close()

    def system(self, budget: int) -> RealSystem:
        """The real system behind the budgeted boundary."""
        if self.engine == "brax":
            return RealSystem(self.twin, budget)
        return RealSystem(
            self.make_env(),
            budget,
            adapter=self.adapter,
            episode_length=self.episode_length,
            action_history=self.action_history,
        )

    def evaluation_env(self, num_trajectories: int) -> Any:
        """What evaluation plays on: the Brax twin (batched, the same initial states as
        `sim`), or a real system of its own whose budget holds the evaluation's episodes
        (evaluation never spends a run's training budget)."""
        if self.engine == "brax":
            return self.twin
        return self.system(2 * num_trajectories * self.episode_length)


def _import(path: str, key: str) -> Any:
    module, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as err:  # a user's module may raise anything while it imports
        message = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(
            f"{key}: cannot import {path!r} ({type(err).__name__}: {message})"
        ) from None


def _gym_adapter(path: str | None) -> GymAdapter:
    if path is None:
        return GymAdapter()
    if ":" not in path:
        raise ConfigError(f"real.gym_adapter: give it as module:attribute, got {path!r}")
    adapter = _import(path, "real.gym_adapter")
    if not isinstance(adapter, GymAdapter) and callable(adapter):
        adapter = adapter()
    if not isinstance(adapter, GymAdapter):
        raise ConfigError(
            f"real.gym_adapter: {path!r} is a {type(adapter).__name__}, not a GymAdapter"
        )
    return adapter


def gym_env_id(gym_id: str) -> str:
    """The registered id of `real.gym_id`: for `module:EnvId`, EnvId once `module` (which
    registers it) is imported, as `gymnasium.make` does; one ConfigError line for a module
    that does not import or an id gymnasium does not know."""
    module, sep, env_id = gym_id.rpartition(":")
    if sep:
        if not module or not env_id:
            raise ConfigError(f"real.gym_id: give an env id or module:EnvId, got {gym_id!r}")
        try:
            importlib.import_module(module)
        except Exception as err:
            message = str(err).splitlines()[0] if str(err) else ""
            raise ConfigError(
                f"real.gym_id={gym_id}: cannot import module {module!r} "
                f"({type(err).__name__}: {message})"
            ) from None
    try:
        gymnasium.spec(env_id)
    except gymnasium.error.Error as err:
        hint = "" if sep else " (an env of your own module: real.gym_id=module:EnvId)"
        raise ConfigError(f"real.gym_id={gym_id}: {str(err).splitlines()[0]}{hint}") from None
    return env_id


def _check_gym_env(
    gym_id: str, make_env: Callable[[], gymnasium.Env], adapter: GymAdapter, sim: Any
) -> None:
    """Makes the env once and checks its spaces through the adapter against `sim`'s layout."""
    try:
        env = make_env()
    except Exception as err:
        message = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(
            f"real.gym_id={gym_id}: the env cannot be made ({type(err).__name__}: {message})"
        ) from None
    try:
        if sim is not None:
            check_gym_layout(env, adapter, sim.sensor_size, sim.action_size)
    except ValueError as err:
        raise ConfigError(f"real.gym_id={gym_id}: {err}") from None
    finally:
        env.close()


def build_real(cfg: DictConfig, common: dict, sim: Any = None) -> RealSpec:
    """The real system of `cfg` (see the module docstring); `common` holds the testbed
    arguments the sim was built with (episode length, backend, dtype, action history), and
    `sim`, the sim testbed, the layout a gymnasium real must speak (None: unchecked)."""
    env, real = cfg.env, cfg.real
    variant = check_real_profile(env)
    if real.engine not in ENGINES:
        raise ConfigError(f"real.engine: unknown engine {real.engine!r}; expected one of {ENGINES}")
    name = f"{env.system}_{env.task}_{variant}"
    if variant == "lab":
        physics, lab = build_lab(env.lab)
        profile = dict(physics=physics, lab=lab)
    else:
        profile = dict(physics=build_physics(env.real, "env.real"))
    try:
        twin = make_testbed(name, **profile, **common) if real.engine != "gym" else None
    except ValueError as err:
        raise ConfigError(f"env: {err}") from None
    spec = RealSpec(
        real.engine, twin, env.episode_length, action_history=common.get("action_history", 0)
    )
    if real.engine == "mujoco":
        from sim2real.mujoco_lab import MujocoCartPole

        def make_mujoco() -> gymnasium.Env:
            return MujocoCartPole(
                env.system,
                env.task,
                variant,
                episode_length=env.episode_length,
                n_frames=env.n_frames,
                **profile,
            )

        spec.make_env = make_mujoco
    elif real.engine == "gym":
        if real.gym_id is None:
            raise ConfigError("real.gym_id: engine=gym needs the gymnasium id of the real system")
        kwargs = OmegaConf.to_container(real.gym_kwargs, resolve=True)
        # The adapter's module first: importing it may register the env.
        spec.adapter = _gym_adapter(real.gym_adapter)
        env_id = spec.gym_id = gym_env_id(real.gym_id)
        spec.make_env = lambda: gymnasium.make(env_id, **kwargs)
        _check_gym_env(real.gym_id, spec.make_env, spec.adapter, sim)
    elif real.gym_id is not None or real.gym_adapter is not None:
        raise ConfigError(
            f"real.gym_id / real.gym_adapter are set, but real.engine={real.engine!r} "
            "(they choose the env of engine=gym)"
        )
    return spec


__all__ = ["RealSpec", "build_real", "gym_env_id"]
