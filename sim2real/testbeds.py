"""Cart-pole testbeds in a `sim`, a `real` and a `lab` variant, as Brax `PipelineEnv`s.

The body (masses, lengths, motor) lives in the MJCF assets beside this file. What makes the
`real` system (the "friction" profile) real is `Physics`: viscous damping on the slider and
the hinges, a smooth Coulomb-like friction on the slider, and an actuator that delivers only a
fraction of the commanded force. `sim` is the same body with all of that switched off. The
`real` profile lies inside the simulator's own parameter family, so system identification
recovers it exactly: it is the control. The `lab` variant (the "lab" profile) is `Physics`
plus `sim2real.lab.LabEffects`, what a physical rig has beyond that family: actuator latency
and lag, stiction, a cable and cogging, a body off its nominal, encoder quantization and
velocity noise, and near-continuous time (RK4 at 5 ms). It is the differentiable twin of the
lab rig; `sim2real.mujoco_lab` runs the same rig in MuJoCo C.

The step reads those five numbers from the Brax `System` (`physics_from_sys`), not from Python
floats, so that they are ordinary leaves of `env.sys`: Brax's domain randomization (which swaps
`env.sys` under `vmap`) can vary them per environment, and system identification can
differentiate a rollout with respect to them (`CartPole.with_physics_values`).

Every task x variant is registered with Brax under a stable name, `{system}_{task}_{variant}`
(`cartpole_balance_sim`, `double_cartpole_swingup_real`, ...), so
`brax.envs.get_environment(name)` and Brax's own trainers work on them.

Reward, for a state after the step and the action that led to it (no alive bonus, so every
term has a gradient):

    r = mean_i (1 + cos phi_i) / 2  -  w_x x^2  -  w_v sum_i dphi_i^2  -  w_u u^2

with phi_i the absolute angle of pole i (0 = up), x the cart position and u the command.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from brax import actuator, envs
from brax.base import System
from brax.envs.base import PipelineEnv, State
from brax.io import mjcf
from flax import struct
from jaxtyping import Array, Float

import sim2real.lab as lab_physics
from pods.action_history import check_action_history, push_command, with_history
from pods.validation import require
from sim2real.lab import FrictionGradient, LabEffects

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
BACKENDS = ("generalized", "mjx", "chain")
"""How the testbeds are simulated. `generalized` and `mjx` are Brax pipelines (`positional`
and `spring` were tried and left out: their joint springs let the light pole spin up or blow
up). `chain` steps the same equations in closed form (`sim2real.lab.ChainBody`) with the
generalized pipeline's semi-implicit Euler: its states agree with `generalized` to rounding
(tested), and its programs are a fraction of the size, so they compile and run faster (README
"Speed to a solved policy"). Its pipeline state is a `ChainState`: joint coordinates and
velocities, no link frames."""


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


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(leaf):
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(leaf, dtype)
        return leaf

    return jax.tree.map(cast, tree)


@struct.dataclass
class ChainState:
    """The `chain` backend's pipeline state: what its closed-form step needs and changes."""

    q: Float[Array, " nq"]
    qd: Float[Array, " nv"]


@struct.dataclass
class LabState:
    """What the lab rig remembers between control periods, carried in `State.info["lab"]`."""

    commands: Float[Array, "m act"]
    """The last m commands sent (oldest first), which the latency still has to deliver."""
    motor: Float[Array, " act"]
    """The lagged command the motor delivers now (times the gear: the force, N)."""
    key: jax.Array
    """The sensors' noise stream."""


