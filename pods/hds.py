"""HDS: PODS with part of its rollouts in a learned dynamics model (Steinhauser et al., ETH 2024).

One epoch, as PODS's (`pods.train`) with the k rollouts split in two groups:
  1. sample k initial states; round(beta * k) of them are rolled out in the learned `model`
     env, the rest in `sim` (two vmapped groups: never a `lax.cond` under `vmap`, which would
     run both envs for every trajectory), with decaying Gaussian exploration noise;
  2. improve each group's actions with its own env's derivatives; the step size alpha comes
     from PODS's batched line search or from simulated annealing (`anneal_step_size`), and
     neither ever accepts a worse return;
  3. distill the improved (s, a') pairs of both groups together into one policy.

With beta = 0 and the line search, the epoch *is* PODS's epoch (`make_pods`), so HDS at
beta = 0 reproduces PODS exactly. With beta = 1 the sim group is empty and `sim.step` is never
traced into the data rollouts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State
from flax import struct
from jaxtyping import Array, Bool, Float

from pods.config import PODSConfig, check_horizons
from pods.drivers import run_epochs
from pods.improve import (
    ImprovedActions,
    LineSearchResult,
    RewardFn,
    improve_along_direction,
)
from pods.networks import PolicyNetwork, PolicyParams
from pods.rollout import Policy, episode_of_actions
from pods.sharding import check_divisible, device_count, trajectory_mesh
from pods.state import TrainingState, policy_learner, starting_state
from pods.train import (
    Improvement,
    distill_improved,
    line_search_step,
    make_pods,
    roll_out_and_improve,
)
from pods.validation import is_integer, is_number, require

Metrics = dict[str, float]

STEP_SIZE_SEARCHES = ("line_search", "annealing")


@dataclasses.dataclass(frozen=True)
class HDSConfig(PODSConfig):
    """Hyperparameters of HDS: PODS's, plus the model fraction and the step-size search."""

    beta: float = 0.0
    """Fraction of the k rollouts run in the learned model env, in [0, 1]; the model group has
    floor(beta * k + 0.5) trajectories, the sim group the rest."""
    step_size_search: str = "line_search"
    """`line_search`: PODS's batched geometric grid; `annealing`: simulated annealing over alpha,
    one chain per trajectory (see `anneal_step_size`). Both stay in [step_size_min,
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
        require(
            number("annealing_temperature") and self.annealing_temperature > 0,
            self,
            "annealing_temperature",
            "a finite number > 0",
        )
        require(
            number("annealing_cooling") and 0 < self.annealing_cooling <= 1,
            self,
            "annealing_cooling",
            "in (0, 1]",
        )
        require(
            number("annealing_proposal_scale") and self.annealing_proposal_scale > 0,
            self,
            "annealing_proposal_scale",
            "a finite number > 0",
        )

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


# --- simulated annealing over the step size ---------------------------------------------------


@struct.dataclass
class AnnealingResult:
    """The best step size each chain visited, and what the chains did on the way."""

    step_size: Float[Array, " k"]
    """The best alpha seen (the start included)."""
    value: Float[Array, " k"]
    """The objective at `step_size`; -inf where every evaluation was non-finite."""
    aux: Any
    """The objective's auxiliary output at `step_size` (leading axis k)."""
    start_value: Float[Array, " k"]
    """The objective at the chains' start, the geometric midpoint of the bounds."""
    proposal_value: Float[Array, "iterations k"]
    """The objective at each proposal (-inf where non-finite)."""
    worse: Bool[Array, "iterations k"]
    """The proposal was strictly worse than the chain's current point."""
    acceptance_probability: Float[Array, "iterations k"]
    """min(1, exp(delta / T_i)), delta = proposal - current."""
    moved: Bool[Array, "iterations k"]
    """The chain moved to the proposal."""


