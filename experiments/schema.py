"""Structured-config schemas: what hydra validates every YAML config group against.

The library's config dataclasses (`sim2real.Physics`, `pods.config.PODSConfig`, ...) are the one
source of truth for field names, types and defaults; the schemas here are derived from them,
so a field added there appears here. Those dataclasses are frozen and check their own ranges;
`build` turns a composed config into them, and a bad value fails there, before any compute,
with one line naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from baselines.brax_agents import APGConfig, PPOConfig
from baselines.energy_lqr import EnergyLQRConfig
from baselines.lqr import LQRConfig
from dynamics_models.factory import ModelConfig
from pods.config import HDSConfig, PODSConfig
from sim2real.lab import FrictionGradient, LabEffects
from sim2real.loop_config import LoopConfig
from sim2real.sysid import SysIDConfig
from sim2real.testbed_spec import PHYSICS_FIELDS, REAL_PROFILES, SYSTEMS, Physics


class ConfigError(ValueError):
    """A composed config that cannot run; its message is one line naming key and value."""


def _omegaconf_type(hint: Any) -> Any:
    """The annotation OmegaConf understands for a library dataclass field's type."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return Optional[_omegaconf_type(rest[0])]  # noqa: UP045 (OmegaConf needs Optional)
        return Any
    if dataclasses.is_dataclass(hint):
        # A nested library config (PPO's PhysicsRanges): a mapping the library converts.
        return Any
    if typing.get_origin(hint) is tuple:
        return list[args[0]] if args and args[-1] is Ellipsis else Any
    return hint


def schema_of(library_config: type, name: str, extra: dict[str, Any] | None = None) -> type:
    """A mutable dataclass with `library_config`'s fields and defaults, for a ConfigStore."""
    hints = typing.get_type_hints(library_config)
    fields = []
    for f in dataclasses.fields(library_config):
        default = f.default
        if isinstance(default, tuple):
            spec = dataclasses.field(default_factory=lambda d=default: list(d))
        else:
            spec = dataclasses.field(default=default)
        fields.append((f.name, _omegaconf_type(hints[f.name]), spec))
    for key, (hint, default) in (extra or {}).items():
        spec = (
            default
            if isinstance(default, dataclasses.Field)
            else dataclasses.field(default=default)
        )
        fields.append((key, hint, spec))
    return dataclasses.make_dataclass(name, fields)


def merged_schema(name: str, *schemas: type) -> type:
    """One schema with the fields of each of `schemas` (whose field names must differ)."""

    def copy(f: dataclasses.Field) -> dataclasses.Field:
        if f.default is not dataclasses.MISSING:
            return dataclasses.field(default=f.default)
        return dataclasses.field(default_factory=f.default_factory)

    return dataclasses.make_dataclass(
        name, [(f.name, f.type, copy(f)) for schema in schemas for f in dataclasses.fields(schema)]
    )


def to_library_config(library_config: type, node: DictConfig | dict, key: str, skip=()) -> Any:
    """Builds a library config from a config node; a bad value raises one ConfigError line."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    hints = typing.get_type_hints(library_config)
    kwargs = {}
    for name, value in values.items():
        if name in skip:
            continue
        if name not in hints:
            raise ConfigError(f"{key}.{name}: unknown key (value {value!r})")
        origin = typing.get_origin(hints[name])
        kwargs[name] = tuple(value) if origin is tuple and isinstance(value, list) else value
    try:
        return library_config(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {message}") from None


PhysicsSchema = schema_of(Physics, "PhysicsSchema")
LabSchema = merged_schema("LabSchema", PhysicsSchema, schema_of(LabEffects, "LabEffectsSchema"))
"""The lab profile in one flat node: `Physics`'s fields (the lab's in-family part) and
`LabEffects`'s (the rest), e.g. env.lab.latency_steps=2 env.lab.slider_friction=0.5."""
FrictionGradientSchema = schema_of(FrictionGradient, "FrictionGradientSchema")

ENGINES = ("brax", "mujoco", "gym")
"""What stands for the physical system: the Brax twin of the profile, the same rig in MuJoCo C
(`sim2real.mujoco_lab`), or a user's gymnasium env (`real.gym_id`, `real.gym_adapter`)."""