class CartPole(PipelineEnv):
    """A cart-pole with `n_poles` poles in series: one env class for every testbed.

    Observation: cart position, (cos, sin) of each hinge angle, then the joint velocities
    (the `sensor_size` sensors); with `action_history=m`, then the last m commands, the newest
    first (`pods.action_history`). Action: one motor command in [-1, 1] (saturating), scaled
    by the motor's gear (10 N).

    `physics` is the `Physics` the env was built with, kept for display and for rebuilding the
    env; the step reads the physical parameters from `sys` (see `physics_to_sys`), so an env
    whose `sys` was swapped (domain randomization, `with_physics_values`) steps with those.

    `lab` (the `lab` variant's `LabEffects`, None for the others) adds the rig's latency, motor
    lag, stiction, cable and cogging forces, body mismatch, sensors and integrator. The policy
    then observes what the encoders read (`State.obs`), while the reward is the task's on the
    true state: the task is to hold the physical pole up, not its reading.
    """

    def __init__(
        self,
        system: str = "cartpole",
        task: str = "balance",
        variant: str = "sim",
        *,
        physics: Physics | None = None,
        lab: LabEffects | None = None,
        friction_gradient: FrictionGradient | None = None,
        reward_weights: RewardWeights = RewardWeights(),
        initial_noise: InitialStateNoise = InitialStateNoise(),
        episode_length: int = 100,
        backend: str = "generalized",
        timestep: float | None = None,
        n_frames: int | None = None,
        dtype: Any = None,
        action_history: int = 0,
        **kwargs,
    ):
        """Builds a testbed.

        Args:
          system: `cartpole` or `double_cartpole`.
          task: `balance` (start near upright) or `swingup` (start hanging down).
          variant: `sim`, `real` or `lab`; chooses the default `physics`.
          physics: overrides the variant's physics.
          lab: the `lab` variant's effects (default `LabEffects()`); only that variant has them.
          friction_gradient: a smooth surrogate for the slider force's derivative (None: the
            law's own); the rollouts' values are unchanged (`sim2real.lab.FrictionGradient`).
          reward_weights: penalties of the task reward.
          initial_noise: spread of the initial states.
          episode_length: the horizon a rollout or a trainer should use, in env steps.
          backend: `generalized` (default) or `mjx` (Brax pipelines), or `chain` (the same
            equations in closed form; see BACKENDS).
          timestep: physics timestep in seconds (default: PHYSICS_STEP of the system).
          n_frames: physics steps per env step; the control period is timestep * n_frames.
          dtype: float dtype of the system (jnp.float64 needs `jax.enable_x64`).
          action_history: how many past commands the policy observes after the sensors (the
            commands as sent, before the gain; the lab's latency queue is separate).
        """
        self.action_history = check_action_history(action_history)
        if backend not in BACKENDS:
            raise ValueError(
                f"unsupported Brax backend {backend!r} for the testbeds; expected one of {BACKENDS}"
            )
        spec = resolve_testbed(
            system,
            task,
            variant,
            physics=physics,
            lab=lab,
            episode_length=episode_length,
            timestep=timestep,
            n_frames=n_frames,
        )
        lab = spec.lab
        if lab is not None and lab.integrator == "rk4" and backend == "mjx":
            raise ValueError(
                "the lab's RK4 integrator runs on the generalized or chain backend, not 'mjx'"
            )
        self.system_name, self.task, self.variant = system, task, variant
        self.physics, self.lab = spec.physics, lab
        if not (friction_gradient is None or isinstance(friction_gradient, FrictionGradient)):
            raise ValueError(
                f"friction_gradient must be None or a FrictionGradient, got {friction_gradient!r}"
            )
        self.friction_gradient = friction_gradient
        self.reward_weights = reward_weights
        self.initial_noise = initial_noise
        self.episode_length = episode_length
        self.n_poles = spec.n_poles

        with warnings.catch_warnings():
            # Brax's notice that its pipelines are unmaintained: known, and the reason the
            # testbeds pin brax and test their physics themselves.
            warnings.filterwarnings("ignore", message="Brax System, piplines")
            if lab is not None and lab.body_mismatch:
                sys = mjcf.load_model(lab_physics.apply_body_mismatch(load_mj_model(system), lab))
            else:
                sys = mjcf.loads(asset_xml(system))
        # An exact mass-matrix solve instead of Brax's 10-iteration approximate inverse: the
        # matrix is at most 3x3, and exact dynamics keep gradients and finite differences
        # consistent.
        sys = sys.tree_replace({"opt.timestep": spec.timestep, "matrix_inv_iterations": 0})
        if dtype is not None:
            sys = _cast_floats(sys, dtype)
        sys = physics_to_sys(sys, self.physics)
        closed_form = backend == "chain"
        # The chain backend keeps Brax's system (actuators, physics parameters) and replaces
        # only the pipeline's step.
        pipeline = "generalized" if closed_form else backend
        super().__init__(sys=sys, backend=pipeline, n_frames=spec.n_frames, **kwargs)
        self._closed_form = closed_form
        if closed_form or lab is not None:
            self._chain = lab_physics.ChainBody.of_model(sys.mj_model)
        else:
            self._chain = None

    @property
    def backend(self) -> str:
        """`chain`, or the Brax pipeline's name: what rebuilds this env (a saved residual
        model's simulator, say)."""
        return "chain" if self._closed_form else super().backend

    @property
    def name(self) -> str:
        return f"{self.system_name}_{self.task}_{self.variant}"

    @property
    def action_size(self) -> int:
        return 1

    @property
    def sensor_size(self) -> int:
        """The observation's leading entries that the sensors read."""
        return 1 + 2 * self.n_poles + 1 + self.n_poles

    @property
    def observation_size(self) -> int:
        return self.sensor_size + self.action_history * self.action_size

    def with_action_history(self, action_history: int) -> CartPole:
        """This env observing the last `action_history` commands (0: the sensors alone), its
        physics unchanged: how a dataset's sensor observations are replayed in a simulator
        whose policy observes a history."""
        env = copy.copy(self)
        env.action_history = check_action_history(action_history)
        return env

    def _no_history(self) -> Float[Array, " history"]:
        return jnp.zeros((self.action_history * self.action_size,), self.dtype)

    def _observation(
        self, sensors: Float[Array, " sensors"], state: State, action: Float[Array, 1]
    ) -> Float[Array, " obs"]:
        """The observation after `action` was commanded in `state`: the sensors, and the
        history of `state`'s observation with `action` pushed in."""
        history = push_command(state.obs[self.sensor_size :], action)
        return with_history(sensors, history)

    @property
    def pole_lengths(self) -> tuple[float, ...]:
        """Length of each pole, m, from its capsule in the MJCF."""
        model = self.sys.mj_model
        return tuple(
            2 * float(model.geom_size[model.geom(f"pole{i}" if self.n_poles > 1 else "pole").id, 1])
            for i in range(1, self.n_poles + 1)
        )

    @property
    def dtype(self):
        return self.sys.init_q.dtype

    def reset(self, rng: jax.Array) -> State:
        noise = self.initial_noise
        key_x, key_angle, key_qd = jax.random.split(rng, 3)
        nq = 1 + self.n_poles
        x = jax.random.uniform(key_x, (1,), self.dtype, -noise.cart_position, noise.cart_position)
        angles = jax.random.uniform(
            key_angle, (self.n_poles,), self.dtype, -noise.angle, noise.angle
        )
        if self.task == "swingup":
            # Hanging down: the first hinge at pi, the others straight in line with it.
            angles = angles.at[0].add(jnp.pi)
        qd = jax.random.uniform(key_qd, (nq,), self.dtype, -noise.velocity, noise.velocity)
        pipeline_state = self.pipeline_init(jnp.concatenate([x, angles]), qd)
        zero = jnp.zeros((), self.dtype)
        if self.lab is None:
            obs = with_history(
                self.observe(pipeline_state.q, pipeline_state.qd), self._no_history()
            )
            return State(pipeline_state, obs, zero, zero)
        # The lab's own stream, folded off the reset key: the initial states stay those of
        # `sim` and `real` for the same key, so all three are evaluated from the same starts.
        key_sensor, key_next = jax.random.split(jax.random.fold_in(rng, _LAB_STREAM))
        m = self.lab.command_buffer_length(self._n_frames)
        carry = LabState(
            commands=jnp.zeros((m, self.action_size), self.dtype),
            motor=jnp.zeros((self.action_size,), self.dtype),
            key=key_next,
        )
        obs = with_history(
            self.sense(pipeline_state.q, pipeline_state.qd, key_sensor), self._no_history()
        )
        return State(pipeline_state, obs, zero, zero, info={"lab": carry})

    def step(self, state: State, action: Float[Array, 1]) -> State:
        if self.lab is not None:
            return self._lab_step(state, action)
        pipeline_state = self.pipeline_step(state.pipeline_state, action)
        sensors = self.observe(pipeline_state.q, pipeline_state.qd)
        reward = self.task_reward(sensors, action)
        obs = self._observation(sensors, state, action)
        return state.replace(pipeline_state=pipeline_state, obs=obs, reward=reward)

    def _lab_step(self, state: State, action: Float[Array, 1]) -> State:
        """One control period of the lab rig: the command joins the latency's queue; each
        physics step takes the command sent d steps earlier, passes it through the motor's
        lag, and integrates (RK4 or Euler) under it and the passive forces; the sensors read
        the result."""
        lab, carry = self.lab, state.info["lab"]
        # The gain scales the command before the motor's control range saturates it, as in
        # `pipeline_step`.
        command = physics_from_sys(self.sys)["actuator_gain"] * action
        queue = jnp.concatenate([carry.commands, command[None]])
        offsets = jnp.asarray(lab.command_offsets(self._n_frames))
        decay = lab.motor_decay(float(self.sys.opt.timestep))

        def physics_step(inner, offset):
            pipeline_state, motor = inner
            delayed = queue[offset]
            if lab.motor_time_constant:
                # The lag's exact solution for a command held over the step.
                target = jnp.clip(delayed, -1.0, 1.0)
                motor = target + decay * (motor - target)
            else:
                motor = delayed
            return (self._integrate(pipeline_state, motor), motor), None

        (pipeline_state, motor), _ = jax.lax.scan(
            physics_step, (state.pipeline_state, carry.motor), offsets
        )
        if lab.integrator == "rk4":
            # RK4 moved q and qd alone; refresh the pipeline's kinematics once per period.
            pipeline_state = self.pipeline_init(pipeline_state.q, pipeline_state.qd)
        key_sensor, key_next = jax.random.split(carry.key)
        q, qd = pipeline_state.q, pipeline_state.qd
        carry = LabState(commands=queue[1:], motor=motor, key=key_next)
        return state.replace(
            pipeline_state=pipeline_state,
            obs=self._observation(self.sense(q, qd, key_sensor), state, action),
            reward=self.task_reward(self.observe(q, qd), action),
            info={**state.info, "lab": carry},
        )

    def _integrate(self, pipeline_state: Any, motor: jax.Array) -> Any:
        """One physics step under the motor command `motor` and the passive forces."""

        def act(q, qd):
            return jnp.concatenate([motor, self.passive_forces(q, qd)])

        if self.lab.integrator == "euler":
            return self._physics_step(pipeline_state, act(pipeline_state.q, pipeline_state.qd))

        def acceleration(q, qd):
            # The body's equations of motion in closed form (they agree with the generalized
            # pipeline's and MuJoCo's to rounding, tested), with the forces of each stage.
            tau = actuator.to_tau(self.sys, act(q, qd), q, qd)
            return self._chain.acceleration(q, qd, tau, xp=jnp)

        q, qd = lab_physics.rk4_step(
            acceleration, pipeline_state.q, pipeline_state.qd, float(self.sys.opt.timestep)
        )
        return pipeline_state.replace(q=q, qd=qd)

    def sense(self, q: jax.Array, qd: jax.Array, key: jax.Array) -> Float[Array, " obs"]:
        """What the lab's encoders and velocity estimates read of (q, qd): positions and
        angles quantized (with a straight-through gradient), velocities with Gaussian noise."""
        lab = self.lab
        stop = jax.lax.stop_gradient
        q = jnp.concatenate(
            [
                lab_physics.quantize(q[:1], lab.position_resolution, xp=jnp, straight_through=stop),
                lab_physics.quantize(q[1:], lab.angle_resolution, xp=jnp, straight_through=stop),
            ]
        )
        if lab.sensor_noise:
            scale = jnp.asarray(
                [lab.linear_velocity_noise] + [lab.angular_velocity_noise] * self.n_poles,
                self.dtype,
            )
            qd = qd + scale * jax.random.normal(key, qd.shape, self.dtype)
        return self.observe(q, qd)

    def with_physics_values(self, values: PhysicsValues) -> CartPole:
        """This env with its `sys` carrying `values` (any subset of `PHYSICS_FIELDS`).

        The values may be traced: `jax.grad` of a rollout of the returned env with respect to
        them is how system identification fits the physics. The copy's `physics` attribute
        still describes the env it was made from; `with_physics` makes an env that describes
        itself.
        """
        env = copy.copy(self)
        env.sys = physics_to_sys(self.sys, values)
        return env

    def with_physics(self, physics: Physics) -> CartPole:
        """This env (same body, task, backend, dtype) with other physics, e.g. the parameters
        `sim2real.sysid.identify` fitted: its system carries them, `physics` describes them."""
        env = self.with_physics_values(dataclasses.asdict(physics))
        env.physics = physics
        return env

    def pipeline_step(self, pipeline_state: Any, action: jax.Array) -> Any:
        # The gain scales the command before the motor's control range saturates it.
        motor = physics_from_sys(self.sys)["actuator_gain"] * action

        def physics_step(state, _):
            # The real system's extra forces depend on the velocity, so they are recomputed
            # every physics step, not held over the control period.
            act = jnp.concatenate([motor, self.passive_forces(state.q, state.qd)])
            return self._physics_step(state, act), None

        return jax.lax.scan(physics_step, pipeline_state, (), self._n_frames)[0]

    def pipeline_init(self, q: jax.Array, qd: jax.Array) -> Any:
        if self._closed_form:
            return ChainState(q=q, qd=qd)
        return super().pipeline_init(q, qd)

    def _physics_step(self, pipeline_state: Any, act: jax.Array) -> Any:
        """One physics step under the actuator inputs `act`: the Brax pipeline's, or (the
        chain backend) semi-implicit Euler on the closed-form equations, as the generalized
        pipeline integrates them (the testbeds have no joint damping, armature or contact)."""
        if not self._closed_form:
            return self._pipeline.step(self.sys, pipeline_state, act, self._debug)
        q, qd = pipeline_state.q, pipeline_state.qd
        tau = actuator.to_tau(self.sys, act, q, qd)
        q, qd = lab_physics.euler_step(
            lambda q, qd: self._chain.acceleration(q, qd, tau, xp=jnp),
            q,
            qd,
            self.sys.opt.timestep,
        )
        return ChainState(q=q, qd=qd)

    def passive_forces(
        self, q: Float[Array, " nq"], qd: Float[Array, " nv"]
    ) -> Float[Array, " nv"]:
        """Generalized forces of damping and friction on each joint (zero for `sim`), and the
        lab's stiction, cable and cogging on the slider (see `sim2real.lab.slider_force`)."""
        p = physics_from_sys(self.sys)
        slider = lab_physics.slider_force(
            p, self.lab, q[:1], qd[:1], xp=jnp, gradient=self.friction_gradient
        )
        return jnp.concatenate([slider, lab_physics.hinge_torques(p, qd[1:])])

    def observe(self, q: Float[Array, " nq"], qd: Float[Array, " nv"]) -> Float[Array, " obs"]:
        angles = q[1:]
        return jnp.concatenate(
            [q[:1], jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1).ravel(), qd]
        )

    def state_from_obs(self, obs: Float[Array, " obs"]) -> tuple[jax.Array, jax.Array]:
        """Inverse of `observe`: joint positions (angles wrapped to (-pi, pi]) and velocities,
        from the sensor part of an observation (an action history after it is ignored)."""
        n = self.n_poles
        cos_sin = obs[1 : 1 + 2 * n].reshape(n, 2)
        angles = jnp.arctan2(cos_sin[:, 1], cos_sin[:, 0])
        return jnp.concatenate([obs[:1], angles]), obs[1 + 2 * n : self.sensor_size]

    def task_reward(self, obs: Float[Array, " obs"], action: Float[Array, 1]) -> Float[Array, ""]:
        """The reward for arriving at observation `obs` by command `action`."""
        return task_reward(obs, action, self.n_poles, self.reward_weights, xp=jnp)


_LAB_STREAM = 7
"""`fold_in` index of the lab's sensor stream in a reset key."""


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


def make_testbed(name: str, **kwargs) -> CartPole:
    """The testbed registered as `name`, with constructor overrides (physics, backend, ...).
    `physics` may also be a mapping of `Physics`'s fields, as a saved model's sidecar stores it
    (so this is the `make_sim` that `dynamics_models.load_model` takes)."""
    system, task, variant = parse_testbed_name(name)
    if isinstance(kwargs.get("physics"), Mapping):
        kwargs["physics"] = Physics(**kwargs["physics"])
    return CartPole(system, task, variant, **kwargs)


def register_testbeds(register: Callable[[str, Any], None] = envs.register_environment) -> None:
    for name in list_testbeds():
        register(name, functools.partial(make_testbed, name))


register_testbeds()