def anneal_step_size(
    objective: Callable[[Float[Array, " k"]], tuple[Float[Array, " k"], Any]],
    key: jax.Array,
    k: int,
    *,
    step_size_min: float,
    step_size_max: float,
    iterations: int,
    initial_temperature: float,
    cooling: float,
    proposal_scale: float,
    dtype: Any = jnp.float32,
) -> AnnealingResult:
    """k independent annealing chains maximizing `objective` over alpha in [min, max].

    `objective(alphas)` evaluates all k chains' points at once (one batched rollout) and
    returns (values, aux). Each chain starts at the geometric midpoint of the bounds and takes
    `iterations` Metropolis steps: a Gaussian random walk on log(alpha), clipped to the bounds;
    a proposal better than the current point is always taken, a worse one with probability
    exp(delta / T_i), T_i = initial_temperature * cooling^i. Non-finite values count as -inf
    (never moved to). The best point seen is returned, not the chain's last one.
    """
    log_low, log_high = math.log(step_size_min), math.log(step_size_max)
    log_alpha = jnp.full((k,), 0.5 * (log_low + log_high), dtype)

    def evaluate(log_alpha):
        values, aux = objective(jnp.exp(log_alpha))
        return jnp.where(jnp.isfinite(values), values, -jnp.inf), aux

    value, aux = evaluate(log_alpha)

    def metropolis_step(carry, x):
        log_alpha, value, best_log_alpha, best_value, best_aux = carry
        step_key, temperature = x
        key_proposal, key_accept = jax.random.split(step_key)
        proposal = jnp.clip(
            log_alpha + proposal_scale * jax.random.normal(key_proposal, (k,), dtype),
            log_low,
            log_high,
        )
        proposal_value, proposal_aux = evaluate(proposal)
        delta = proposal_value - value
        # delta is NaN only where both are -inf: nothing to gain by moving.
        probability = jnp.where(delta >= 0, 1.0, jnp.exp(delta / temperature))
        probability = jnp.where(jnp.isnan(delta), 0.0, probability).astype(dtype)
        moved = jax.random.uniform(key_accept, (k,), dtype) < probability
        better = proposal_value > best_value

        def pick(mask, new, old):
            return jax.tree.map(
                lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o),
                new,
                old,
            )

        carry = (
            jnp.where(moved, proposal, log_alpha),
            jnp.where(moved, proposal_value, value),
            jnp.where(better, proposal, best_log_alpha),
            jnp.where(better, proposal_value, best_value),
            pick(better, proposal_aux, best_aux),
        )
        return carry, (delta < 0, probability, moved, proposal_value)

    temperatures = initial_temperature * cooling ** jnp.arange(iterations, dtype=dtype)
    (_, _, best_log_alpha, best_value, best_aux), trace = jax.lax.scan(
        metropolis_step,
        (log_alpha, value, log_alpha, value, aux),
        (jax.random.split(key, iterations), temperatures),
    )
    worse, probability, moved, proposal_value = trace
    return AnnealingResult(
        step_size=jnp.exp(best_log_alpha),
        value=best_value,
        aux=best_aux,
        start_value=value,
        proposal_value=proposal_value,
        worse=worse,
        acceptance_probability=probability,
        moved=moved,
    )


def improve_actions_annealed(
    env: Env,
    states: State,
    actions: Float[Array, "k horizon act_dim"],
    observations: Float[Array, "k horizon+1 obs_dim"],
    key: jax.Array,
    *,
    step_size_min: float,
    step_size_max: float,
    iterations: int,
    initial_temperature: float,
    cooling: float,
    proposal_scale: float,
    order: int = 1,
    gradient_normalization: str = "rms",
    max_gradient_norm: float = 1.0,
    damping: float = 1e-3,
    gradient_window: int | None = None,
    reward_fn: RewardFn | None = None,
    action_bounds: tuple[float, float] = (-1.0, 1.0),
    active: Float[Array, "k horizon"] | None = None,
) -> ImprovedActions:
    """`improve_actions` with alpha from simulated annealing instead of the grid line search.

    One chain per trajectory: each trajectory's return is its own function of alpha (their
    gradients span orders of magnitude through unstable rollouts, the reason the line search is
    per trajectory too), a shared alpha would let one diverging trajectory veto every other's
    step, and k chains cost the same batched rollout per proposal as one. As with the line
    search, a trajectory takes the best alpha seen only if its return is finite and strictly
    above V(a); otherwise it keeps its actions.
    """
    low, high = action_bounds

    def search(direction, value) -> LineSearchResult:
        def candidates(alphas):
            return jnp.clip(actions + alphas[:, None, None] * direction, low, high)

        def objective(alphas):
            episodes = jax.vmap(lambda state, a: episode_of_actions(env, state, a))(
                states, candidates(alphas)
            )
            return episodes.value, (episodes.observations, episodes.active)

        annealed = anneal_step_size(
            objective,
            key,
            actions.shape[0],
            step_size_min=step_size_min,
            step_size_max=step_size_max,
            iterations=iterations,
            initial_temperature=initial_temperature,
            cooling=cooling,
            proposal_scale=proposal_scale,
            dtype=actions.dtype,
        )
        observations_seen, active_seen = annealed.aux
        return LineSearchResult(
            actions=candidates(annealed.step_size),
            value=annealed.value,
            step_size=annealed.step_size,
            accepted=annealed.value > value,
            observations=observations_seen,
            active=active_seen,
        )

    return improve_along_direction(
        env,
        states,
        actions,
        observations,
        search,
        order=order,
        gradient_normalization=gradient_normalization,
        max_gradient_norm=max_gradient_norm,
        damping=damping,
        gradient_window=gradient_window,
        reward_fn=reward_fn,
        action_bounds=action_bounds,
        active=active,
    )


