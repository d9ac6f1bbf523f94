"""What a cart-pole testbed is, whatever engine steps it: the systems, tasks and variants, the
physics a variant adds (`Physics`, and where a Brax `System` carries it), the task reward, the
testbed names, and the Brax `System` a resolved testbed is built on (`brax_system`).

Split from `sim2real.testbeds` (the Brax env, `CartPole`) so that the other engine, MuJoCo C
(`sim2real.mujoco_lab`), builds from the same resolved arguments (`resolve_testbed`) and
scores with the same formula (`task_reward`) without the env class.

Reward, for a state after the step and the action that led to it (no alive bonus, so every
term has a gradient):

    r = mean_i (1 + cos phi_i) / 2  -  w_x x^2  -  w_v sum_i dphi_i^2  -  w_u u^2

with phi_i the absolute angle of pole i (0 = up), x the cart position and u the command.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from brax.base import System
from brax.io import mjcf
from jaxtyping import Array, Float

import sim2real.lab as lab_physics
from pods.validation import require
from sim2real.chain_body import apply_body_mismatch
from sim2real.lab import LabEffects

SYSTEMS = {"cartpole": 1, "double_cartpole": 2}
"""Testbed systems and their number of poles."""
PHYSICS_STEP = {"cartpole": (0.025, 2), "double_cartpole": (0.01, 5)}
"""Default (timestep, physics steps per env step): a 0.05 s control period for both. The
double pole's fast chaotic motion blows semi-implicit Euler up at 0.025 s."""
TASKS = ("balance", "swingup")
VARIANTS = ("sim", "real", "lab")
"""`sim`: the nominal body, frictionless; `real`: the friction profile (in the simulator's
family); `lab`: the lab profile (beyond it)."""
REAL_PROFILES = {"friction": "real", "lab": "lab"}
"""The real systems a run can be trained for, by profile name: the testbed variant of each."""


@dataclasses.dataclass(frozen=True)
class Physics:
    """The physics a `real` testbed adds to the nominal, frictionless `sim` body.

    The defaults describe the `real` system; `Physics.nominal()` is the `sim` one. With every
    extra term zeroed and `actuator_gain=1`, `real` reproduces `sim` exactly.
    """

    slider_damping: float = 1.0
    """Viscous damping on the cart's slider, N s/m (force -c * cart velocity)."""
    hinge_damping: float = 0.01
    """Viscous damping at each pole hinge, N m s/rad (torque -c * relative angular velocity)."""
    slider_friction: float = 1.0
    """Coulomb-like friction on the slider, N: force -F * tanh(cart velocity / friction_velocity)."""
    friction_velocity: float = 0.05
    """Velocity scale of the friction's tanh, m/s; smaller is closer to true Coulomb friction."""
    actuator_gain: float = 0.8
    """Fraction of the commanded motor force the actuator delivers."""

    def __post_init__(self):
        for name in ("slider_damping", "hinge_damping", "slider_friction"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, self, name, "a finite number >= 0")
        for name in ("friction_velocity", "actuator_gain"):
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, self, name, "a finite number > 0")

    @classmethod
    def nominal(cls) -> Physics:
        """The `sim` variant: no damping, no friction, the actuator delivers what it is told."""
        return cls(slider_damping=0.0, hinge_damping=0.0, slider_friction=0.0, actuator_gain=1.0)

    @classmethod
    def lab(cls) -> Physics:
        """The lab profile's damping, Coulomb friction and actuator gain: the part of the lab
        rig the simulator's family can describe. The friction's tanh switches sign within
        5 mm/s, sharp enough for the breakaway force of `LabEffects.stiction` to hold the cart
        (its 5 ms step keeps RK4 stable on that slope)."""
        return cls(
            slider_damping=0.8,
            hinge_damping=0.008,
            slider_friction=1.0,
            friction_velocity=0.005,
            actuator_gain=0.85,
        )

    @classmethod
    def of_variant(cls, variant: str) -> Physics:
        if variant not in VARIANTS:
            raise ValueError(f"unknown testbed variant {variant!r}; expected one of {VARIANTS}")
        return {"sim": cls.nominal, "real": cls, "lab": cls.lab}[variant]()


PHYSICS_FIELDS = tuple(field.name for field in dataclasses.fields(Physics))
"""Names of the physical parameters, in the order of `Physics`'s fields."""

PhysicsValues = dict[str, Float[Array, ""]]
"""Physical parameters as (possibly traced or batched) arrays, keyed by `PHYSICS_FIELDS`."""

_MOTOR = "motor"
"""The actuator whose bias parameters carry the physics (see `physics_to_sys`)."""


def _physics_slot(sys: System) -> tuple[int, slice]:
    row = sys.mj_model.actuator(_MOTOR).id
    return row, slice(0, len(PHYSICS_FIELDS))


