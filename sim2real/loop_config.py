"""How the sim2real loop spends its real transitions (`LoopConfig`): the budget, the initial
data, how often and how much it collects, and the rounds of collection that fit.

Split from `sim2real.loop`, which runs the loop, as `pods.config` holds the optimizers'
configs apart from their code.
"""

from __future__ import annotations

import dataclasses
import math

from pods.validation import is_integer, require

INITIAL_DATA = ("random", "policy")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How the loop spends its real transitions."""

    budget: int = 5000
    """Real transitions the loop may take in all (initial data included)."""
    initial_trajectories: int = 20
    """Real episodes recorded before the first epoch."""
    initial_data: str = "random"
    """`random`: correlated random commands (see `random_correlation`); `policy`: the
    warm-start policy (`initial_params`) plus `collect_noise`."""
    random_correlation: float = 0.8
    """Lag-1 correlation of the random commands; white noise barely moves the cart."""
    collect_every: int = 5
    """Epochs between collections of the current policy's real episodes."""
    collect_trajectories: int = 5
    """Real episodes per collection."""
    collect_noise: float = 0.1
    """Std of the Gaussian noise on the policy's commands while collecting."""
    validation_fraction: float = 0.2
    """Share of the real episodes held out to early-stop each model fit."""

    def __post_init__(self):
        def integer(name: str, low: int) -> bool:
            return is_integer(getattr(self, name), low)

        require(integer("budget", 1), self, "budget", "a positive integer")
        require(integer("initial_trajectories", 2), self, "initial_trajectories", "an integer >= 2")
        require(integer("collect_every", 1), self, "collect_every", "a positive integer")
        require(
            integer("collect_trajectories", 1), self, "collect_trajectories", "a positive integer"
        )
        require(self.initial_data in INITIAL_DATA, self, "initial_data", f"one of {INITIAL_DATA}")
        require(0 <= self.random_correlation < 1, self, "random_correlation", "a number in [0, 1)")
        require(
            math.isfinite(self.collect_noise) and self.collect_noise >= 0,
            self,
            "collect_noise",
            "a finite number >= 0",
        )
        require(0 < self.validation_fraction < 1, self, "validation_fraction", "a number in (0, 1)")

    def rounds(self, horizon: int) -> int:
        """Collections after the initial data that fit in the budget, for episodes of
        `horizon` steps; raises if not even the initial data does."""
        initial = self.initial_trajectories * horizon
        if initial > self.budget:
            raise ValueError(
                f"LoopConfig.budget={self.budget} real transitions cannot hold the initial "
                f"{self.initial_trajectories} episodes of {horizon} steps ({initial})"
            )
        return (self.budget - initial) // (self.collect_trajectories * horizon)

    def rounds_before(self, epoch: int, horizon: int) -> int:
        """Collections (after the initial data) done before `epoch` starts."""
        return min(epoch // self.collect_every, self.rounds(horizon))


__all__ = ["INITIAL_DATA", "LoopConfig"]
