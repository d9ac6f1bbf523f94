"""PPO's domain randomization: uniform ranges of the `real` system's physical parameters
(`PhysicsRanges`) and the Brax `randomization_fn` that draws them once per training env
(`domain_randomization`).

Split from `baselines.brax_agents`, the adapters to Brax's APG and PPO, whose `PPOConfig`
carries the ranges.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
from brax import base

from pods.validation import require
from sim2real.testbed_spec import physics_randomization

RandomizationFn = Callable[[base.System, jax.Array], tuple[base.System, Any]]


@dataclasses.dataclass(frozen=True)
class PhysicsRanges:
    """Uniform ranges (low, high) of the physical parameters, one draw per training env.

    A parameter left `None` keeps the env's own value (`sim`'s or `real`'s). The units are those
    of `sim2real.Physics`.
    """

    slider_damping: tuple[float, float] | None = None
    """Viscous damping on the cart's slider, N s/m."""
    hinge_damping: tuple[float, float] | None = None
    """Viscous damping at each pole hinge, N m s/rad."""
    slider_friction: tuple[float, float] | None = None
    """Coulomb-like friction force on the slider, N."""
    actuator_gain: tuple[float, float] | None = None
    """Fraction of the commanded motor force the actuator delivers."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            bounds = getattr(self, field.name)
            if bounds is None:
                continue
            if isinstance(bounds, list):  # as hydra/OmegaConf hands sequences over
                bounds = tuple(bounds)
                object.__setattr__(self, field.name, bounds)
            positive = field.name == "actuator_gain"
            require(
                isinstance(bounds, tuple)
                and len(bounds) == 2
                and all(isinstance(b, int | float) and math.isfinite(b) for b in bounds)
                and (bounds[0] > 0 if positive else bounds[0] >= 0)
                and bounds[0] <= bounds[1],
                self,
                field.name,
                f"None or a pair (low, high) with {'0 <' if positive else '0 <='} low <= high",
            )

    def ranged(self) -> dict[str, tuple[float, float]]:
        """The parameters that are randomized, with their ranges."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


def domain_randomization(ranges: PhysicsRanges) -> RandomizationFn:
    """A Brax `randomization_fn(sys, rng)`: one uniform draw of every ranged parameter per key.

    The parameters without a range keep the values `sys` carries, and only the physics slot
    of the System is batched (`sim2real.testbed_spec.physics_randomization`).
    """
    ranged = ranges.ranged()

    def randomization_fn(sys: base.System, rng: jax.Array) -> tuple[base.System, Any]:
        if not ranged:
            return sys, jax.tree.map(lambda _: None, sys)

        def draw(key: jax.Array) -> dict[str, jax.Array]:
            keys = jax.random.split(key, len(ranged))
            return {
                name: jax.random.uniform(k, (), minval=low, maxval=high)
                for k, (name, (low, high)) in zip(keys, ranged.items(), strict=True)
            }

        values = jax.vmap(draw)(rng)
        return physics_randomization(sys, values)

    return randomization_fn


__all__ = ["PhysicsRanges", "RandomizationFn", "domain_randomization"]
