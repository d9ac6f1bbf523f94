"""PODS: Policy Optimization via Differentiable Simulation (Mora et al., ICML 2021).

Algorithm 1, one epoch (`make_pods(...).epoch`, one jitted pure function):
  1. roll out the deterministic policy pi_theta for N steps from k fresh initial states
     (with Gaussian exploration noise on the actions, if asked) -> s[0..N], a[0..N-1], V;
  2. improve the actions with the simulator's derivatives: a' = a + alpha dV/da (first order)
     or a' = a + alpha H^-1 dV/da (second), alpha from a batched line search that never
     accepts a worse return (`roll_out_and_improve`, with `pods.improve`);
  3. distill: Adam on 0.5 ||pi_theta(s_t) - a'_t||^2 over the improved trajectories, all of
     them as in the paper or the elite (`distill_improved`, with `pods.distill`).
Then the loop (`train`, `run_epochs`), then the helpers HDS (`pods.hds`) builds on as well.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from brax.envs.base import Env, State
from flax import serialization, struct
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float

from pods.distill import distill_policy
from pods.feedback import improve_with_feedback
from pods.improve import GRADIENT_NORMALIZATIONS, ImprovedActions, improve_actions, step_size_grid
from pods.networks import (
    PolicyNetwork,
    PolicyParams,
    init_policy_params,
    make_policy_factory,
    policy_apply,
)
from pods.programs import ProgramStore
from pods.rollout import (
    Episode,
    EpisodeLimit,
    Policy,
    episode_of_policy,
    policy_batch,
    policy_states_after,
    reset_batch,
    with_episode_limit,
)
from pods.sharding import check_divisible, device_count, shard_trajectories, trajectory_mesh
from pods.validation import is_integer, require

Metrics = dict[str, float]

DISTILL_STATES = ("improved", "original", "both")
"""Where distillation regresses the policy on the improved actions (`PODSConfig.distill_states`)."""
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
"""How distillation's learning rate changes over the epochs (`PODSConfig.learning_rate_schedule`)."""
START_STATES = ("reset", "visited")
"""Where an epoch's rollouts start (`PODSConfig.start_states`)."""
POLICY_SELECTIONS = ("last", "best")
"""Which of the epochs' policies a run returns (`PODSConfig.policy_selection`)."""


