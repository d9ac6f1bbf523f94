"""The configurations of PODS and HDS: every hyperparameter of an epoch and a run, checked
where it is made.

`PODSConfig` is a frozen dataclass, all static (a change means a new compile); `HDSConfig`
extends it with the model fraction and the step-size search. `check_horizons` checks a
config against an env's episode.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from pods.derivatives import GRADIENT_NORMALIZATIONS
from pods.validation import is_integer, is_number, require, require_positive

DISTILL_STATES = ("improved", "original", "both")
"""Where distillation regresses the policy on the improved actions (`PODSConfig.distill_states`)."""
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
"""How distillation's learning rate changes over the epochs (`PODSConfig.learning_rate_schedule`)."""
START_STATES = ("reset", "visited")
"""Where an epoch's rollouts start (`PODSConfig.start_states`)."""
POLICY_SELECTIONS = ("last", "best")
"""Which of the epochs' policies a run returns (`PODSConfig.policy_selection`)."""


@dataclasses.dataclass(frozen=True)
class PODSConfig:
    """Hyperparameters of PODS; all static (a change means a new compile)."""

    num_epochs: int = 100
    """Epochs of rollout -> improve -> distill."""
    num_trajectories: int = 64
    """k: rollouts (initial states) per epoch."""
    horizon: int | None = None
    """N: steps per rollout; None uses the env's `episode_length`."""
    horizon_start: int | None = None
    """Grow the horizon the actions are improved over: epoch e's rollouts end their episodes
    after horizon_start + (N - horizon_start) * min(e, horizon_growth_epochs) //
    horizon_growth_epochs steps, so rewards, derivatives and distillation see only those
    (`pods.rollout.EpisodeLimit`; the programs stay N steps long, no recompile). A short
    horizon's trajectories can be improved where the whole episode's cannot: the first steps
    are caught, then held longer. None: the whole horizon from the start, as in the paper.
    `train/return` is always the whole horizon's."""
    horizon_growth_epochs: int = 30
    """Epochs over which a growing horizon (`horizon_start`) reaches N."""
    order: int = 1
    """1: gradient ascent on the actions; 2: damped Gauss-Newton steps."""
    improve_iterations: int = 1
    """Improvement steps per epoch, each with its own line search (PODS takes 1)."""
    step_size_max: float = 1.0
    """Largest line-search candidate alpha. First order with `rms` normalization: the RMS
    change of an action; second order: the fraction of the Newton step."""
    step_size_min: float = 1e-3
    """Smallest line-search candidate alpha."""
    num_step_sizes: int = 8
    """Candidates on the geometric grid between the two; all run as one batched rollout."""
    gradient_normalization: str = "rms"
    """First order: `rms` (unit RMS per action), `clip` (norm clipped at max_gradient_norm) or
    `none`. Gradients through an unstable rollout span 1e-3..1e15, hence the default."""
    max_gradient_norm: float = 1.0
    """Clip threshold for `gradient_normalization="clip"`."""
    gradient_window: int | None = None
    """Stop the gradient through the state every this many steps (None: never)."""
    damping: float = 1e-3
    """Second order: Levenberg damping, relative to the mean diagonal of the Gauss-Newton matrix."""
    feedback: bool = False
    """Second order: improve each trajectory by an iLQR step, time-varying gains and a
    closed-loop line search (`pods.feedback`), instead of an open-loop Gauss-Newton step."""
    exploration_noise: float = 0.0
    """Std of the Gaussian noise added to the policy's actions in the data rollouts."""
    exploration_decay: float = 1.0
    """Factor on exploration_noise after every epoch."""
    start_states: str = "reset"
    """Where the k rollouts start: fresh initial states (`reset`, as in the paper), or states
    the deterministic policy visits (`visited`): from each reset it runs a uniformly drawn
    number of steps in [0, episode_length - horizon] first, so that a horizon shorter than the
    episode trains on every part of it."""
    distill_states: str = "improved"
    """Regress pi(s_t) on a'_t at the states a' visits (`improved`), at those of the data
    rollout (`original`, as in the paper's pseudo-code), or both (`both`): beside a'_t at
    the states it visits, the improvement step's `anchor_actions` at the states it started
    from, which for a feedback step differ by its gains' correction, so the pairs show the
    policy the law's dependence on the state as well as its actions."""
    elite_fraction: float = 1.0
    """Distill only this fraction of the k improved trajectories, those with the highest
    improved return (at least one); 1 distills all, as in the paper. With exploration noise
    the k trajectories settle in different local optima, and distilling them all averages
    their action sequences; the elite pulls the policy toward the best optimum found."""
    distill_passes: int = 4
    """Shuffled sweeps over the k * N (state, improved action) pairs per epoch."""
    minibatch_size: int = 256
    """Pairs per Adam step."""
    learning_rate: float = 1e-3
    """Adam's learning rate for distillation."""
    learning_rate_schedule: str = "constant"
    """`constant`, or `cosine`: epoch e's Adam updates scaled by (1 + cos(pi e /
    num_epochs)) / 2, so the last epochs barely move the policy."""
    policy_selection: str = "last"
    """The policy training returns: the `last` epoch's, or the `best`: of the policies the
    epochs started from, the one whose deterministic mean return from its epoch's k fresh
    starts (`train/return`, drawn from the training stream, so disjoint from the evaluation's
    held-out starts) was the highest. A standard checkpoint selection: training that peaks
    and then drifts keeps its peak. The last epoch's update is scored by no epoch, so it is
    not a candidate. `train/best_return` and `train/best_epoch` report the kept one."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Widths of the policy MLP's hidden layers."""
    normalize_observations: bool = True
    """Standardize observations with running statistics of the data rollouts."""
    float64: bool = False
    """Train in double precision (the env must be built with dtype=jnp.float64)."""

    def __post_init__(self):
        self._check_counts_and_step_sizes()
        self._check_choices_and_noise()

    def _check_counts_and_step_sizes(self) -> None:
        """The counts, the horizons, the order and the step sizes: checked first."""

        def positive_int(name: str):
            require(is_integer(getattr(self, name)), self, name, "a positive integer")

        for name in (
            "num_epochs",
            "num_trajectories",
            "improve_iterations",
            "num_step_sizes",
            "distill_passes",
            "minibatch_size",
        ):
            positive_int(name)
        if self.horizon is not None:
            positive_int("horizon")
        if self.horizon_start is not None:
            positive_int("horizon_start")
        positive_int("horizon_growth_epochs")
        if self.gradient_window is not None:
            positive_int("gradient_window")
        require(self.order in (1, 2), self, "order", "1 or 2")
        require(isinstance(self.feedback, bool), self, "feedback", "true or false")
        require(
            not self.feedback or self.order == 2,
            self,
            "feedback",
            f"false with order={self.order} (feedback is a second-order step)",
        )
        require_positive(
            self, "step_size_max", "step_size_min", "max_gradient_norm", "learning_rate"
        )
        require(
            self.step_size_min <= self.step_size_max,
            self,
            "step_size_min",
            f"<= step_size_max ({self.step_size_max})",
        )

    def _check_choices_and_noise(self) -> None:
        """The options, the damping, the exploration and the network: checked second."""
        require(
            self.policy_selection in POLICY_SELECTIONS,
            self,
            "policy_selection",
            f"one of {POLICY_SELECTIONS}",
        )
        require(
            self.gradient_normalization in GRADIENT_NORMALIZATIONS,
            self,
            "gradient_normalization",
            f"one of {GRADIENT_NORMALIZATIONS}",
        )
        require(
            math.isfinite(self.damping) and self.damping >= 0,
            self,
            "damping",
            "a finite number >= 0",
        )
        require(
            math.isfinite(self.exploration_noise) and self.exploration_noise >= 0,
            self,
            "exploration_noise",
            "a finite number >= 0",
        )
        require(0 < self.exploration_decay <= 1, self, "exploration_decay", "in (0, 1]")
        require(0 < self.elite_fraction <= 1, self, "elite_fraction", "in (0, 1]")
        require(self.start_states in START_STATES, self, "start_states", f"one of {START_STATES}")
        require(
            self.distill_states in DISTILL_STATES,
            self,
            "distill_states",
            f"one of {DISTILL_STATES}",
        )
        require(
            self.learning_rate_schedule in LEARNING_RATE_SCHEDULES,
            self,
            "learning_rate_schedule",
            f"one of {LEARNING_RATE_SCHEDULES}",
        )
        require(
            isinstance(self.hidden_sizes, tuple)
            and all(isinstance(w, int) and w > 0 for w in self.hidden_sizes),
            self,
            "hidden_sizes",
            "a tuple of positive integers",
        )

    def step_size_candidates(self) -> int:
        """Rollouts one improvement step's step-size search takes per trajectory."""
        return self.num_step_sizes

    def rollout_batches(self, prefix: str | None = None) -> dict[str, int]:
        """The batches of rollouts an epoch shards over the devices, each named by the
        fields that size it (`prefix`: how the fields are called, `PODSConfig.` by default,
        `algo.` on the command line): PODS has one, of k."""
        prefix = f"{type(self).__name__}." if prefix is None else prefix
        return {f"{prefix}num_trajectories={self.num_trajectories}": self.num_trajectories}

    def steps_per_trajectory(self, horizon: int, episode_length: int | None = None) -> int:
        """Env steps one trajectory costs per epoch (forward passes; derivative passes not
        counted): the evaluation rollout, the data rollout if it is another one (noisy, or
        cut by a growing horizon), per improvement step the derivative rollout and the
        step-size search's candidates, and with `start_states="visited"` the
        episode_length - horizon steps to the start. A growing horizon's rollouts still run
        all N steps."""
        rollouts = (
            1
            + (self.exploration_noise > 0 or self.horizon_start is not None)
            + self.improve_iterations * (1 + self.step_size_candidates())
        )
        to_start = 0
        if self.start_states == "visited":
            if episode_length is None:
                raise ValueError("start_states='visited' counts steps from the episode_length")
            to_start = episode_length - horizon
        return rollouts * horizon + to_start

    def sim_steps_per_epoch(self, horizon: int, episode_length: int | None = None) -> int:
        """Env steps evaluated per epoch, over all k trajectories."""
        return self.num_trajectories * self.steps_per_trajectory(horizon, episode_length)


