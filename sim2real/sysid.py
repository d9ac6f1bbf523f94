"""System identification: fit the simulator's physical parameters to real transitions.

The `sim` testbed is the `real` body with its damping, friction and actuator gain wrong (see
`sim2real.Physics`). The testbed's step reads those parameters from its Brax system
(`CartPole.with_physics_values`), so a rollout is differentiable in them, and they are fitted
the way a dynamics model is trained: Adam on the squared error of short open-loop predictions.

Multiple shooting: every run of `window` consecutive real transitions starts the simulator at
the recorded observation s_t and plays the recorded commands a_t .. a_{t+W-1}; the loss is the
error of its predictions of s_{t+1} .. s_{t+W} in state coordinates (angles wrapped), each
coordinate divided by the spread of its one-step change in the data, so that positions and
velocities weigh alike. Short windows restarted from recorded states keep the loss smooth: one
long rollout of a chaotic pole would carry an early error on and have gradients that explode.

The parameters are optimized in log space: they stay positive, and Adam's scale-free steps
move a damping of 0.01 N m s and a gain of 0.8 at the same relative rate. The `sim` values of
damping and friction are 0, whose log does not exist; those start at `initial_floor`.

    physics, history = identify(SysIDConfig(), sim, real_trajectories, jax.random.PRNGKey(0))
    identified_sim = sim.with_physics(physics)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from dynamics_models.data import ObsLayout, TransitionDataset
from dynamics_models.evaluation import state_at
from pods.rollout import trajectory_of_actions
from pods.validation import is_integer, is_number, require, require_positive
from sim2real.lab import LAB_INTEGRATORS
from sim2real.real_system import RealTrajectories
from sim2real.testbed_spec import PHYSICS_FIELDS, Physics
from sim2real.testbeds import CartPole

SYSID_FAMILIES = ("physics", "lab")
"""The parameter families `SysIDConfig.family` chooses between."""
LAB_FIT_PARAMETERS = ("motor_time_constant", "pole_mass_scale", "pole_length_scale")
"""`LabEffects` fields the lab family can fit. `pole_length_scale` scales the pole's length
and its centre of mass together (a geometrically similar pole, `pole_com_scale` tied to it):
with the cart's mass known, the motion fixes two numbers of the pole (module docstring of
sim2real.sysid_lab), so length and centre cannot both be free beside its mass."""


@dataclasses.dataclass(frozen=True)
class SysIDConfig:
    """How `identify` fits the physical parameters."""

    parameters: tuple[str, ...] = (
        "slider_damping",
        "hinge_damping",
        "slider_friction",
        "actuator_gain",
    )
    """`Physics` fields to fit; the others keep the simulator's values. `friction_velocity` is
    left out by default: it only shapes friction at cart speeds below a few cm/s."""
    window: int = 4
    """Transitions per shooting window: each window predicts this many steps open loop."""
    num_steps: int = 500
    """Adam steps, all in one jitted `lax.scan`. On 120 noise-free transitions 250 left the
    weakly observed hinge damping 14% off; 500 recover every parameter to 1e-5."""
    learning_rate: float = 0.1
    """Peak Adam step size, in log-parameter units (0.1 is a 10% change); it decays to 1% of
    that on a cosine schedule, so the fit settles instead of hovering one step from the
    optimum."""
    batch_size: int | None = 256
    """Windows per Adam step, drawn without replacement; None uses every window every step."""
    initial_floor: float = 0.01
    """Smallest starting value: a simulator value below it (0 for `sim`'s damping and
    friction, and the lab family's motor time constant) starts here instead, since log 0
    does not exist."""
    family: str = "physics"
    """`physics`: the `Physics` fields above, in the simulator as it is (`identify`). `lab`:
    those, and the lab rig's actuator latency, motor lag and pole body, in a `lab`-variant
    simulator (`sim2real.sysid_lab.identify_lab`)."""
    max_delay_steps: int = 8
    """Lab family: the actuator latencies tried, 0 .. this many physics steps of
    `lab_timestep`; the one whose fit has the lowest loss is kept (an integer has no
    gradient)."""
    lab_parameters: tuple[str, ...] = LAB_FIT_PARAMETERS
    """Lab family: the `LabEffects` fields fitted beside `parameters`, from
    LAB_FIT_PARAMETERS; a field left out keeps its off value (no lag, the nominal pole)."""
    cart_mass_scale: float = 1.0
    """Lab family: the cart's mass / the MJCF's (1 kg), as weighed, not fitted. Motion and
    commands fix masses and forces only up to one common factor (sim2real.sysid_lab), and
    this value fixes it: the pole's mass, the gain, the damping and the friction are
    identified relative to the cart's."""
    lab_timestep: float | None = 0.005
    """Lab family: s, the identified simulator's physics step (it must divide the control
    period), which is also the latency's unit; None keeps the simulator's."""
    lab_integrator: str = "rk4"
    """Lab family: the identified simulator's integrator, `rk4` (the lab rig's) or `euler`
    (the simulator's semi-implicit Euler)."""

    def __post_init__(self):
        parameters = tuple(self.parameters)
        object.__setattr__(self, "parameters", parameters)
        unknown = [p for p in parameters if p not in PHYSICS_FIELDS]
        if not parameters or unknown or len(set(parameters)) != len(parameters):
            raise ValueError(
                f"SysIDConfig.parameters must be distinct names from {PHYSICS_FIELDS}, "
                f"got {parameters!r}"
            )
        for name in ("window", "num_steps"):
            require(is_integer(getattr(self, name)), self, name, "a positive integer")
        require(
            self.batch_size is None or is_integer(self.batch_size),
            self,
            "batch_size",
            "a positive integer or None",
        )
        require(self.family in SYSID_FAMILIES, self, "family", f"one of {SYSID_FAMILIES}")
        require(is_integer(self.max_delay_steps, 0), self, "max_delay_steps", "an integer >= 0")
        lab_parameters = tuple(self.lab_parameters)
        object.__setattr__(self, "lab_parameters", lab_parameters)
        require(
            set(lab_parameters) <= set(LAB_FIT_PARAMETERS)
            and len(set(lab_parameters)) == len(lab_parameters),
            self,
            "lab_parameters",
            f"distinct names from {LAB_FIT_PARAMETERS}",
        )
        require(
            self.lab_timestep is None or (is_number(self.lab_timestep) and self.lab_timestep > 0),
            self,
            "lab_timestep",
            "None or a finite number > 0",
        )
        require(
            self.lab_integrator in LAB_INTEGRATORS,
            self,
            "lab_integrator",
            f"one of {LAB_INTEGRATORS}",
        )
        require_positive(self, "learning_rate", "initial_floor", "cart_mass_scale")

    def minibatch_size(self, n_windows: int) -> int:
        """Windows per Adam step: `batch_size`, or all `n_windows` where there are no more."""
        return n_windows if self.batch_size is None else min(self.batch_size, n_windows)


def as_dataset(trajectories: RealTrajectories | TransitionDataset) -> TransitionDataset:
    """Real trajectories as a `TransitionDataset` (which checks their shapes)."""
    if isinstance(trajectories, TransitionDataset):
        return trajectories
    return TransitionDataset(
        np.asarray(trajectories.observations),
        np.asarray(trajectories.actions),
        valid=trajectories.valid,
    )


def fit_data(
    trajectories: RealTrajectories | TransitionDataset, sim_env: CartPole, config: SysIDConfig
) -> tuple[TransitionDataset, CartPole]:
    """What an identification fits: the real data as a dataset, and the simulator that must
    explain them, the policy's action history dropped (the data record the sensors; the
    history plays no part in the physics). Raises ValueError where the two do not match, or
    the fit's windows are longer than the trajectories."""
    data = as_dataset(trajectories)
    sim_env = sim_env.with_action_history(0) if sim_env.action_history else sim_env
    if (data.obs_dim, data.action_dim) != (sim_env.observation_size, sim_env.action_size):
        raise ValueError(
            f"trajectories have (obs_dim, action_dim) {(data.obs_dim, data.action_dim)}, "
            f"{sim_env.name} has {(sim_env.observation_size, sim_env.action_size)}"
        )
    if config.window > data.horizon:
        raise ValueError(
            f"SysIDConfig.window {config.window} is longer than the trajectories "
            f"({data.horizon} steps)"
        )
    return data, sim_env


class FitWindows(NamedTuple):
    """What a fit's loss reads of the real data, one row per shooting window."""

    obs0: Float[Array, "windows obs"]
    """The recorded observation each window starts the simulator at."""
    actions: Float[Array, "windows window act"]
    """The recorded commands it plays."""
    targets: Float[Array, "windows window state"]
    """The recorded states it must predict (state coordinates)."""
    scale: Float[Array, " state"]
    """The spread of each state coordinate's one-step change, which divides its error."""


def fit_windows(data: TransitionDataset, layout: ObsLayout, window: int, dtype) -> FitWindows:
    """`data`'s windows of `window` transitions as `FitWindows` of `dtype`."""
    obs0, actions, targets = data.windows(window)
    return FitWindows(
        obs0=jnp.asarray(obs0, dtype),
        actions=jnp.asarray(actions, dtype),
        targets=layout.to_state(jnp.asarray(targets, dtype)),
        scale=jnp.asarray(data.normalization(layout).delta_std, dtype),
    )


def identify(
    config: SysIDConfig,
    sim_env: CartPole,
    trajectories: RealTrajectories | TransitionDataset,
    key: jax.Array,
) -> tuple[Physics, dict[str, np.ndarray]]:
    """Fits `config.parameters` of `sim_env`'s physics to the real `trajectories`.

    Starts from `sim_env.physics` (floored, see `SysIDConfig.initial_floor`); `key` draws
    the minibatches. Returns the identified `Physics` (`sim_env.with_physics(physics)` is the
    identified simulator) and the fit's history, one entry per Adam step: `sysid/loss` (of the
    minibatch, at the parameters before the step), `sysid/<name>` (those parameters) and
    `sysid/rejected_nonfinite` (1 where a non-finite loss or gradient was dropped, not applied).
    """
    data, sim_env = fit_data(trajectories, sim_env, config)
    windows = fit_windows(data, ObsLayout.of_env(sim_env), config.window, sim_env.dtype)
    start = sim_env.physics
    log_theta = jnp.log(
        jnp.array([max(getattr(start, name), config.initial_floor) for name in config.parameters])
    ).astype(sim_env.dtype)
    log_theta, history = _fit(config, sim_env, log_theta, key, windows)
    fitted = np.exp(np.asarray(log_theta, np.float64))
    physics = dataclasses.replace(
        start, **{name: float(v) for name, v in zip(config.parameters, fitted, strict=True)}
    )
    return physics, {name: np.asarray(value) for name, value in history.items()}


@functools.partial(jax.jit, static_argnames=("config", "sim_env"))
def _fit(
    config: SysIDConfig,
    sim_env: CartPole,
    log_theta: Float[Array, " n_params"],
    key: jax.Array,
    windows: FitWindows,
) -> tuple[Float[Array, " n_params"], dict[str, Array]]:
    """The whole optimization, one scan over Adam steps. The data are arguments, not closure
    constants, so datasets of one shape share a compilation."""
    layout = ObsLayout.of_env(sim_env)
    obs0, actions, targets, scale = windows
    n_windows = obs0.shape[0]
    batch = config.minibatch_size(n_windows)

    def loss(log_theta, obs0, actions, targets):
        env = sim_env.with_physics_values(
            dict(zip(config.parameters, jnp.exp(log_theta), strict=True))
        )

        def window_error(obs0, actions, targets):
            predicted = trajectory_of_actions(env, state_at(env, obs0), actions).observations[1:]
            return layout.difference(layout.to_state(predicted), targets) / scale

        return jnp.mean(jax.vmap(window_error)(obs0, actions, targets) ** 2)

    def minibatch(step_key):
        if batch < n_windows:
            idx = jax.random.choice(step_key, n_windows, (batch,), replace=False)
            return obs0[idx], actions[idx], targets[idx]
        return obs0, actions, targets

    return adam_fit(loss, log_theta, key, config, minibatch, names=config.parameters)


def adam_fit(
    loss: Callable[..., jax.Array],
    log_theta: Float[Array, " n_params"],
    key: jax.Array,
    config: SysIDConfig,
    minibatch: Callable[[jax.Array], tuple],
    *,
    names: Sequence[str],
) -> tuple[Float[Array, " n_params"], dict[str, Array]]:
    """`config.num_steps` Adam steps on `loss(log_theta, *minibatch(step_key))`, its learning
    rate `config.learning_rate` decayed on a cosine to 1%, one `lax.scan`; returns the fitted
    log-parameters and the history: per step `sysid/<name>` (each parameter `names` lists, at
    the step's start), `sysid/loss` and `sysid/rejected_nonfinite`.
    A step whose loss or gradient is not finite is dropped, never applied: one NaN would ruin
    theta. (Not optax.apply_if_finite: it nests the optimizer state, a new checkpoint layout,
    and checks only the updates, not the loss.) Both identification families fit with it."""
    num_steps = config.num_steps
    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, num_steps, alpha=0.01))

    def adam_step(carry, step_key):
        log_theta, opt_state = carry
        value, grad = jax.value_and_grad(loss)(log_theta, *minibatch(step_key))
        updates, new_opt_state = optimizer.update(grad, opt_state)
        finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        carry = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            (optax.apply_updates(log_theta, updates), new_opt_state),
            carry,
        )
        record = {f"sysid/{name}": v for name, v in zip(names, jnp.exp(log_theta), strict=True)}
        record |= {"sysid/loss": value, "sysid/rejected_nonfinite": (~finite).astype(jnp.int32)}
        return carry, record

    (log_theta, _), history = jax.lax.scan(
        adam_step, (log_theta, optimizer.init(log_theta)), jax.random.split(key, num_steps)
    )
    return log_theta, history


__all__ = [
    "LAB_FIT_PARAMETERS",
    "SYSID_FAMILIES",
    "SysIDConfig",
    "FitWindows",
    "adam_fit",
    "as_dataset",
    "fit_data",
    "fit_windows",
    "identify",
]
