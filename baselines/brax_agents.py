"""Brax's own APG and PPO as baselines on the testbeds, through thin adapters.

The algorithms are Brax's (`brax.training.agents.apg.train`, `brax.training.agents.ppo.train`),
called unchanged. This module only translates between their conventions and ours:

- a frozen config dataclass (the knobs a researcher sweeps, checked before any compute) becomes
  Brax's keyword arguments, and our PRNG key becomes Brax's integer seed;
- Brax's progress callbacks become our metrics history (`train/return`, `train/sim_steps`,
  `train/wall_clock_s`, ...; Brax's own metrics ride along under `brax/`);
- Brax's stochastic policy becomes a deterministic `obs -> action` function (the distribution's
  mode), which `pods.rollout.trajectory_of_policy` runs like any PODS policy;
- PPO's domain randomization: uniform ranges for the `real` system's physical parameters, drawn
  once per training env through Brax's `randomization_fn` (`baselines.domain_randomization`).

Episodes last the env's `episode_length` steps and Brax evaluates the deterministic policy, so
Brax's `eval/episode_reward` is our return, the sum of the rewards over `env.episode_length`
steps, with no rescaling (tested against `trajectory_of_policy` on the same initial states).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env
from brax.training.acme import running_statistics, specs
from brax.training.agents.apg import networks as apg_networks
from brax.training.agents.apg import train as apg
from brax.training.agents.ppo import networks as ppo_networks
from brax.training.agents.ppo import train as ppo

from baselines.domain_randomization import PhysicsRanges, domain_randomization
from pods.drivers import Metrics
from pods.rollout import Policy
from pods.validation import is_integer, is_positive, require, require_positive

ProgressFn = Callable[[int, Metrics], None]


def _is_layer_sizes(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) > 0 and all(map(is_integer, value))


@dataclasses.dataclass(frozen=True)
class APGConfig:
    """Brax's analytic policy gradient (`brax.training.agents.apg.train`).

    Every update differentiates the mean reward of `num_envs` rollouts of `horizon_length`
    steps through the simulator; the rollouts carry on from where the last update left them
    and reset after the env's `episode_length`. Episode length and seed come from the env and
    from `train_apg`'s key.
    """

    policy_updates: int = 1000
    """Gradient steps on the policy in the whole run."""
    num_evals: int = 51
    """Evaluations of the deterministic policy (the first before any update), each a progress
    callback and one entry of the metrics history."""
    num_envs: int = 64
    """Parallel rollouts per gradient step."""
    horizon_length: int = 32
    """Env steps differentiated through per gradient step."""
    learning_rate: float = 1e-3
    """Adam's learning rate at the first update."""
    learning_rate_decay: float = 0.999
    """Factor on the learning rate after every update (1: constant; Brax's default 0.997
    nearly stops learning after ~1000 updates)."""
    adam_betas: tuple[float, float] = (0.7, 0.95)
    """Adam's (b1, b2); Brax's defaults."""
    max_gradient_norm: float = 1e9
    """Global-norm clip of the gradient (Brax also clips each update element to 1)."""
    hidden_sizes: tuple[int, ...] = (32, 32, 32, 32)
    """Widths of the policy MLP's hidden layers."""
    normalize_observations: bool = True
    """Standardize observations with running statistics."""
    num_eval_envs: int = 128
    """Initial states per evaluation."""

    def __post_init__(self):
        for name in ("policy_updates", "num_evals", "num_envs", "horizon_length", "num_eval_envs"):
            require(is_integer(getattr(self, name)), self, name, "a positive integer")
        require(
            self.policy_updates >= self.num_evals - 1,
            self,
            "policy_updates",
            f">= num_evals - 1 = {self.num_evals - 1} (at least one update between evaluations)",
        )
        require_positive(self, "learning_rate", "max_gradient_norm")
        require(
            is_positive(self.learning_rate_decay) and self.learning_rate_decay <= 1,
            self,
            "learning_rate_decay",
            "in (0, 1]",
        )
        require(
            isinstance(self.adam_betas, tuple)
            and len(self.adam_betas) == 2
            and all(is_positive(b) and b < 1 for b in self.adam_betas),
            self,
            "adam_betas",
            "a pair (b1, b2) in (0, 1)",
        )
        require(
            _is_layer_sizes(self.hidden_sizes), self, "hidden_sizes", "a tuple of positive integers"
        )
        require(
            isinstance(self.normalize_observations, bool), self, "normalize_observations", "a bool"
        )

    @property
    def updates_per_eval(self) -> int:
        """Gradient steps between two evaluations, as Brax rounds them."""
        return round(self.policy_updates / max(self.num_evals - 1, 1))

    @property
    def sim_steps_per_eval(self) -> int:
        """Env steps simulated between two evaluations (forward passes)."""
        return self.updates_per_eval * self.num_envs * self.horizon_length


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Brax's proximal policy optimization (`brax.training.agents.ppo.train`).

    Every training step collects `batch_size * num_minibatches` rollouts of `unroll_length`
    steps from `num_envs` envs, then takes `num_updates_per_batch` passes of `num_minibatches`
    Adam steps on the clipped PPO loss. Episode length and seed come from the env and from
    `train_ppo`'s key.
    """

    num_timesteps: int = 3_000_000
    """Env steps of training data in the whole run (Brax rounds up to whole training steps)."""
    num_evals: int = 12
    """Evaluations of the deterministic policy (the first before any update), each a progress
    callback and one entry of the metrics history."""
    num_envs: int = 256
    """Parallel training envs; must divide batch_size * num_minibatches."""
    unroll_length: int = 20
    """Env steps per rollout segment the PPO loss is computed over."""
    batch_size: int = 256
    """Rollout segments per minibatch."""
    num_minibatches: int = 8
    """Minibatches (Adam steps) per pass over the collected data."""
    num_updates_per_batch: int = 4
    """Passes over the collected data before collecting more."""
    learning_rate: float = 3e-4
    """Adam's learning rate."""
    entropy_cost: float = 1e-2
    """Weight of the policy's entropy bonus."""
    discounting: float = 0.97
    """Discount factor gamma."""
    gae_lambda: float = 0.95
    """lambda of the generalized advantage estimate."""
    clipping_epsilon: float = 0.3
    """Clip range of the probability ratio in the PPO loss."""
    reward_scaling: float = 1.0
    """Factor on the rewards inside the loss (reported returns are unscaled)."""
    max_grad_norm: float | None = None
    """Global-norm gradient clipping (None: none)."""
    normalize_observations: bool = True
    """Standardize observations with running statistics."""
    policy_hidden_sizes: tuple[int, ...] = (32, 32, 32, 32)
    """Widths of the policy MLP's hidden layers (Brax's default)."""
    value_hidden_sizes: tuple[int, ...] = (256, 256, 256, 256, 256)
    """Widths of the value MLP's hidden layers (Brax's default). On a CPU this net's passes
    dominate PPO's time, but (64, 64, 64) did not learn the swing-up in 3M steps (seed 0)."""
    num_eval_envs: int = 128
    """Initial states per evaluation."""
    randomization: PhysicsRanges | None = None
    """Domain randomization: each training and evaluation env draws the ranged physical
    parameters once, uniformly (None: every env has the env's own physics). A mapping of
    PhysicsRanges' fields is accepted and converted."""

    def __post_init__(self):
        for name in (
            "num_timesteps",
            "num_evals",
            "num_envs",
            "unroll_length",
            "batch_size",
            "num_minibatches",
            "num_updates_per_batch",
            "num_eval_envs",
        ):
            require(is_integer(getattr(self, name)), self, name, "a positive integer")
        require(
            self.batch_size * self.num_minibatches % self.num_envs == 0,
            self,
            "num_envs",
            f"a divisor of batch_size * num_minibatches = {self.batch_size * self.num_minibatches}",
        )
        require_positive(self, "learning_rate", "clipping_epsilon", "reward_scaling")
        require(
            isinstance(self.entropy_cost, int | float)
            and math.isfinite(self.entropy_cost)
            and self.entropy_cost >= 0,
            self,
            "entropy_cost",
            "a finite number >= 0",
        )
        for name in ("discounting", "gae_lambda"):
            value = getattr(self, name)
            require(is_positive(value) and value <= 1, self, name, "in (0, 1]")
        if self.max_grad_norm is not None:
            require(is_positive(self.max_grad_norm), self, "max_grad_norm", "None or > 0")
        require(
            isinstance(self.normalize_observations, bool), self, "normalize_observations", "a bool"
        )
        for name in ("policy_hidden_sizes", "value_hidden_sizes"):
            require(
                _is_layer_sizes(getattr(self, name)), self, name, "a tuple of positive integers"
            )
        if isinstance(self.randomization, Mapping):
            names = {f.name for f in dataclasses.fields(PhysicsRanges)}
            require(
                set(self.randomization) <= names,
                self,
                "randomization",
                f"a PhysicsRanges or a mapping with keys in {sorted(names)}",
            )
            object.__setattr__(self, "randomization", PhysicsRanges(**self.randomization))
        require(
            self.randomization is None or isinstance(self.randomization, PhysicsRanges),
            self,
            "randomization",
            "None or a PhysicsRanges",
        )

    @property
    def env_steps_per_training_step(self) -> int:
        return self.batch_size * self.num_minibatches * self.unroll_length


