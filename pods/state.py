"""What PODS (and HDS) carry from epoch to epoch, and how a run's first epoch gets it.

`TrainingState` is one immutable pytree (the policy, distillation's Adam state, the epoch
count, the best policy kept); its checkpoint form is registered with flax's serialization.
`policy_learner` checks a config against its envs and builds the pieces every epoch is made
of; `init_training_state` is where a run starts: a checkpoint (resume), or fresh parameters. An
epoch moves the state on with `kept_best` (the best policy so far) and
`learning_rate_scale` (the factor on its distillation updates).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from brax.envs.base import Env
from flax import serialization, struct

from pods.config import PODSConfig
from pods.networks import PolicyNetwork, PolicyParams, init_policy_params, make_policy_factory
from pods.rollout import Policy
from pods.step_size import step_size_grid


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


# One program, traced once per config, network and observation size (a run builds its state
# twice: the checkpoint template and the start): run eagerly, each op of the network's
# initialization would compile on its own. The same bits.
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_training_state(
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


def init_training_state(
    config: PODSConfig,
    env: Env,
    network: PolicyNetwork,
    key: jax.Array,
    *,
    initial_state: TrainingState | None = None,
    initial_params: PolicyParams | None = None,
) -> TrainingState:
    """Where a run's epochs start: a checkpointed `initial_state` (a resume), else a fresh
    state from `key`, warm-started from `initial_params` if given. PODS, HDS and the HDS loop
    share it."""
    if initial_state is not None:
        return initial_state
    state = _init_training_state(config, network, env.observation_size, key)
    return state if initial_params is None else state.replace(params=initial_params)


def start_training(
    config: PODSConfig,
    env: Env,
    network: PolicyNetwork,
    key: jax.Array,
    *,
    initial_state: TrainingState | None = None,
    initial_params: PolicyParams | None = None,
) -> tuple[TrainingState, jax.Array]:
    """A run's start from its key: the state its first epoch gets (`init_training_state`
    from the key's first half, or `initial_state`, or fresh around `initial_params`) and the
    key its epochs fold their index into (the second half), so that a resumed run draws what
    a run never interrupted draws."""
    key_init, key_epochs = jax.random.split(key)
    state = init_training_state(
        config, env, network, key_init, initial_state=initial_state, initial_params=initial_params
    )
    return state, key_epochs


__all__ = [
    "BestPolicy",
    "PolicyLearner",
    "TrainingState",
    "init_training_state",
    "kept_best",
    "learning_rate_scale",
    "policy_learner",
    "policy_optimizer",
    "start_training",
]
