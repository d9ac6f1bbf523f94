"""The lab profile: physics a linear cart-pole rig has and the simulator's family does not.

`sim` is the MJCF body stepped by semi-implicit Euler at 25 ms with nothing else; the `real`
(friction) profile adds damping, Coulomb friction and an actuator gain, which system
identification can fit exactly. `LabEffects` adds what a physical rig has beyond that, each
effect a field with a unit, a default and where its number comes from:

- the actuator: a latency of whole physics steps, then a first-order lag of the motor;
- the slider: a breakaway (Stribeck) force above the Coulomb level near zero velocity, a cable
  pulling the cart toward its anchor, and motor cogging, periodic in the cart position;
- the body: cart mass, pole mass, length and centre of mass off the MJCF's nominal values;
- the sensors: encoder quantization of the position and the angles, noise on the velocities;
- the integration: an accurate integrator (classical RK4) at a fine step (5 ms).

The body's equations in closed form and its mismatch applied to the MuJoCo model are in
`sim2real.chain_body`.

The laws here are written once for two engines: the differentiable Brax twin
(`sim2real.testbeds.CartPole`, variant `lab`) and the MuJoCo C engine
(`sim2real.mujoco_lab`). Each takes the array module (`numpy` or `jax.numpy`) as `xp`.

The reference rigs are the linear cart-pole systems of control teaching labs (a cart on a
track driven by a DC motor through a pinion and belt, optical encoders on the pinion and on
the pendulum pivot, a PC or microcontroller closing the loop over a DAQ); the numbers are the
orders of magnitude such rigs have, not one rig's datasheet.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pods.validation import is_integer, is_number, require, require_positive

LAB_INTEGRATORS = ("euler", "rk4")
"""`euler`: semi-implicit Euler, the simulator's; `rk4`: classical Runge-Kutta of order 4."""