def _seed(key: jax.Array) -> int:
    """Brax's trainers take an integer seed; ours is drawn from the caller's key."""
    return int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))


def _deterministic(make_brax_policy: Callable[..., Any]) -> Callable[[Any], Policy]:
    """Brax's `make_policy(params, deterministic)` -> our `make_policy(params)`: the mode."""
    # The mode draws no sample: the key Brax's policy signature asks for is never read.
    unused_key = jax.random.PRNGKey(0)

    def make_policy(params: Any) -> Policy:
        policy = make_brax_policy(params, deterministic=True)
        return lambda obs: policy(obs, unused_key)[0]

    return make_policy


class _MetricsHistory:
    """Brax's progress callback, turned into our metrics history and `progress_fn`.

    The one impure piece of the adapters: it reads the clock. Brax syncs the device before
    every callback, so the times are those of finished work.
    """

    def __init__(self, sim_steps: Callable[[int], int], progress_fn: ProgressFn | None):
        self._sim_steps = sim_steps
        self._progress_fn = progress_fn
        self._start = time.perf_counter()
        self.metrics: list[Metrics] = []

    def __call__(self, step: int, brax_metrics: Mapping[str, Any]) -> None:
        index = len(self.metrics)
        metrics = {
            "train/epoch": index,
            "train/return": float(brax_metrics["eval/episode_reward"]),
            "train/return_std": float(brax_metrics["eval/episode_reward_std"]),
            "train/sim_steps": float(self._sim_steps(step)),
            "train/wall_clock_s": time.perf_counter() - self._start,
            **{f"brax/{name}": float(value) for name, value in brax_metrics.items()},
        }
        self.metrics.append(metrics)
        if self._progress_fn is not None:
            self._progress_fn(index, metrics)


