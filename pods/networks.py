"""The deterministic policy PODS distills into: an MLP, tanh-bounded to the action range.

Parameters are one pytree, `PolicyParams(normalizer, network)`, as Brax's agents pair
normalizer statistics with network weights; only `network` is trained by gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from pods.rollout import Policy


@struct.dataclass
class ObservationNormalizer:
    """Running mean and variance of the observations seen in data rollouts.

    Cart-pole observations mix O(1) cosines with angular velocities of O(10) rad/s; scaling
    them to unit variance keeps the first layer's pre-activations in tanh's useful range.
    """

    # Not Brax's running_statistics: its state (summed variance, clipped std) is another
    # checkpoint layout and its update other arithmetic, so params would no longer match bitwise.
    mean: Float[Array, " obs_dim"]
    variance: Float[Array, " obs_dim"]
    count: Float[Array, ""]

    @classmethod
    def identity(cls, obs_dim: int, dtype: Any = jnp.float32) -> ObservationNormalizer:
        return cls(jnp.zeros(obs_dim, dtype), jnp.ones(obs_dim, dtype), jnp.zeros((), dtype))

    def update(
        self, observations: Float[Array, "... obs_dim"], mask: Float[Array, ...] | None = None
    ) -> ObservationNormalizer:
        """Merges a batch into the running statistics (Chan et al.'s parallel update).

        `mask` leaves out rows (e.g. of rollouts that went non-finite) with weight 0.
        """
        x = observations.reshape(-1, observations.shape[-1])
        w = jnp.ones(x.shape[0], x.dtype) if mask is None else mask.reshape(-1).astype(x.dtype)
        x = jnp.where(w[:, None] > 0, x, 0.0)
        n = jnp.sum(w)
        batch_mean = jnp.sum(w[:, None] * x, 0) / jnp.maximum(n, 1.0)
        batch_var = jnp.sum(w[:, None] * (x - batch_mean) ** 2, 0) / jnp.maximum(n, 1.0)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / jnp.maximum(total, 1.0)
        m2 = (
            self.variance * self.count
            + batch_var * n
            + delta**2 * self.count * n / jnp.maximum(total, 1.0)
        )
        variance = jnp.where(total > 0, m2 / jnp.maximum(total, 1.0), self.variance)
        return ObservationNormalizer(mean, variance, total)

    def __call__(self, obs: Float[Array, "... obs_dim"]) -> Float[Array, "... obs_dim"]:
        # Clipping the standardized value bounds what one outlying state can do to the MLP.
        std = jnp.sqrt(self.variance + 1e-6)
        return jnp.clip((obs - self.mean) / std, -10.0, 10.0)


class PolicyNetwork(nn.Module):
    """obs -> tanh(MLP(obs)): actions always lie in the env's range [-1, 1]."""

    action_size: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: Callable[[jax.Array], jax.Array] = nn.tanh
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: Float[Array, "... obs_dim"]) -> Float[Array, "... act_dim"]:
        x = obs
        for width in self.hidden_sizes:
            x = self.activation(
                nn.Dense(width, param_dtype=self.param_dtype, dtype=self.param_dtype)(x)
            )
        # A small last layer starts the policy near a = 0, away from tanh's flat tails where
        # distillation targets at the bounds would stall the gradient.
        x = nn.Dense(
            self.action_size,
            kernel_init=nn.initializers.variance_scaling(0.01, "fan_in", "uniform"),
            param_dtype=self.param_dtype,
            dtype=self.param_dtype,
        )(x)
        return jnp.tanh(x)


@struct.dataclass
class PolicyParams:
    normalizer: ObservationNormalizer
    network: Any


def init_policy_params(
    network: PolicyNetwork, obs_dim: int, key: jax.Array, dtype: Any = jnp.float32
) -> PolicyParams:
    network_params = network.init(key, jnp.zeros((obs_dim,), dtype))
    return PolicyParams(ObservationNormalizer.identity(obs_dim, dtype), network_params)


def policy_apply(
    network: PolicyNetwork,
    params: PolicyParams,
    obs: Float[Array, "... obs_dim"],
    *,
    normalize: bool,
) -> Float[Array, "... act_dim"]:
    x = params.normalizer(obs) if normalize else obs
    return network.apply(params.network, x)


def make_policy_factory(
    network: PolicyNetwork, *, normalize: bool
) -> Callable[[PolicyParams], Policy]:
    """Returns `make_policy(params) -> (obs -> action)`, as Brax's `train` functions do."""

    def make_policy(params: PolicyParams) -> Policy:
        return lambda obs: policy_apply(network, params, obs, normalize=normalize)

    return make_policy