def check_horizons(config: PODSConfig, horizon: int, episode_length: int) -> None:
    """`start_states="visited"` needs a horizon shorter than the episode (with the whole
    episode as the horizon every rollout starts at a reset anyway), and a growing horizon
    starts within the horizon."""
    name = type(config).__name__
    if config.start_states == "visited" and horizon >= episode_length:
        raise ValueError(
            f"{name}.start_states='visited' needs a horizon shorter than the "
            f"episode ({episode_length} steps), got horizon={horizon}"
        )
    if config.horizon_start is not None and config.horizon_start > horizon:
        raise ValueError(
            f"{name}.horizon_start must be <= the horizon ({horizon} steps), "
            f"got {config.horizon_start}"
        )


STEP_SIZE_SEARCHES = ("line_search", "annealing")


@dataclasses.dataclass(frozen=True)
class HDSConfig(PODSConfig):
    """Hyperparameters of HDS: PODS's, plus the model fraction and the step-size search."""

    beta: float = 0.0
    """Fraction of the k rollouts run in the learned model env, in [0, 1]; the model group has
    floor(beta * k + 0.5) trajectories, the sim group the rest."""
    step_size_search: str = "line_search"
    """`line_search`: PODS's batched geometric grid; `annealing`: simulated annealing over alpha,
    one chain per trajectory (see `pods.step_size.anneal_step_size`). Both stay in [step_size_min,
    step_size_max] and never accept a worse return."""
    annealing_iterations: int = 8
    """Annealing proposals per improvement step, each one batched rollout of all k."""
    annealing_temperature: float = 1.0
    """Initial temperature T_0, in return units: a proposal worse by delta is accepted with
    probability exp(-delta / T)."""
    annealing_cooling: float = 0.7
    """Factor on the temperature after every proposal, in (0, 1]: T_i = T_0 * cooling^i."""
    annealing_proposal_scale: float = 1.0
    """Std of the Gaussian random walk on log(alpha); 1.0 moves alpha by a factor e."""

    def __post_init__(self):
        super().__post_init__()  # `require` names type(self): HDSConfig

        def number(name: str) -> bool:
            return is_number(getattr(self, name))

        require(number("beta") and 0 <= self.beta <= 1, self, "beta", "a number in [0, 1]")
        require(
            self.step_size_search in STEP_SIZE_SEARCHES,
            self,
            "step_size_search",
            f"one of {STEP_SIZE_SEARCHES}",
        )
        require(
            not self.feedback or self.step_size_search == "line_search",
            self,
            "step_size_search",
            "'line_search' with feedback=true (the feedback step searches its grid closed loop)",
        )
        require(
            is_integer(self.annealing_iterations),
            self,
            "annealing_iterations",
            "a positive integer",
        )
        require_positive(self, "annealing_temperature")
        require(
            number("annealing_cooling") and 0 < self.annealing_cooling <= 1,
            self,
            "annealing_cooling",
            "in (0, 1]",
        )
        require_positive(self, "annealing_proposal_scale")

    def pods_config(self) -> PODSConfig:
        """The PODS part of this config."""
        return PODSConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PODSConfig)})

    def group_sizes(self) -> tuple[int, int]:
        """(sim trajectories, model trajectories) per epoch; half-way rounds up to the model."""
        model = math.floor(self.beta * self.num_trajectories + 0.5)
        return self.num_trajectories - model, model

    def rollout_batches(self, prefix: str | None = None) -> dict[str, int]:
        """PODS's, for each of the two groups: each is its own batch of rollouts."""
        k_sim, k_model = self.group_sizes()
        fields = f"{type(self).__name__}." if prefix is None else prefix
        beta = "beta" if prefix is None else f"{prefix}beta"
        split = f"{fields}num_trajectories={self.num_trajectories} at {beta}={self.beta}"
        return {f"{split} (model group {k_model})": k_model, f"{split} (sim group {k_sim})": k_sim}

    def step_size_candidates(self) -> int:
        """The line search's grid, or annealing's start and proposals."""
        if self.step_size_search == "line_search":
            return self.num_step_sizes
        return self.annealing_iterations + 1


def grown_horizon(config: PODSConfig, horizon: int, epoch: jax.Array) -> jax.Array:
    """The steps epoch `epoch`'s rollouts are improved over (`PODSConfig.horizon_start`)."""
    start = config.horizon_start
    growth = config.horizon_growth_epochs
    return start + (horizon - start) * jnp.minimum(epoch, growth) // growth


__all__ = [
    "grown_horizon",
    "DISTILL_STATES",
    "LEARNING_RATE_SCHEDULES",
    "POLICY_SELECTIONS",
    "START_STATES",
    "PODSConfig",
    "check_horizons",
]