def policy_template(config: APGConfig | PPOConfig, env: Env) -> tuple[Callable[[Any], Policy], Any]:
    """`(make_policy, params)` of an untrained policy of `config` on `env`, built as
    `train_apg` / `train_ppo` build theirs: the structure a trained run's params restore into
    (`flax.serialization.from_state_dict`), and the deterministic policy they give, with no
    training (how `experiments.deploy` loads a run's policy)."""
    normalize = running_statistics.normalize if config.normalize_observations else None
    key_policy, key_value = jax.random.split(jax.random.PRNGKey(0))
    # Brax's trainers keep the statistics in float32 (APG's unless use_float64, never set here).
    normalizer = running_statistics.init_state(
        specs.Array((env.observation_size,), jnp.dtype("float32"))
    )
    if isinstance(config, APGConfig):
        network = apg_networks.make_apg_networks(
            env.observation_size,
            env.action_size,
            **({} if normalize is None else {"preprocess_observations_fn": normalize}),
            hidden_layer_sizes=config.hidden_sizes,
        )
        params = (normalizer, network.policy_network.init(key_policy))
        return _deterministic(apg_networks.make_inference_fn(network)), params
    network = ppo_networks.make_ppo_networks(
        env.observation_size,
        env.action_size,
        **({} if normalize is None else {"preprocess_observations_fn": normalize}),
        policy_hidden_layer_sizes=config.policy_hidden_sizes,
        value_hidden_layer_sizes=config.value_hidden_sizes,
    )
    params = (
        normalizer,
        network.policy_network.init(key_policy),
        network.value_network.init(key_value),
    )
    return _deterministic(ppo_networks.make_inference_fn(network)), params


def _check_env(env: Env, config: Any) -> int:
    episode_length = getattr(env, "episode_length", None)
    if not is_integer(episode_length):
        raise ValueError(
            f"{type(config).__name__} trains on envs with a positive `episode_length`; "
            f"{type(env).__name__} has {episode_length!r}"
        )
    return episode_length