def physics_to_sys(sys: System, values: PhysicsValues | Physics) -> System:
    """`sys` carrying the given physical parameters (any subset of `PHYSICS_FIELDS`).

    They are stored in the motor's `actuator_biasprm[:5]`, in the order of `PHYSICS_FIELDS`.
    The motor's bias type is `none`, so no Brax pipeline reads those columns: `mjx` skips the
    bias of such an actuator, and `generalized` reads only the bias `brax.io.mjcf` copied into
    `sys.actuator` when the model was loaded (zero). The testbed's step applies them itself,
    exactly once. Values may be traced (gradients) or batched like a stacked `sys` (domain
    randomization); they are cast to the system's float dtype.
    """
    if isinstance(values, Physics):
        values = dataclasses.asdict(values)
    unknown = sorted(set(values) - set(PHYSICS_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown physical parameters {unknown}; expected names in {PHYSICS_FIELDS}"
        )
    row, columns = _physics_slot(sys)
    biasprm = sys.actuator_biasprm
    slot = biasprm[..., row, columns]
    for i, name in enumerate(PHYSICS_FIELDS):
        if name in values:
            slot = slot.at[..., i].set(jnp.asarray(values[name], biasprm.dtype))
    return sys.replace(actuator_biasprm=biasprm.at[..., row, columns].set(slot))


def physics_from_sys(sys: System) -> PhysicsValues:
    """The physical parameters `sys` carries (see `physics_to_sys`), as arrays (batched like
    `sys` where a randomization stacked systems on leading axes)."""
    row, columns = _physics_slot(sys)
    slot = sys.actuator_biasprm[..., row, columns]
    return {name: slot[..., i] for i, name in enumerate(PHYSICS_FIELDS)}


def physics_randomization(sys: System, values: PhysicsValues) -> tuple[System, System]:
    """A stack of systems that differ only in their physics, and its `vmap` axes: what a Brax
    `randomization_fn` returns (`brax.envs.wrappers.training.wrap(env, randomization_fn=...)`).

    `values` maps parameter names to arrays with one entry per environment; the other
    parameters stay as `sys` has them. Only the physics slot is batched, so the rest of the
    system is not copied per environment. For Brax's trainers, which pass one key per env:

        def randomization_fn(sys, rng):
            gain = jax.vmap(lambda k: jax.random.uniform(k, (), minval=0.6, maxval=1.0))(rng)
            return physics_randomization(sys, {"actuator_gain": gain})
    """
    sizes = {jnp.shape(v) for v in values.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(
            f"physics_randomization wants 1-d values of one length, got shapes {sizes}"
        )
    (n,) = next(iter(sizes))
    stacked = sys.replace(
        actuator_biasprm=jnp.broadcast_to(sys.actuator_biasprm, (n, *sys.actuator_biasprm.shape))
    )
    in_axes = jax.tree.map(lambda _: None, sys).replace(actuator_biasprm=0)
    return physics_to_sys(stacked, values), in_axes


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """Weights of the smooth penalties in the task reward (see the module docstring)."""

    cart_position: float = 0.05
    """w_x: cost per m^2 of cart displacement from the origin."""
    angular_velocity: float = 0.001
    """w_v: cost per (rad/s)^2 of each pole's angular velocity."""
    action: float = 0.01
    """w_u: cost per unit^2 of motor command (commands lie in [-1, 1])."""


@dataclasses.dataclass(frozen=True)
class InitialStateNoise:
    """Half-widths of the uniform noise around a task's nominal initial state."""

    angle: float = 0.1
    """rad, on every hinge."""
    velocity: float = 0.05
    """m/s or rad/s, on every joint."""
    cart_position: float = 0.1
    """m."""


def task_reward(obs: Any, action: Any, n_poles: int, weights: RewardWeights, *, xp: Any) -> Any:
    """The task reward (module docstring) for arriving at observation `obs` by command
    `action`, in the array module `xp` (numpy or jax.numpy): the Brax testbeds and the
    MuJoCo C engine (`sim2real.mujoco_lab`) score with this one formula."""
    cos_sin = obs[1 : 1 + 2 * n_poles].reshape(n_poles, 2)
    # Absolute pole angles are cumulative sums of the relative hinge angles. arctan2 also
    # accepts (cos, sin) pairs off the unit circle, as a learned model may predict them.
    absolute = xp.cumsum(xp.arctan2(cos_sin[:, 1], cos_sin[:, 0]))
    upright = xp.mean(0.5 * (1.0 + xp.cos(absolute)))
    # A closed slice: an observation may carry an action history after the sensors.
    cart_x, pole_velocities = obs[0], obs[2 + 2 * n_poles : 2 + 3 * n_poles]
    return (
        upright
        - weights.cart_position * cart_x**2
        - weights.angular_velocity * xp.sum(pole_velocities**2)
        - weights.action * xp.sum(action**2)
    )


@dataclasses.dataclass(frozen=True)
class CartPoleSpec:
    """A testbed's constructor arguments checked and resolved (the variant's physics, the lab's
    effects, step and physics steps per control period): what every engine builds from."""

    system: str
    task: str
    variant: str
    physics: Physics
    lab: LabEffects | None
    """The `lab` variant's effects; None for the others."""
    timestep: float
    """s, one physics step."""
    n_frames: int
    """Physics steps per control period."""
    episode_length: int

    @property
    def n_poles(self) -> int:
        return SYSTEMS[self.system]


def resolve_testbed(
    system: str,
    task: str,
    variant: str,
    *,
    physics: Physics | None = None,
    lab: LabEffects | None = None,
    episode_length: int = 100,
    timestep: float | None = None,
    n_frames: int | None = None,
) -> CartPoleSpec:
    """The rules of `CartPole`'s arguments (see its constructor), engine aside: the system's
    step unless overridden, the lab's own step (`LabEffects.timestep`) dividing the control
    period, lab effects only on the `lab` variant (`LabEffects()` by default)."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown testbed system {system!r}; expected one of {tuple(SYSTEMS)}")
    if task not in TASKS:
        raise ValueError(f"unknown testbed task {task!r}; expected one of {TASKS}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown testbed variant {variant!r}; expected one of {VARIANTS}")
    if not (isinstance(episode_length, int) and episode_length > 0):
        raise ValueError(f"episode_length must be a positive integer, got {episode_length!r}")
    timestep = PHYSICS_STEP[system][0] if timestep is None else timestep
    n_frames = PHYSICS_STEP[system][1] if n_frames is None else n_frames
    if not (timestep > 0 and isinstance(n_frames, int) and n_frames > 0):
        raise ValueError(f"timestep and n_frames must be positive, got {timestep!r}, {n_frames!r}")
    if lab is not None and variant != "lab":
        raise ValueError(f"lab effects belong to the `lab` variant, not {variant!r}")
    if variant == "lab":
        lab = LabEffects() if lab is None else lab
        if lab.timestep is not None:
            n_frames = lab_physics.physics_steps(timestep * n_frames, lab.timestep)
            timestep = lab.timestep
    return CartPoleSpec(
        system=system,
        task=task,
        variant=variant,
        physics=Physics.of_variant(variant) if physics is None else physics,
        lab=lab,
        timestep=timestep,
        n_frames=n_frames,
        episode_length=episode_length,
    )


def asset_xml(system: str) -> str:
    """The MJCF of a testbed system (`sim2real/assets/<system>.xml`)."""
    return (resources.files("sim2real") / "assets" / f"{system}.xml").read_text()


def load_mj_model(system: str) -> mujoco.MjModel:
    """The MuJoCo model of a testbed system's nominal body."""
    return mujoco.MjModel.from_xml_string(asset_xml(system))


def list_testbeds() -> list[str]:
    """Every registered testbed name, e.g. `cartpole_balance_sim`."""
    return [f"{s}_{t}_{v}" for s in SYSTEMS for t in TASKS for v in VARIANTS]


def parse_testbed_name(name: str) -> tuple[str, str, str]:
    """`double_cartpole_swingup_real` -> (`double_cartpole`, `swingup`, `real`)."""
    for system in sorted(SYSTEMS, key=len, reverse=True):
        rest = name.removeprefix(system + "_")
        if rest != name and rest.count("_") == 1:
            task, variant = rest.split("_")
            if task in TASKS and variant in VARIANTS:
                return system, task, variant
    raise ValueError(f"unknown testbed {name!r}; expected one of {list_testbeds()}")


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(leaf):
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(leaf, dtype)
        return leaf

    return jax.tree.map(cast, tree)


def brax_system(spec: CartPoleSpec, dtype: Any = None) -> System:
    """The Brax `System` of a resolved testbed: its MJCF body (off its nominal by the lab's
    body mismatch, where it has one), its physics step, its float dtype (None: as loaded) and
    its physics (`physics_to_sys`)."""
    with warnings.catch_warnings():
        # Brax's notice that its pipelines are unmaintained: known, and the reason the
        # testbeds pin brax and test their physics themselves.
        warnings.filterwarnings("ignore", message="Brax System, piplines")
        if spec.lab is not None and spec.lab.body_mismatch:
            sys = mjcf.load_model(apply_body_mismatch(load_mj_model(spec.system), spec.lab))
        else:
            sys = mjcf.loads(asset_xml(spec.system))
    # An exact mass-matrix solve instead of Brax's 10-iteration approximate inverse: the
    # matrix is at most 3x3, and exact dynamics keep gradients and finite differences
    # consistent.
    sys = sys.tree_replace({"opt.timestep": spec.timestep, "matrix_inv_iterations": 0})
    if dtype is not None:
        sys = _cast_floats(sys, dtype)
    sys = physics_to_sys(sys, spec.physics)
    return sys