@dataclasses.dataclass(frozen=True)
class LabEffects:
    """The lab rig's physics beyond `sim2real.Physics` (see the module docstring).

    `LabEffects.off()` switches every effect off; a lab testbed built with it and
    `Physics.nominal()` steps exactly like `sim`.
    """

    # --- actuator ---------------------------------------------------------------------------
    latency_steps: int = 4
    """A command takes effect this many physics steps after it is sent (4 x 5 ms = 20 ms): the
    round trip of a PC-side controller through a USB DAQ and the motor amplifier."""
    motor_time_constant: float = 0.02
    """s: the delivered force follows the (delayed) command through a first-order lag,
    dF/dt = (F_command - F) / tau: the force bandwidth (~8 Hz) of a belt-driven cart whose DC
    motor and amplifier respond in tens of milliseconds. 0: no lag."""
    # --- the slider -------------------------------------------------------------------------
    stiction: float = 0.6
    """N above the Coulomb level (`Physics.slider_friction`) at zero velocity: the breakaway
    force of a cart on its bearings is typically 1.2-2 x its sliding friction. It fades as
    exp(-(v / stribeck_velocity)^2) (Stribeck) and, like the Coulomb term, switches sign
    through tanh(v / Physics.friction_velocity), which keeps it differentiable."""
    stribeck_velocity: float = 0.1
    """m/s: the speed over which the breakaway force fades to the Coulomb level."""
    cable_stiffness: float = 0.5
    """N/m: the cable to the cart's encoder and motor pulls it toward `cable_anchor`."""
    cable_anchor: float = -0.5
    """m: where the cable's pull vanishes (the side of the track the cable leaves from)."""
    cogging_amplitude: float = 0.2
    """N: the motor's cogging, seen at the cart as a force periodic in its position."""
    cogging_period: float = 0.04
    """m: one motor revolution moves the cart 4 cm (a pinion of 6.4 mm radius)."""
    # --- the body ---------------------------------------------------------------------------
    cart_mass_scale: float = 1.15
    """Cart mass / the MJCF's (1 kg): the motor, belt clamps and encoder ride on the cart."""
    pole_mass_scale: float = 0.88
    """Each pole's mass / the MJCF's (0.1 kg)."""
    pole_length_scale: float = 1.1
    """Each pole's length / the MJCF's: sets its inertia and, for the double cart-pole, where
    the second hinge sits."""
    pole_com_scale: float = 1.12
    """Distance from each hinge to its pole's centre of mass / the MJCF's (half the nominal
    length): a pivot block, a tip weight or a clamp moves it outward."""
    # --- the sensors ------------------------------------------------------------------------
    position_resolution: float = 1e-5
    """m: the cart position as a 4096-count (1024-line, quadrature) encoder on the motor
    reads it: 40 mm per revolution / 4096. 0: exact."""
    angle_resolution: float = 2 * math.pi / 4096
    """rad: each hinge angle as a 4096-count (1024-line, quadrature) encoder reads it. 0: exact."""
    linear_velocity_noise: float = 0.01
    """m/s, std of the Gaussian noise on the cart velocity the policy sees: velocities are
    differentiated, filtered encoder readings."""
    angular_velocity_noise: float = 0.03
    """rad/s, std of the noise on every hinge velocity: one encoder count (1.5e-3 rad) over
    the 50 ms control period."""
    # --- the integration --------------------------------------------------------------------
    integrator: str = "rk4"
    """`rk4` (classical Runge-Kutta) or `euler` (the simulator's semi-implicit Euler)."""
    timestep: float | None = 0.005
    """s, the lab's physics step; None keeps the system's (25 ms for the cart-pole). The
    control period stays the system's (50 ms), so it must be a whole number of steps."""

    def __post_init__(self):
        def number(name: str) -> bool:
            return is_number(getattr(self, name))

        latency = self.latency_steps
        require(
            is_integer(latency, 0),
            self,
            "latency_steps",
            "an integer >= 0",
        )
        for name in (
            "motor_time_constant",
            "stiction",
            "cable_stiffness",
            "cogging_amplitude",
            "position_resolution",
            "angle_resolution",
            "linear_velocity_noise",
            "angular_velocity_noise",
        ):
            require(number(name) and getattr(self, name) >= 0, self, name, "a finite number >= 0")
        require_positive(
            self,
            "stribeck_velocity",
            "cogging_period",
            "cart_mass_scale",
            "pole_mass_scale",
            "pole_length_scale",
            "pole_com_scale",
        )
        require(number("cable_anchor"), self, "cable_anchor", "a finite number")
        require(self.integrator in LAB_INTEGRATORS, self, "integrator", f"one of {LAB_INTEGRATORS}")
        require(
            self.timestep is None or (number("timestep") and self.timestep > 0),
            self,
            "timestep",
            "None or a finite number > 0",
        )

    @classmethod
    def off(cls, **overrides: Any) -> LabEffects:
        """Every effect switched off (then `overrides`): no latency, lag, stiction, cable,
        cogging, body mismatch or sensor effect; the simulator's integrator and step."""
        zero = dict(
            latency_steps=0,
            motor_time_constant=0.0,
            stiction=0.0,
            cable_stiffness=0.0,
            cogging_amplitude=0.0,
            cart_mass_scale=1.0,
            pole_mass_scale=1.0,
            pole_length_scale=1.0,
            pole_com_scale=1.0,
            position_resolution=0.0,
            angle_resolution=0.0,
            linear_velocity_noise=0.0,
            angular_velocity_noise=0.0,
            integrator="euler",
            timestep=None,
        )
        return cls(**{**zero, **overrides})

    @property
    def body_mismatch(self) -> bool:
        return (
            self.cart_mass_scale,
            self.pole_mass_scale,
            self.pole_length_scale,
            self.pole_com_scale,
        ) != (1.0, 1.0, 1.0, 1.0)

    @property
    def sensor_noise(self) -> bool:
        return self.linear_velocity_noise > 0 or self.angular_velocity_noise > 0

    def motor_decay(self, timestep: float) -> float:
        """exp(-h / tau): the share of the lag's previous force left after one physics step
        (the exact solution of the lag for a command held over the step); 0 without a lag."""
        if self.motor_time_constant == 0:
            return 0.0
        return math.exp(-timestep / self.motor_time_constant)

    def command_buffer_length(self, n_frames: int) -> int:
        """Past control periods' commands the latency can still reach: ceil(d / n_frames)."""
        return -(-self.latency_steps // n_frames)

    def command_offsets(self, n_frames: int) -> np.ndarray:
        """For each physics step j of a control period, which command acts: the one sent
        floor((j - d) / n_frames) periods ago (0 = this period's), as an index into the buffer
        [u_{t-m}, ..., u_{t-1}, u_t] of `command_buffer_length` + 1 commands."""
        m = self.command_buffer_length(n_frames)
        j = np.arange(n_frames)
        return m + np.floor_divide(j - self.latency_steps, n_frames)


@dataclasses.dataclass(frozen=True)
class FrictionGradient:
    """A smooth surrogate for the derivative of the slider's force (`slider_force`) with
    respect to the cart's position and velocity. The force itself, what every rollout steps,
    stays the law's to the bit; only gradients and linearizations see the surrogate.

    Why: the lab's friction switches sign within 5 mm/s (`Physics.lab`), so at rest its slope
    acts like hundreds of N s/m of damping, and the stiction's adds to it. Linearized there,
    a command does not move the cart, although full force moves it metres in a second, and
    PODS's action improvement stalls (the stiff-dynamics bias of Suh et al., ICML 2022). The
    surrogate's derivative is that of a friction whose sign switches over a wider velocity.
    The derivative with respect to the physical parameters stays the law's, so system
    identification fits the physics the rollouts step.
    """

    friction_velocity: float | None = 0.2
    """m/s: the tanh velocity scale of the friction's sign (Coulomb and stiction) in the
    derivative, where the law's `Physics.friction_velocity` is sharper; None: the law's.
    0.05-1 all unstall the lab (docs/research-log/2026-12-07-stiction-gradients.md); 0.2
    measured best with the two terms below dropped."""
    stiction: bool = False
    """Keep the stiction's derivative (with the sign widened as above); False drops it: its
    slope at rest adds to the friction's, and dropped it measured no worse."""
    cogging: bool = False
    """Keep the cogging's derivative: a spring of 2 pi A / period (31 N/m in the lab) whose
    sign alternates every half period, a landscape of 2 cm wells; False drops it."""

    def __post_init__(self):
        require(
            self.friction_velocity is None
            or (is_number(self.friction_velocity) and self.friction_velocity > 0),
            self,
            "friction_velocity",
            "None or a finite number > 0",
        )
        for name in ("stiction", "cogging"):
            require(isinstance(getattr(self, name), bool), self, name, "true or false")


def physics_steps(control_period: float, timestep: float) -> int:
    """Physics steps per control period; the period must be a whole number of steps."""
    n = round(control_period / timestep)
    if n < 1 or abs(n * timestep - control_period) > 1e-9 * max(1.0, control_period):
        raise ValueError(
            f"LabEffects.timestep={timestep} does not divide the control period "
            f"{control_period} s into whole physics steps"
        )
    return n


# --- force laws (numpy or jax.numpy) ----------------------------------------------------------


def slider_force(
    physics: dict[str, Any],
    lab: LabEffects | None,
    x: Any,
    v: Any,
    *,
    xp: Any,
    gradient: FrictionGradient | None = None,
) -> Any:
    """The passive force on the cart, N: viscous damping and Coulomb friction (`Physics`),
    and with `lab` the Stribeck breakaway, the cable and the cogging. Terms whose coefficient
    is zero are left out, not added as zeros, so a lab with them off steps exactly as `real`.

    With `gradient` (and `xp` jax.numpy), the value is still this law's, to the bit, and
    its derivative with respect to `x` and `v` is `FrictionGradient`'s surrogate's."""
    if gradient is None or xp is not jnp:
        return _slider_law(physics, lab, x, v, xp=xp)
    return _slider_force_with_surrogate(physics, x, v, lab, gradient)


def _slider_law(physics: dict[str, Any], lab: LabEffects | None, x: Any, v: Any, *, xp: Any) -> Any:
    sign = xp.tanh(v / physics["friction_velocity"])
    force = -physics["slider_damping"] * v - physics["slider_friction"] * sign
    if lab is None:
        return force
    if lab.stiction:
        force = force - lab.stiction * xp.exp(-((v / lab.stribeck_velocity) ** 2)) * sign
    if lab.cable_stiffness:
        force = force - lab.cable_stiffness * (x - lab.cable_anchor)
    if lab.cogging_amplitude:
        force = force - lab.cogging_amplitude * xp.sin(2 * math.pi * x / lab.cogging_period)
    return force


def slider_force_surrogate(
    physics: dict[str, Any], lab: LabEffects | None, x: Any, v: Any, gradient: FrictionGradient
) -> Any:
    """The smooth law whose derivative `slider_force` takes under `gradient`: the friction's
    sign widened to `gradient.friction_velocity`, the stiction and cogging kept or dropped."""
    width = physics["friction_velocity"]
    if gradient.friction_velocity is not None:
        # Never sharper than the law: on a profile already that smooth, its own derivative.
        width = jnp.maximum(width, gradient.friction_velocity)
    sign = jnp.tanh(v / width)
    force = -physics["slider_damping"] * v - physics["slider_friction"] * sign
    if lab is None:
        return force
    if lab.stiction and gradient.stiction:
        force = force - lab.stiction * jnp.exp(-((v / lab.stribeck_velocity) ** 2)) * sign
    if lab.cable_stiffness:
        force = force - lab.cable_stiffness * (x - lab.cable_anchor)
    if lab.cogging_amplitude and gradient.cogging:
        force = force - lab.cogging_amplitude * jnp.sin(2 * math.pi * x / lab.cogging_period)
    return force


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _slider_force_with_surrogate(
    physics: dict[str, Any], x: Any, v: Any, lab: LabEffects | None, gradient: FrictionGradient
) -> Any:
    return _slider_law(physics, lab, x, v, xp=jnp)


@_slider_force_with_surrogate.defjvp
def _slider_force_surrogate_jvp(lab, gradient, primals, tangents):
    physics, x, v = primals
    d_physics, dx, dv = tangents
    # The parameters' derivative stays the law's: system identification differentiates the
    # force with respect to the friction, and must fit the physics the rollouts step.
    force, by_physics = jax.jvp(
        lambda p: _slider_law(p, lab, x, v, xp=jnp), (physics,), (d_physics,)
    )
    _, by_state = jax.jvp(
        lambda x, v: slider_force_surrogate(physics, lab, x, v, gradient), (x, v), (dx, dv)
    )
    return force, by_physics + by_state


def hinge_torques(physics: dict[str, Any], hinge_velocities: Any) -> Any:
    """The passive torque at each hinge, N m: viscous damping (`Physics.hinge_damping`)."""
    return -physics["hinge_damping"] * hinge_velocities


def rk4_step(acceleration, q: Any, qd: Any, h: float) -> tuple[Any, Any]:
    """One classical Runge-Kutta step of q'' = acceleration(q, qd), for joints whose
    positions and velocities are both plain coordinates (slides and hinges)."""
    a1 = acceleration(q, qd)
    q2, qd2 = q + 0.5 * h * qd, qd + 0.5 * h * a1
    a2 = acceleration(q2, qd2)
    q3, qd3 = q + 0.5 * h * qd2, qd + 0.5 * h * a2
    a3 = acceleration(q3, qd3)
    q4, qd4 = q + h * qd3, qd + h * a3
    a4 = acceleration(q4, qd4)
    q_next = q + (h / 6.0) * (qd + 2.0 * qd2 + 2.0 * qd3 + qd4)
    qd_next = qd + (h / 6.0) * (a1 + 2.0 * a2 + 2.0 * a3 + a4)
    return q_next, qd_next


def euler_step(acceleration, q: Any, qd: Any, h: float) -> tuple[Any, Any]:
    """One semi-implicit Euler step, the simulator's: the velocity first, then the position
    with the new velocity."""
    qd_next = qd + h * acceleration(q, qd)
    return q + h * qd_next, qd_next


# --- the sensors ----------------------------------------------------------------------------


def quantize(value: Any, resolution: float, *, xp: Any, straight_through: Any = None) -> Any:
    """`value` rounded to multiples of `resolution` (0: unchanged), as an encoder reads it.
    With `straight_through` (jax.lax.stop_gradient), the gradient passes as if unrounded:
    the rounding's own derivative is zero almost everywhere and would hide the physics."""
    if not resolution:
        return value
    rounded = xp.round(value / resolution) * resolution
    if straight_through is None:
        return rounded
    return value + straight_through(rounded - value)


__all__ = [
    "LAB_INTEGRATORS",
    "FrictionGradient",
    "LabEffects",
    "euler_step",
    "hinge_torques",
    "physics_steps",
    "quantize",
    "rk4_step",
    "slider_force",
    "slider_force_surrogate",
]