# --- the HDS epoch ----------------------------------------------------------------------------


def _is_pytree(env: Any) -> bool:
    """Whether `env` flattens into arrays (so it can be a jit argument), like `LearnedEnv`."""
    leaves = jax.tree.leaves(env)
    return not (len(leaves) == 1 and leaves[0] is env)


class HDSProgram(NamedTuple):
    """HDS's pure pieces for one config and pair of envs; the epoch is not jitted."""

    network: PolicyNetwork
    make_policy: Callable[[PolicyParams], Policy]
    epoch: Callable[..., tuple[TrainingState, dict[str, jax.Array]]]
    """`epoch(state, key, model_env=None)`: `model_env=None` uses the env given to `make_hds`;
    passing a model env (a pytree such as `LearnedEnv`, same structure) as the argument of
    the jitted epoch runs that model instead, so a refitted model reuses the compiled epoch."""


def make_hds(
    config: HDSConfig,
    sim_env: Env,
    model_env: Env | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> HDSProgram:
    """Builds HDS's pure pieces for one config and pair of envs. Each group's rollouts are
    sharded over `devices` (default: every local device; see `pods.sharding`)."""
    horizon = config.horizon or sim_env.episode_length
    check_horizons(config, horizon, sim_env.episode_length)
    k = config.num_trajectories
    k_sim, k_model = config.group_sizes()
    if k_model > 0:
        if model_env is None:
            raise ValueError(
                f"HDSConfig.beta={config.beta} puts {k_model} of {k} rollouts in the model, "
                "but no model env was given"
            )
        for name in ("observation_size", "action_size"):
            if getattr(model_env, name) != getattr(sim_env, name):
                raise ValueError(
                    f"the model env's {name} is {getattr(model_env, name)}, "
                    f"the sim env's {getattr(sim_env, name)}"
                )

    if k_model == 0 and config.step_size_search == "line_search":
        # No model rollouts: the epoch is PODS's, so beta = 0 reproduces PODS bit for bit.
        pods = make_pods(config.pods_config(), sim_env, devices=devices)

        def epoch(state: TrainingState, key: jax.Array, model_env: Env | None = None):
            state, metrics = pods.epoch(state, key)
            return state, {
                **metrics,
                "train/beta": jnp.zeros_like(metrics["train/return"]),
                "train/return_sim": metrics["train/return"],
                "train/return_model": jnp.full_like(metrics["train/return"], jnp.nan),
            }

        return HDSProgram(pods.network, pods.make_policy, epoch)

    dtype = jnp.float64 if config.float64 else jnp.float32
    envs = [sim_env, model_env] if k_model else [sim_env]
    learner = policy_learner(config, envs, horizon)
    mesh = trajectory_mesh(devices)
    check_divisible(device_count(mesh), config.rollout_batches())
    default_model_env = model_env

    def annealed_step(env, states, actions, observations, active, key) -> ImprovedActions:
        shared = dict(
            order=config.order,
            gradient_normalization=config.gradient_normalization,
            max_gradient_norm=config.max_gradient_norm,
            damping=config.damping,
            gradient_window=config.gradient_window,
            active=active,
        )
        return improve_actions_annealed(
            env,
            states,
            actions,
            observations,
            key,
            step_size_min=config.step_size_min,
            step_size_max=config.step_size_max,
            iterations=config.annealing_iterations,
            initial_temperature=config.annealing_temperature,
            cooling=config.annealing_cooling,
            proposal_scale=config.annealing_proposal_scale,
            **shared,
        )

    search_step = (
        line_search_step(config, learner.step_sizes)
        if config.step_size_search == "line_search"
        else annealed_step
    )

    def improve_group(env: Env, size: int, params: PolicyParams, epoch: jax.Array, key):
        """PODS steps 1-2 for one group, in its own env."""
        return roll_out_and_improve(
            config,
            env,
            params,
            epoch,
            key,
            make_policy=learner.make_policy,
            search_step=search_step,
            size=size,
            horizon=horizon,
            episode_length=sim_env.episode_length,
            mesh=mesh,
        )

    def epoch(state: TrainingState, key: jax.Array, model_env: Env | None = None):
        model_env = default_model_env if model_env is None else model_env
        key_improve, key_distill = jax.random.split(key)
        # 1-2. Roll out and improve each group in its own env. The model group takes PODS's
        # key, so beta = 1 with the simulator as the "model" is PODS again (a test checks it).
        groups = []
        if k_model:
            groups.append(improve_group(model_env, k_model, state.params, state.epoch, key_improve))
        if k_sim:
            key_sim = jax.random.fold_in(key_improve, 1)
            groups.append(improve_group(sim_env, k_sim, state.params, state.epoch, key_sim))

        # 3. Distill the improved actions of both groups into the one policy, as PODS does.
        improvement = Improvement.concatenate(groups)
        new_state, metrics = distill_improved(
            config,
            state,
            improvement,
            key_distill,
            network=learner.network,
            optimizer=learner.optimizer,
        )
        evaluation = improvement.evaluation
        nan = jnp.full((), jnp.nan, dtype)
        metrics.update(
            {
                "train/beta": jnp.asarray(k_model / k, dtype),
                "train/return_model": jnp.mean(evaluation.value[:k_model]) if k_model else nan,
                "train/return_sim": jnp.mean(evaluation.value[k_model:]) if k_sim else nan,
            }
        )
        return new_state, metrics

    return HDSProgram(learner.network, learner.make_policy, epoch)


def step_counters(config: HDSConfig, sim_env: Env) -> dict[str, int]:
    """Env steps one epoch takes in each env, for `run_epochs` to report cumulatively."""
    per_trajectory = config.steps_per_trajectory(
        config.horizon or sim_env.episode_length, sim_env.episode_length
    )
    k_sim, k_model = config.group_sizes()
    return {
        "train/sim_steps": k_sim * per_trajectory,
        "train/model_steps": k_model * per_trajectory,
    }


def train(
    config: HDSConfig,
    envs: Env | tuple[Env, Env | None],
    key: jax.Array,
    *,
    progress_fn: Callable[[int, Metrics], None] | None = None,
    initial_params: PolicyParams | None = None,
    initial_state: TrainingState | None = None,
    checkpoint_fn: Callable[[TrainingState, Metrics], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[Callable[[PolicyParams], Policy], PolicyParams, list[Metrics]]:
    """Trains a policy with HDS; returns (make_policy, params, metrics per epoch), as PODS.

    `envs` is `(sim_env, model_env)`, or the sim env alone when beta puts no rollout in the
    model. Callbacks, warm start and exact resumption (epoch e's key is `fold_in(key, e)`)
    behave as in `pods.train.train`. Metrics are PODS's plus `train/beta` (the realized model
    fraction), `train/return_sim`, `train/return_model` (NaN for an empty group), and
    cumulative `train/sim_steps` / `train/model_steps` (env steps of each env).
    """
    sim_env, model_env = envs if isinstance(envs, tuple | list) else (envs, None)
    with jax.enable_x64(True) if config.float64 else nullcontext():
        hds = make_hds(config, sim_env, model_env, devices=devices)
        key_init, key_epochs = jax.random.split(key)
        state = starting_state(
            config,
            sim_env,
            hds.network,
            key_init,
            initial_state=initial_state,
            initial_params=initial_params,
        )
        # A pytree model (LearnedEnv) rides as an argument; any other env is closed over.
        model_argument = model_env if _is_pytree(model_env) else None
        history = run_epochs(
            jax.jit(hds.epoch),
            state,
            key_epochs,
            config.num_epochs,
            step_counters(config, sim_env),
            epoch_args=(model_argument,),
            progress_fn=progress_fn,
            checkpoint_fn=checkpoint_fn,
        )
        return hds.make_policy, history.state.policy_params, history.metrics


__all__ = [
    "STEP_SIZE_SEARCHES",
    "AnnealingResult",
    "HDSConfig",
    "HDSProgram",
    "anneal_step_size",
    "improve_actions_annealed",
    "make_hds",
    "step_counters",
    "train",
]