# --- the configuration ------------------------------------------------------------------------


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
    episode trains on every part of it. Tried on the double cart-pole, whose open-loop action
    sequences cannot be improved over the whole episode: it did not help there (README)."""
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
        def positive_int(name: str):
            require(is_integer(getattr(self, name)), self, name, "a positive integer")

        def positive_float(name: str):
            value = getattr(self, name)
            require(
                isinstance(value, int | float) and math.isfinite(value) and value > 0,
                self,
                name,
                "a finite number > 0",
            )

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
        for name in ("step_size_max", "step_size_min", "max_gradient_norm", "learning_rate"):
            positive_float(name)
        require(
            self.step_size_min <= self.step_size_max,
            self,
            "step_size_min",
            f"<= step_size_max ({self.step_size_max})",
        )
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


@struct.dataclass
class BestPolicy:
    """The policy `policy_selection="best"` keeps, with its score."""

    params: PolicyParams
    value: jax.Array
    """Its `train/return` (-inf before any epoch has scored one)."""
    epoch: jax.Array
    """The epochs of distillation it had."""


@struct.dataclass
class TrainingState:
    """What one epoch hands the next: the policy's parameters, distillation's Adam state and
    the count of epochs done (which also picks each epoch's key and exploration noise)."""

    params: PolicyParams
    optimizer_state: optax.OptState
    epoch: jax.Array
    best: BestPolicy | None = None
    """With `policy_selection="best"`, the best policy scored so far; None otherwise (so a
    checkpoint of `last` has the structure it always had)."""

    @property
    def policy_params(self) -> PolicyParams:
        """The policy the run returns: the kept best, else the current one."""
        return self.params if self.best is None else self.best.params


_STATE_FIELDS = ("params", "optimizer_state", "epoch")


def _state_to_dict(state: TrainingState) -> dict:
    """A checkpoint's form of the state: `best` only where it is kept, so the checkpoints of
    `policy_selection="last"` are those of runs from before the option (they load as such)."""
    fields = {name: serialization.to_state_dict(getattr(state, name)) for name in _STATE_FIELDS}
    if state.best is not None:
        fields["best"] = serialization.to_state_dict(state.best)
    return fields


def _state_from_dict(template: TrainingState, fields: dict) -> TrainingState:
    restored = {
        name: serialization.from_state_dict(getattr(template, name), fields[name], name=name)
        for name in _STATE_FIELDS
    }
    if (template.best is None) != ("best" not in fields):
        raise ValueError(
            "the checkpoint's policy_selection differs: it "
            + ("keeps no best policy" if "best" not in fields else "keeps a best policy")
        )
    best = None
    if template.best is not None:
        best = serialization.from_state_dict(template.best, fields["best"], name="best")
    return template.replace(**restored, best=best)


serialization.register_serialization_state(
    TrainingState, _state_to_dict, _state_from_dict, override=True
)


# --- one epoch: roll out, improve, distill ----------------------------------------------------


class PODSProgram(NamedTuple):
    """PODS's pure pieces for one config and env; neither function is jitted."""

    network: PolicyNetwork
    make_policy: Callable[[PolicyParams], Policy]
    improve: Callable[[PolicyParams, jax.Array, jax.Array], Improvement]
    """`improve(params, epoch, key)`: the epoch's simulation work alone (rollouts,
    derivatives, line searches)."""
    epoch: Callable[[TrainingState, jax.Array], tuple[TrainingState, dict[str, jax.Array]]]
    """`epoch(state, key)`: the whole PODS epoch."""


def line_search_step(config: PODSConfig, step_sizes: jax.Array) -> SearchStep:
    """PODS step 2 as a `SearchStep`: the config's first- or second-order direction, its
    step size from the line search over `step_sizes` (HDS's default search too)."""

    def search_step(env, states, actions, observations, active, _key) -> ImprovedActions:
        if config.feedback:
            return improve_with_feedback(
                env,
                states,
                actions,
                observations,
                step_sizes,
                damping=config.damping,
                gradient_window=config.gradient_window,
                active=active,
            )
        return improve_actions(
            env,
            states,
            actions,
            observations,
            step_sizes,
            order=config.order,
            gradient_normalization=config.gradient_normalization,
            max_gradient_norm=config.max_gradient_norm,
            damping=config.damping,
            gradient_window=config.gradient_window,
            active=active,
        )

    return search_step


def make_pods(
    config: PODSConfig, env: Env, *, devices: Sequence[jax.Device] | None = None
) -> PODSProgram:
    """Builds PODS's pure pieces for one config and env. The k rollouts are sharded over
    `devices` (default: every local device; see `pods.sharding`)."""
    horizon = config.horizon or env.episode_length
    check_horizons(config, horizon, env.episode_length)
    k = config.num_trajectories
    learner = policy_learner(config, [env], horizon)
    mesh = trajectory_mesh(devices)
    check_divisible(device_count(mesh), config.rollout_batches())

    search_step = line_search_step(config, learner.step_sizes)

    def improve(params: PolicyParams, epoch: jax.Array, key: jax.Array):
        return roll_out_and_improve(
            config,
            env,
            params,
            epoch,
            key,
            make_policy=learner.make_policy,
            search_step=search_step,
            size=k,
            horizon=horizon,
            episode_length=env.episode_length,
            mesh=mesh,
        )

    def epoch(state: TrainingState, key: jax.Array) -> tuple[TrainingState, dict[str, jax.Array]]:
        key_improve, key_distill = jax.random.split(key)
        # 1-2. Roll out and improve the actions.
        improvement = improve(state.params, state.epoch, key_improve)
        # 3. Distill the improved actions (of the elite, if asked) into the policy.
        return distill_improved(
            config,
            state,
            improvement,
            key_distill,
            network=learner.network,
            optimizer=learner.optimizer,
        )

    return PODSProgram(learner.network, learner.make_policy, improve, epoch)


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


# --- steps 1-2: roll out and improve ----------------------------------------------------------


@struct.dataclass
class Improvement:
    """PODS steps 1-2 on a batch of k trajectories: what distillation and the metrics need."""

    data: Episode
    """The rollouts the actions were improved from (with exploration noise, if any)."""
    evaluation: Episode
    """The deterministic policy's rollouts from the same initial states."""
    steps: ImprovedActions
    """Every improvement step, stacked on a leading axis (trajectories second)."""
    selected: Bool[Array, " k"]
    """The trajectories to distill: the elite of the batch (see `elite`)."""
    noise: jax.Array
    """The exploration noise level used."""

    @property
    def improved(self) -> ImprovedActions:
        """The last improvement step."""
        return jax.tree.map(lambda x: x[-1], self.steps)

    @staticmethod
    def concatenate(parts: list[Improvement]) -> Improvement:
        """The batches of `parts` as one, e.g. HDS's two env groups (each its own elite)."""

        def joined(field: str, axis: int = 0):
            leaves = [getattr(part, field) for part in parts]
            return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *leaves)

        return Improvement(
            data=joined("data"),
            evaluation=joined("evaluation"),
            steps=joined("steps", axis=1),
            selected=joined("selected"),
            noise=parts[0].noise,
        )