def train_apg(
    config: APGConfig, env: Env, key: jax.Array, *, progress_fn: ProgressFn | None = None
) -> tuple[Callable[[Any], Policy], Any, list[Metrics]]:
    """Trains a policy with Brax's APG; returns (make_policy, params, metrics per evaluation).

    `make_policy(params)` is the deterministic policy (the mode of Brax's tanh-Gaussian);
    `params` are Brax's (normalizer, policy network). `progress_fn(index, metrics)` is called
    after every evaluation, with `train/sim_steps` and `train/wall_clock_s` (from this call,
    compiling included) cumulative. A run whose parameters went non-finite raises
    `FloatingPointError`, naming the evaluation where its return first did.
    """
    episode_length = _check_env(env, config)
    history = _MetricsHistory(lambda epoch: epoch * config.sim_steps_per_eval, progress_fn)
    try:
        make_brax_policy, params, _ = _run_apg(config, env, key, episode_length, history)
    except AssertionError as error:
        # Brax ends with a check that its (replicated) training state equals itself across
        # devices, which NaN never does: a diverged run fails there, with no message.
        diverged = _diverged_at(history.metrics)
        if diverged is None:
            raise
        raise FloatingPointError(
            f"Brax's APG diverged: its evaluation return is {diverged['train/return']} at "
            f"evaluation {diverged['train/epoch']} of {config.num_evals} (after "
            f"{diverged['train/sim_steps']:.0f} env steps); try a smaller algo.learning_rate "
            f"(now {config.learning_rate:g}) or algo.max_gradient_norm (now "
            f"{config.max_gradient_norm:g})"
        ) from error
    return _deterministic(make_brax_policy), params, history.metrics


def _diverged_at(metrics: list[Metrics]) -> Metrics | None:
    """The first evaluation whose return is not finite, or None."""
    return next((m for m in metrics if not math.isfinite(m["train/return"])), None)


def _run_apg(
    config: APGConfig, env: Env, key: jax.Array, episode_length: int, history: _MetricsHistory
):
    return apg.train(
        env,
        episode_length=episode_length,
        policy_updates=config.policy_updates,
        horizon_length=config.horizon_length,
        num_envs=config.num_envs,
        num_evals=config.num_evals,
        num_eval_envs=config.num_eval_envs,
        learning_rate=config.learning_rate,
        use_schedule=config.learning_rate_decay < 1,
        schedule_decay=config.learning_rate_decay,
        adam_b=config.adam_betas,
        max_gradient_norm=config.max_gradient_norm,
        normalize_observations=config.normalize_observations,
        network_factory=functools.partial(
            apg_networks.make_apg_networks, hidden_layer_sizes=config.hidden_sizes
        ),
        deterministic_eval=True,
        seed=_seed(key),
        progress_fn=history,
    )


def train_ppo(
    config: PPOConfig, env: Env, key: jax.Array, *, progress_fn: ProgressFn | None = None
) -> tuple[Callable[[Any], Policy], Any, list[Metrics]]:
    """Trains a policy with Brax's PPO; returns (make_policy, params, metrics per evaluation).

    `make_policy(params)` is the deterministic policy (the mode of Brax's tanh-Gaussian);
    `params` are Brax's (normalizer, policy network, value network). With
    `config.randomization`, every training and evaluation env draws its own physics, so
    `train/return` is the mean over those. `progress_fn(index, metrics)` is called after every
    evaluation, with `train/sim_steps` (Brax's count of training env steps) and
    `train/wall_clock_s` (from this call, compiling included) cumulative.
    """
    episode_length = _check_env(env, config)
    history = _MetricsHistory(lambda env_steps: env_steps, progress_fn)
    ranges = config.randomization
    randomization_fn = domain_randomization(ranges) if ranges and ranges.ranged() else None
    make_brax_policy, params, _ = ppo.train(
        env,
        num_timesteps=config.num_timesteps,
        episode_length=episode_length,
        num_envs=config.num_envs,
        unroll_length=config.unroll_length,
        batch_size=config.batch_size,
        num_minibatches=config.num_minibatches,
        num_updates_per_batch=config.num_updates_per_batch,
        learning_rate=config.learning_rate,
        entropy_cost=config.entropy_cost,
        discounting=config.discounting,
        gae_lambda=config.gae_lambda,
        clipping_epsilon=config.clipping_epsilon,
        reward_scaling=config.reward_scaling,
        max_grad_norm=config.max_grad_norm,
        normalize_observations=config.normalize_observations,
        network_factory=functools.partial(
            ppo_networks.make_ppo_networks,
            policy_hidden_layer_sizes=config.policy_hidden_sizes,
            value_hidden_layer_sizes=config.value_hidden_sizes,
        ),
        randomization_fn=randomization_fn,
        num_evals=config.num_evals,
        num_eval_envs=config.num_eval_envs,
        deterministic_eval=True,
        seed=_seed(key),
        progress_fn=history,
    )
    return _deterministic(make_brax_policy), params, history.metrics


__all__ = [
    "APGConfig",
    "PPOConfig",
    "policy_template",
    "train_apg",
    "train_ppo",
]