@dataclasses.dataclass
class EnvSchema:
    """A testbed: which system and task, the physics of its `sim`, and the real system's
    profile: `friction` (the `real` node, inside the simulator's family) or `lab` (the
    `lab` node: a lab rig's physics, beyond it)."""

    system: str = "cartpole"
    task: str = "swingup"
    episode_length: int = 100
    backend: str = "chain"
    """How sim and the Brax twin of the real are stepped (sim2real.testbeds.BACKENDS): `chain`,
    the generalized pipeline's equations in closed form (2.5x faster to a solved swing-up,
    README "Speed to a solved policy"), or a Brax pipeline, `generalized` or `mjx`."""
    n_frames: Optional[int] = None  # noqa: UP045 (OmegaConf needs Optional)
    """Physics steps per control period, for sim and the real alike; null: the system's
    (sim2real.testbed_spec.PHYSICS_STEP: 2 x 25 ms for the cartpole, 5 x 10 ms for the double).
    The control period is the physics step times this; the lab's own step divides it."""
    # Any, not int: a non-integer then reaches `build_envs`'s one-line error instead of
    # OmegaConf's multi-line one.
    action_history: Any = 0
    """How many past commands the policy observes after the sensors, the newest first
    (`pods.action_history`): the commands the lab's latency still has in flight. The Brax
    envs carry them; a MuJoCo C or gymnasium real gets them from the real-system boundary."""
    real_profile: str = "friction"
    sim: Any = dataclasses.field(
        default_factory=lambda: PhysicsSchema(**dataclasses.asdict(Physics.nominal()))
    )
    real: Any = dataclasses.field(default_factory=PhysicsSchema)
    lab: Any = dataclasses.field(
        default_factory=lambda: LabSchema(**dataclasses.asdict(Physics.lab()))
    )
    friction_gradient: Any = dataclasses.field(default_factory=FrictionGradientSchema)
    """How every Brax testbed of the run (sim, and the real's twin the oracle trains on and
    HDS collects from) differentiates the slider's friction: through a smooth surrogate
    (`sim2real.lab.FrictionGradient`), e.g. env.friction_gradient.friction_velocity=0.1;
    null: the law's own derivative. The rollouts step the same physics either way: it changes
    gradients only, where a profile has friction (not `sim`'s nominal physics). On, the lab's
    action improvement does not stall at rest (docs/research-log/
    2026-12-07-stiction-gradients.md)."""


@dataclasses.dataclass
class BraxEnvSchema:
    """Any env of Brax's registry (`env=brax env.name=reacher`): sim only, no `real` variant."""

    system: str = "brax"
    name: str = "reacher"
    """The name `brax.envs.get_environment` takes."""
    task: str = "${.name}"
    """What run directories and tables call the task: the env's name."""
    episode_length: int = 100
    """The horizon PODS rolls out and Brax's trainers end episodes at."""
    backend: Optional[str] = None  # noqa: UP045 (OmegaConf needs Optional)
    """Brax's physics pipeline; None keeps the env's own default."""
    reward: Optional[str] = None  # noqa: UP045 (OmegaConf needs Optional)
    """`module:function` of a differentiable reward r(obs_next, action) that replaces the
    env's own (needed where that has no gradient, and by PODS's second order)."""


PODSSchema = schema_of(PODSConfig, "PODSSchema", extra={"name": (str, "pods")})
HDSSchema = schema_of(HDSConfig, "HDSSchema", extra={"name": (str, "hds")})
HDSSysIDSchema = schema_of(HDSConfig, "HDSSysIDSchema", extra={"name": (str, "hds_sysid")})
APGSchema = schema_of(APGConfig, "APGSchema", extra={"name": (str, "apg")})
PPOSchema = schema_of(PPOConfig, "PPOSchema", extra={"name": (str, "ppo")})
LQRSchema = schema_of(LQRConfig, "LQRSchema", extra={"name": (str, "lqr")})
EnergyLQRSchema = schema_of(EnergyLQRConfig, "EnergyLQRSchema", extra={"name": (str, "energy_lqr")})
ModelSchema = schema_of(ModelConfig, "ModelSchema")
LOOP_EXTRAS = ("engine", "gym_id", "gym_adapter", "gym_kwargs")
"""Keys of the `real` node that choose the real system rather than how its data is spent."""
LoopSchema = schema_of(
    LoopConfig,
    "LoopSchema",
    extra={
        "engine": (str, "brax"),
        "gym_id": (Optional[str], None),  # noqa: UP045 (OmegaConf needs Optional)
        "gym_adapter": (Optional[str], None),  # noqa: UP045
        "gym_kwargs": (Any, dataclasses.field(default_factory=dict)),
    },
)
SysIDSchema = schema_of(SysIDConfig, "SysIDSchema")