SearchStep = Callable[[Env, State, jax.Array, jax.Array, jax.Array, jax.Array], ImprovedActions]
"""(env, states, actions, observations, active, key) -> one improvement step of every
trajectory (`active`: the steps before each episode ended)."""


def roll_out_and_improve(
    config: PODSConfig,
    env: Env,
    params: PolicyParams,
    epoch: jax.Array,
    key: jax.Array,
    *,
    make_policy: Callable[[PolicyParams], Policy],
    search_step: SearchStep,
    size: int,
    horizon: int,
    episode_length: int,
    mesh: Mesh | None = None,
) -> Improvement:
    """PODS steps 1-2 from `size` initial states of `env` (fresh, or visited by the policy
    within episodes of `episode_length` steps: `config.start_states`), and the elite among
    them; the rollouts split over `mesh`'s devices, if given. With a growing horizon
    (`config.horizon_start`) the data rollouts and the improvement run in episodes ended at
    the epoch's horizon; the evaluation rollouts never are."""
    dtype = jnp.float64 if config.float64 else jnp.float32
    key_reset, key_noise = jax.random.split(key)
    states = shard_trajectories(reset_batch(env, key_reset, size), mesh)
    policy = make_policy(params)
    if config.start_states == "visited":
        # A key of its own, so that the reset states and the noise are those of `reset`.
        offsets = jax.random.randint(
            jax.random.fold_in(key, 3), (size,), 0, episode_length - horizon + 1
        )
        states = shard_trajectories(
            policy_states_after(env, states, policy, offsets, episode_length - horizon), mesh
        )
    # train/return is always the deterministic policy's over the whole horizon, comparable
    # across configs.
    evaluation = jax.vmap(lambda s: episode_of_policy(env, s, policy, horizon))(states)
    if config.horizon_start is not None:
        # The rollouts to improve end their episodes at the epoch's horizon.
        env = EpisodeLimit(env)
        states = with_episode_limit(states, grown_horizon(config, horizon, epoch))
    noise = config.exploration_noise * config.exploration_decay ** epoch.astype(dtype)
    if config.exploration_noise > 0 or config.horizon_start is not None:
        data = jax.vmap(
            lambda s, key: episode_of_policy(env, s, policy, horizon, key=key, action_noise=noise)
        )(states, jax.random.split(key_noise, size))
    else:
        data = evaluation

    def improvement_step(trajectories, step_key):
        actions, observations, active = trajectories
        step = search_step(env, states, actions, observations, active, step_key)
        return (step.actions, step.observations, step.active), step

    _, steps = jax.lax.scan(
        improvement_step,
        (data.actions, data.observations, data.active),
        jax.random.split(jax.random.fold_in(key, 2), config.improve_iterations),
    )
    return Improvement(
        data=data,
        evaluation=evaluation,
        steps=steps,
        selected=elite(steps.value_improved[-1], config.elite_fraction),
        noise=noise,
    )


def grown_horizon(config: PODSConfig, horizon: int, epoch: jax.Array) -> jax.Array:
    """The steps epoch `epoch`'s rollouts are improved over (`PODSConfig.horizon_start`)."""
    start = config.horizon_start
    growth = config.horizon_growth_epochs
    return start + (horizon - start) * jnp.minimum(epoch, growth) // growth


# --- step 3: distill --------------------------------------------------------------------------


def distill_improved(
    config: PODSConfig,
    state: TrainingState,
    improvement: Improvement,
    key: jax.Array,
    *,
    network: PolicyNetwork,
    optimizer: optax.GradientTransformation,
) -> tuple[TrainingState, dict[str, jax.Array]]:
    """PODS step 3 and the epoch's metrics, for k trajectories of any origin: HDS calls this
    with its two env groups' `Improvement`s concatenated."""
    data, evaluation, steps = improvement.data, improvement.evaluation, improvement.steps
    improved, selected = improvement.improved, improvement.selected
    k, horizon = improved.actions.shape[:2]
    dtype = improved.actions.dtype
    improved_pairs = (improved.observations, improved.actions, improved.active)
    if config.distill_states == "both":
        # The states the last step started from: the data rollout's, or the previous step's.
        if steps.actions.shape[0] == 1:
            start_observations, start_active = data.observations, data.active
        else:
            start_observations, start_active = steps.observations[-2], steps.active[-2]
        anchor_pairs = (start_observations, improved.anchor_actions, start_active * improved.active)
        pairs = [jnp.concatenate(xs) for xs in zip(improved_pairs, anchor_pairs)]
    elif config.distill_states == "improved":
        pairs = improved_pairs
    else:
        pairs = (data.observations, improved.actions, data.active * improved.active)
    states_visited, target_actions, active = pairs
    rows = states_visited.shape[0]
    observations = states_visited[:, :-1].reshape(rows * horizon, -1)
    targets = target_actions.reshape(rows * horizon, -1)
    # A trajectory whose derivatives went non-finite is in a regime the numerics cannot
    # be trusted in: it teaches nothing, not even its own (unimproved) actions. Steps after
    # the episode ended teach nothing either: no reward judged them.
    trusted = ~jnp.any(steps.nonfinite, axis=0) & selected
    trusted = jnp.repeat(jnp.tile(trusted, rows // k), horizon)
    trusted = trusted & (active.reshape(rows * horizon) > 0)
    usable = trusted & jnp.all(jnp.isfinite(observations), -1) & jnp.all(jnp.isfinite(targets), -1)
    normalizer = state.params.normalizer
    if config.normalize_observations:
        normalizer = normalizer.update(observations, usable)
    distilled = distill_policy(
        lambda net, obs: policy_apply(
            network, PolicyParams(normalizer, net), obs, normalize=config.normalize_observations
        ),
        state.params.network,
        optimizer,
        state.optimizer_state,
        key,
        observations=observations,
        targets=targets,
        weights=usable.astype(dtype),
        minibatch_size=config.minibatch_size,
        passes=config.distill_passes,
        update_scale=learning_rate_scale(config, state.epoch, dtype),
    )
    new_state = TrainingState(
        params=PolicyParams(normalizer, distilled.network_params),
        optimizer_state=distilled.optimizer_state,
        epoch=state.epoch + 1,
        best=kept_best(state, jnp.mean(evaluation.value)),
    )

    finite_grad = ~steps.nonfinite[0]
    accepted = steps.accepted
    metrics = {
        "train/return": jnp.mean(evaluation.value),
        "train/return_data": jnp.mean(data.value),
        "train/return_improved": jnp.mean(improved.value_improved),
        "train/return_distilled": jnp.sum(jnp.where(selected, improved.value_improved, 0.0))
        / jnp.maximum(jnp.sum(selected), 1),
        "train/distill_loss": distilled.loss,
        "train/grad_norm": jnp.sum(jnp.where(finite_grad, steps.gradient_norm[0], 0.0))
        / jnp.maximum(jnp.sum(finite_grad), 1),
        "train/step_size": jnp.sum(steps.step_size) / jnp.maximum(jnp.sum(accepted), 1),
        "train/accept_rate": jnp.mean(accepted),
        "train/rejected_nonfinite": jnp.sum(steps.nonfinite) + distilled.skipped_updates,
        "train/exploration_noise": improvement.noise,
        "train/episode_steps": jnp.mean(evaluation.steps),
    }
    if new_state.best is not None:
        metrics["train/best_return"] = new_state.best.value
        metrics["train/best_epoch"] = new_state.best.epoch
    return new_state, metrics


def kept_best(state: TrainingState, value: jax.Array) -> BestPolicy | None:
    """`state.best`, replaced by the policy the epoch started from (`state.params`) where
    that policy's return `value` beats it (a non-finite value never does)."""
    if state.best is None:
        return None
    better = value > state.best.value
    candidate = BestPolicy(state.params, value.astype(state.best.value.dtype), state.epoch)
    return jax.tree.map(lambda new, old: jnp.where(better, new, old), candidate, state.best)


def learning_rate_scale(config: PODSConfig, epoch: jax.Array, dtype) -> jax.Array | None:
    """The factor on epoch `epoch`'s distillation updates (`learning_rate_schedule`)."""
    if config.learning_rate_schedule == "constant":
        return None
    return optax.cosine_decay_schedule(1.0, config.num_epochs)(epoch).astype(dtype)


# --- the loop ---------------------------------------------------------------------------------


def train(
    config: PODSConfig,
    env: Env,
    key: jax.Array,
    *,
    progress_fn: Callable[[int, Metrics], None] | None = None,
    initial_params: PolicyParams | None = None,
    initial_state: TrainingState | None = None,
    checkpoint_fn: Callable[[TrainingState, Metrics], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
    programs: ProgramStore | None = None,
) -> tuple[Callable[[PolicyParams], Policy], PolicyParams, list[Metrics]]:
    """Trains a policy with PODS; returns (make_policy, params, metrics per epoch).

    `progress_fn(epoch, metrics)` is called after every epoch, with `train/sim_steps` and
    `train/wall_clock_s` cumulative. `initial_params` warm-starts from earlier params.
    `checkpoint_fn(state, metrics)` receives the training state after every epoch; passing
    such a state back as `initial_state` (same config and key) resumes the run, and the
    resumed epochs are identical to those of a run never interrupted: epoch e's randomness is
    `fold_in(key, e)`, a function of the epoch alone. `wall_clock_s` counts from this call.
    The rollouts are sharded over `devices` (default: all local ones; see `make_pods`).
    With a `programs` store (whose context must describe `env`) the compiled epoch is loaded
    from it where a process before stored it, instead of traced again: the same results.
    """
    with jax.enable_x64(True) if config.float64 else nullcontext():
        pods = make_pods(config, env, devices=devices)
        key_init, key_epochs = jax.random.split(key)
        state = starting_state(
            config,
            env,
            pods.network,
            key_init,
            initial_state=initial_state,
            initial_params=initial_params,
        )
        horizon = config.horizon or env.episode_length
        counters = {"train/sim_steps": config.sim_steps_per_epoch(horizon, env.episode_length)}
        # The clock counts the trace, as a jitted epoch's first call does.
        clock_start = time.perf_counter()
        if programs is None:
            epoch = jax.jit(pods.epoch)
        else:
            epoch = programs.program(
                "pods_epoch",
                pods.epoch,
                (state, key_epochs),
                description=f"pods.train.train {config!r} devices={devices!r}",
            )
        history = run_epochs(
            epoch,
            state,
            key_epochs,
            config.num_epochs,
            counters,
            progress_fn=progress_fn,
            checkpoint_fn=checkpoint_fn,
            clock_start=clock_start,
        )
        return pods.make_policy, history.state.policy_params, history.metrics


def train_seeds(
    config: PODSConfig,
    env: Env,
    keys: Sequence[jax.Array],
    *,
    progress_fn: Callable[[int, int, Metrics], None] | None = None,
    initial_states: Sequence[TrainingState | None] | None = None,
    checkpoint_fn: Callable[[int, TrainingState, Metrics], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[Callable[[PolicyParams], Policy], list[PolicyParams], list[list[Metrics]]]:
    """Trains one policy per key in one compiled program, the epoch vmapped over the seeds;
    returns (make_policy, params per seed, metrics per seed and epoch).

    Seed s is `train(config, env, keys[s])`: the same keys and the same arithmetic, batched,
    so its metrics equal that run's to float rounding (vmapped matrix products may sum in
    another order; the test states the tolerance). The callbacks take the seed's index
    first: `progress_fn(s, epoch, metrics)`, `checkpoint_fn(s, state, metrics)`. Each seed
    resumes from its own `initial_states[s]` (None: a fresh start); where their epochs
    differ (a batch killed between two seeds' checkpoints), the seeds behind train alone
    until they catch up, the others' states passing through unchanged. `wall_clock_s` is the
    batch's clock, from this call.
    """
    initial_states = initial_states or [None] * len(keys)
    if len(initial_states) != len(keys):
        raise ValueError(f"{len(initial_states)} initial states for {len(keys)} seeds")
    with jax.enable_x64(True) if config.float64 else nullcontext():
        pods = make_pods(config, env, devices=devices)
        states, epoch_keys = [], []
        for key, initial_state in zip(keys, initial_states, strict=True):
            key_init, key_epochs = jax.random.split(key)
            states.append(
                starting_state(config, env, pods.network, key_init, initial_state=initial_state)
            )
            epoch_keys.append(key_epochs)
        horizon = config.horizon or env.episode_length
        counters = {"train/sim_steps": config.sim_steps_per_epoch(horizon, env.episode_length)}
        history = run_seed_epochs(
            jax.jit(seed_batch_epoch(pods.epoch)),
            stack_seeds(states),
            jnp.stack(epoch_keys),
            config.num_epochs,
            counters,
            progress_fn=progress_fn,
            checkpoint_fn=checkpoint_fn,
        )
        params = [seed_slice(history.state, s).policy_params for s in range(len(keys))]
        return pods.make_policy, params, history.metrics


def seed_batch_epoch(epoch: Callable[..., tuple[TrainingState, dict]]):
    """`epoch(state, key, *args)` for a batch of seeds: `(states, keys, i, *args) -> (states,
    metrics)`, each seed's key `fold_in(keys[s], i)` as in `run_epochs` and `args` (HDS's
    model envs) stacked per seed. Seeds whose state is not at epoch i keep it (their metrics
    are computed and discarded)."""

    def batch_epoch(states: TrainingState, keys: jax.Array, i: jax.Array, *args):
        epoch_keys = jax.vmap(lambda key: jax.random.fold_in(key, i))(keys)
        new_states, metrics = jax.vmap(epoch)(states, epoch_keys, *args)
        due = states.epoch == i

        def pick(new, old):
            return jnp.where(due.reshape(due.shape + (1,) * (new.ndim - 1)), new, old)

        return jax.tree.map(pick, new_states, states), metrics

    return batch_epoch


def stack_seeds(trees: Sequence) -> Any:
    """Per-seed pytrees of one structure (training states, model envs) as one, the seeds on
    a leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def seed_slice(states: TrainingState, s: int) -> TrainingState:
    """Seed s's state of a batch."""
    return jax.tree.map(lambda x: x[s], states)


class EpochHistory(NamedTuple):
    state: TrainingState
    metrics: list[Metrics]


def run_epochs(
    epoch: Callable[..., tuple[TrainingState, dict[str, jax.Array]]],
    state: TrainingState,
    key: jax.Array,
    num_epochs: int,
    counters_per_epoch: dict[str, int],
    *,
    epoch_args: tuple = (),
    progress_fn: Callable[[int, Metrics], None] | None = None,
    checkpoint_fn: Callable[[TrainingState, Metrics], None] | None = None,
    clock_start: float | None = None,
) -> EpochHistory:
    """Runs a compiled `epoch(state, key, *epoch_args)` from `state.epoch` to `num_epochs`.

    The one impure loop of PODS and HDS: it syncs, times and reports. Epoch e's key is
    `fold_in(key, e)`, so a run resumed from a checkpointed state repeats no randomness.
    `counters_per_epoch` (env steps, say) are reported cumulatively under their names.
    `train/wall_clock_s` counts from `clock_start` (a `time.perf_counter()` reading; default
    now), so a caller running the epochs in segments keeps one clock.
    """
    metrics_history: list[Metrics] = []
    start = time.perf_counter() if clock_start is None else clock_start
    for i in range(int(state.epoch), num_epochs):
        state, metrics = epoch(state, jax.random.fold_in(key, i), *epoch_args)
        metrics = _reported(jax.device_get(metrics), i, counters_per_epoch, start)
        metrics_history.append(metrics)
        if progress_fn is not None:
            progress_fn(i, metrics)
        if checkpoint_fn is not None:
            checkpoint_fn(state, metrics)
    return EpochHistory(state, metrics_history)


class SeedHistory(NamedTuple):
    state: TrainingState
    """Every seed's state, stacked on a leading axis."""
    metrics: list[list[Metrics]]
    """Per seed, the metrics of the epochs this call ran for it."""


def run_seed_epochs(
    epoch: Callable[..., tuple[TrainingState, dict[str, jax.Array]]],
    states: TrainingState,
    keys: jax.Array,
    num_epochs: int,
    counters_per_epoch: dict[str, int],
    *,
    args_for_epoch: Callable[[int, list[int], TrainingState], tuple] | None = None,
    progress_fn: Callable[[int, int, Metrics], None] | None = None,
    checkpoint_fn: Callable[[int, TrainingState, Metrics], None] | None = None,
    clock_start: float | None = None,
) -> SeedHistory:
    """`run_epochs` for a batch of seeds: runs a compiled `epoch(states, keys, i, *args)`
    (see `seed_batch_epoch`) from the earliest seed's epoch to `num_epochs`, and reports each
    seed's epochs, from its own on, to the callbacks with the seed's index first.
    `args_for_epoch(i, due, states)` gives epoch i's `args`, `due` the seeds it trains (HDS
    collects and refits their models there); none by default."""
    start = time.perf_counter() if clock_start is None else clock_start
    done = [int(e) for e in jax.device_get(states.epoch)]
    history: list[list[Metrics]] = [[] for _ in done]
    for i in range(min(done), num_epochs):
        due = [s for s in range(len(done)) if done[s] == i]  # the others are ahead
        args = () if args_for_epoch is None else args_for_epoch(i, due, states)
        states, batch_metrics = epoch(states, keys, jnp.asarray(i, jnp.int32), *args)
        batch_metrics = jax.device_get(batch_metrics)
        for s in due:
            metrics = _reported(
                {name: value[s] for name, value in batch_metrics.items()},
                i,
                counters_per_epoch,
                start,
            )
            history[s].append(metrics)
            done[s] = i + 1
            if progress_fn is not None:
                progress_fn(s, i, metrics)
            if checkpoint_fn is not None:
                checkpoint_fn(s, seed_slice(states, s), metrics)
    return SeedHistory(states, history)


def _reported(metrics: dict, i: int, counters_per_epoch: dict[str, int], start: float) -> Metrics:
    """Epoch i's metrics as floats, with the cumulative counters and the wall-clock."""
    reported = {name: float(value) for name, value in metrics.items()}
    reported.update({name: float((i + 1) * n) for name, n in counters_per_epoch.items()})
    reported["train/wall_clock_s"] = time.perf_counter() - start
    return reported


# --- helpers ----------------------------------------------------------------------------------


class PolicyLearner(NamedTuple):
    """The pieces every epoch of PODS (or HDS) is built from."""

    network: PolicyNetwork
    make_policy: Callable[[PolicyParams], Policy]
    optimizer: optax.GradientTransformation
    """Distillation's Adam (`policy_optimizer`)."""
    step_sizes: jax.Array
    """The line search's candidate alphas, in the config's dtype."""


def policy_learner(config: PODSConfig, envs: list[Env], horizon: int) -> PolicyLearner:
    """Checks `config` against the envs it will roll out in; returns the pieces every epoch
    of PODS (or HDS) is built from."""
    name, k = type(config).__name__, config.num_trajectories
    if config.minibatch_size > k * horizon:
        raise ValueError(
            f"{name}.minibatch_size must be <= num_trajectories * horizon = {k * horizon}, "
            f"got {config.minibatch_size}"
        )
    dtype = jnp.float64 if config.float64 else jnp.float32
    for env in envs:
        env_dtype = getattr(env, "dtype", None)
        if env_dtype is not None and jnp.dtype(env_dtype) != jnp.dtype(dtype):
            raise ValueError(
                f"{name}.float64={config.float64} but an env simulates in {jnp.dtype(env_dtype)}"
            )
    network = PolicyNetwork(envs[0].action_size, config.hidden_sizes, param_dtype=dtype)
    make_policy = make_policy_factory(network, normalize=config.normalize_observations)
    optimizer = policy_optimizer(config)
    step_sizes = step_size_grid(
        config.step_size_max, config.step_size_min, config.num_step_sizes
    ).astype(dtype)
    return PolicyLearner(network, make_policy, optimizer, step_sizes)


def policy_optimizer(config: PODSConfig) -> optax.GradientTransformation:
    """Distillation's Adam: the one that updates the policy and the one whose state
    `init_training_state` creates (and checkpoints hold), so the two always agree."""
    return optax.adam(config.learning_rate)


def init_training_state(
    config: PODSConfig, env: Env, network: PolicyNetwork, key: jax.Array
) -> TrainingState:
    return _initial_state(config, network, env.observation_size, key)


# One program, traced once per config, network and observation size (a run builds its state
# twice: the checkpoint template and the start): run eagerly, each op of the network's
# initialization compiles on its own (1.4 s of compiles on a cold start, 0.3 s of cache
# loads on a warm one). The same bits.
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _initial_state(
    config: PODSConfig, network: PolicyNetwork, obs_dim: int, key: jax.Array
) -> TrainingState:
    dtype = jnp.float64 if config.float64 else jnp.float32
    params = init_policy_params(network, obs_dim, key, dtype)
    epoch = jnp.zeros((), jnp.int32)
    best = None
    if config.policy_selection == "best":
        best = BestPolicy(params, jnp.asarray(-jnp.inf, dtype), epoch)
    return TrainingState(
        params=params,
        optimizer_state=policy_optimizer(config).init(params.network),
        epoch=epoch,
        best=best,
    )


def starting_state(
    config: PODSConfig,
    env: Env,
    network: PolicyNetwork,
    key: jax.Array,
    *,
    initial_state: TrainingState | None = None,
    initial_params: PolicyParams | None = None,
) -> TrainingState:
    """Where a run's epochs start: a checkpointed `initial_state` (a resume), else a fresh
    state, warm-started from `initial_params` if given. PODS, HDS and the HDS loop share it."""
    if initial_state is not None:
        return initial_state
    state = init_training_state(config, env, network, key)
    return state if initial_params is None else state.replace(params=initial_params)


def elite(values: Float[Array, " k"], fraction: float) -> Bool[Array, " k"]:
    """The top `fraction` of `values`: round(fraction * k) of them, at least one, more where
    values tie at the threshold. Non-finite values count as the lowest."""
    count = max(1, round(fraction * values.shape[0]))
    values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
    threshold = jnp.sort(values)[-count]
    return values >= threshold


def evaluate_policy(
    env: Env, policy: Policy, key: jax.Array, num_trajectories: int, horizon: int | None = None
) -> jax.Array:
    """Returns of the deterministic `policy` from `num_trajectories` fresh initial states."""
    horizon = horizon or env.episode_length
    return policy_batch(env, reset_batch(env, key, num_trajectories), policy, horizon).value


__all__ = [
    "PODSConfig",
    "PODSProgram",
    "PolicyLearner",
    "TrainingState",
    "BestPolicy",
    "init_training_state",
    "line_search_step",
    "starting_state",
    "make_pods",
    "train",
    "train_seeds",
    "seed_batch_epoch",
    "run_seed_epochs",
    "stack_seeds",
    "evaluate_policy",
]