@dataclasses.dataclass
class RunSchema:
    """What a run does around training: checkpoints, evaluation, artifacts."""

    checkpoint_every: int = 1
    """Epochs between checkpoints (the last epoch is always checkpointed)."""
    eval_trajectories: int = 32
    """Held-out initial states for the final evaluation in sim and real."""
    animation: bool = True
    """Write a GIF of the final policy in sim and real."""
    progress_bar: bool = True
    store_programs: bool = True
    """Keep the compiled PODS epoch beside the compilation cache (`pods.programs`), so that
    the next run of the same config loads it instead of tracing it again."""
    devices: Optional[int] = None  # noqa: UP045 (OmegaConf needs Optional)
    """Local devices the rollouts are sharded over, the first n of them (null: all;
    `pods.sharding`). One device runs the unsharded program."""
    compare: list[str] = dataclasses.field(default_factory=list)
    """Algorithms also trained, with the same env, seed and overrides, into subfolders of this
    run directory, e.g. [pods, oracle]: the table compares them, and an `oracle` among them
    gives every run its normalized real score."""


@dataclasses.dataclass
class Config:
    env: Any = MISSING
    algo: Any = MISSING
    model: Any = MISSING
    """The dynamics model HDS fits to real data (`model/` group)."""
    real: Any = dataclasses.field(default_factory=LoopSchema)
    """How real data is spent: the budget, the initial episodes, collections (LoopConfig)."""
    sysid: Any = dataclasses.field(default_factory=SysIDSchema)
    """How pods_sysid fits the physics to its real data (SysIDConfig)."""
    run: RunSchema = dataclasses.field(default_factory=RunSchema)
    seed: int = 0


def register_schemas(store: ConfigStore | None = None) -> None:
    """Stores the schemas under `schema/`, which the option files of `env/`, `algo/` and
    `model/` extend (`- /schema/env/testbed@_here_`): stored in those groups, a schema would
    be listed among their options."""
    store = store or ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="schema/env", name="testbed", node=EnvSchema)
    store.store(group="schema/env", name="brax", node=BraxEnvSchema)
    store.store(group="schema/algo", name="pods", node=PODSSchema)
    store.store(group="schema/algo", name="hds", node=HDSSchema)
    store.store(group="schema/algo", name="hds_sysid", node=HDSSysIDSchema)
    store.store(group="schema/algo", name="apg", node=APGSchema)
    store.store(group="schema/algo", name="ppo", node=PPOSchema)
    store.store(group="schema/algo", name="lqr", node=LQRSchema)
    store.store(group="schema/algo", name="energy_lqr", node=EnergyLQRSchema)
    store.store(group="schema/model", name="model", node=ModelSchema)


def build_physics(node: DictConfig, key: str) -> Physics:
    return to_library_config(Physics, node, key)


def build_lab(node: DictConfig, key: str = "env.lab") -> tuple[Physics, LabEffects]:
    """The lab profile's `Physics` and `LabEffects` from its flat node."""
    values = OmegaConf.to_container(node, resolve=True)
    physics = to_library_config(Physics, {k: values[k] for k in PHYSICS_FIELDS}, key)
    effects = {k: v for k, v in values.items() if k not in PHYSICS_FIELDS}
    return physics, to_library_config(LabEffects, effects, key)


def build_friction_gradient(
    node: DictConfig | None, key: str = "env.friction_gradient"
) -> FrictionGradient | None:
    """The testbeds' `FrictionGradient`; None (the law's own derivative) for a null node."""
    if node is None:
        return None
    return to_library_config(FrictionGradient, node, key)


def check_real_profile(node: DictConfig) -> str:
    """The testbed variant of `env.real_profile`."""
    if node.real_profile not in REAL_PROFILES:
        raise ConfigError(
            f"env.real_profile: unknown profile {node.real_profile!r}; "
            f"expected one of {tuple(REAL_PROFILES)}"
        )
    return REAL_PROFILES[node.real_profile]


def check_env(node: DictConfig) -> None:
    if node.system not in SYSTEMS:
        raise ConfigError(
            f"env.system: unknown system {node.system!r}; expected one of {tuple(SYSTEMS)}"
        )
