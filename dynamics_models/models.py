"""Learned dynamics models: an MLP, an ensemble of them, and a simulator-plus-residual hybrid.

Every model predicts the next observation from (observation, action) in three stages:

    z_base = base_state(s, a)                     # MLP: the state of s; residual: the sim step
    z'     = z_base + target_std * correction(s, a) + target_mean
    s'     = layout.to_obs(z')

`correction` is a network of the normalized inputs (s, a) whose output is normalized by the
training data's statistics of z' - z_base. Working in state coordinates z (angles as angles,
see `ObsLayout`) rather than on the raw (cos, sin) columns keeps predicted (cos, sin) pairs on
the unit circle through long open-loop rollouts, and gives the network one smooth target per
angle instead of two coupled ones.

Models are equinox modules; hyperparameters are static fields. An ensemble stacks M members
along a leading axis (built and evaluated with `eqx.filter_vmap`).
"""

import abc
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from equinox import AbstractVar
from jaxtyping import Array, Float

from dynamics_models.data import NormalizationStats, ObsLayout, TransitionDataset, mean_and_std


class Normalizer(eqx.Module):
    """Input and target statistics. Leaves of the model (saved with it), never trained."""

    obs_mean: Array
    obs_std: Array
    action_mean: Array
    action_std: Array
    target_mean: Array
    """Of z' - z_base in state coordinates: the full step for an MLP, the sim's error for a
    residual model."""
    target_std: Array

    @classmethod
    def from_stats(cls, stats: NormalizationStats, dtype: Any = jnp.float32) -> "Normalizer":
        return cls(*(jnp.asarray(np.asarray(x), dtype) for x in dataclasses.astuple(stats)))

    def inputs(self, obs: Array, action: Array) -> Array:
        return jnp.concatenate(
            [(obs - self.obs_mean) / self.obs_std, (action - self.action_mean) / self.action_std]
        )

    def stats(self) -> NormalizationStats:
        return NormalizationStats(*(np.asarray(x) for x in dataclasses.astuple(self)))


class _StepModel(eqx.Module):
    """Shared prediction logic; concrete models declare these fields and define `base_state`."""

    # Annotations equinox reads at class creation: this module does without
    # `from __future__ import annotations`, which equinox cannot take for AbstractVar.
    network: AbstractVar[eqx.nn.MLP]
    normalizer: AbstractVar[Normalizer]
    layout: AbstractVar[ObsLayout]
    width: AbstractVar[int]
    depth: AbstractVar[int]
    action_limit: AbstractVar[float | None]

    @abc.abstractmethod
    def base_state(self, obs: Array, action: Array) -> Array:
        """The state the correction is added to (see the module docstring)."""

    def correction(self, obs: Float[Array, " obs"], action: Float[Array, " act"]) -> Array:
        """The network's normalized prediction of z' - z_base."""
        return self.network(self.normalizer.inputs(obs, self.saturate(action)))

    def saturate(self, action: Array) -> Array:
        # The testbeds' motor saturates at |u| = 1; a model fed the same commands must too, or
        # an optimizer would find "free" force beyond the limit in the model only.
        if self.action_limit is None:
            return action
        return jnp.clip(action, -self.action_limit, self.action_limit)

    def next_state(self, obs: Float[Array, " obs"], action: Float[Array, " act"]) -> Array:
        n = self.normalizer
        return (
            self.base_state(obs, action)
            + n.target_mean
            + n.target_std * self.correction(obs, action)
        )

    def __call__(self, obs: Float[Array, " obs"], action: Float[Array, " act"]) -> Array:
        """The predicted next observation."""
        return self.layout.to_obs(self.next_state(obs, action))

    @property
    def dtype(self):
        return self.normalizer.obs_mean.dtype

    def hyperparameters(self) -> dict:
        """The constructor's keyword arguments besides `dtype`, as a checkpoint records them."""
        return {"width": self.width, "depth": self.depth, "action_limit": self.action_limit}


def _network(key, in_size, out_size, *, width, depth, dtype) -> eqx.nn.MLP:
    for name, value in (("width", width), ("depth", depth)):
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    net = eqx.nn.MLP(in_size, out_size, width, depth, activation=jax.nn.silu, dtype=dtype, key=key)
    # A zero last layer starts every model at "z' = z_base + mean step": the sim for a residual
    # model, the average step for an MLP. Training then only learns the correction.
    last = net.layers[-1]
    last = eqx.tree_at(
        lambda layer: (layer.weight, layer.bias),
        last,
        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )
    return eqx.tree_at(lambda m: m.layers[-1], net, last)


def _check_stats(stats: NormalizationStats, layout: ObsLayout, action_dim: int) -> None:
    got = (np.shape(stats.obs_mean)[-1], action_dim, np.shape(stats.delta_mean)[-1])
    want = (layout.obs_dim, action_dim, layout.state_dim)
    if got != want:
        raise ValueError(
            f"normalization statistics have (obs, action, state) dims {got}, layout wants {want}"
        )


def _normalizer_and_network(
    key: jax.Array, stats: NormalizationStats, layout: ObsLayout, *, width, depth, dtype
) -> tuple[Normalizer, eqx.nn.MLP]:
    """A model's normalizer of `stats` and its fresh network from the normalized (s, a) to the
    state step, after checking that `stats` fit `layout`."""
    action_dim = np.asarray(stats.action_mean).shape[-1]
    _check_stats(stats, layout, action_dim)
    network = _network(
        key, layout.obs_dim + action_dim, layout.state_dim, width=width, depth=depth, dtype=dtype
    )
    return Normalizer.from_stats(stats, dtype), network


class MLPDynamics(_StepModel):
    """s' from an MLP of the normalized (s, a) that predicts the normalized state step z' - z."""

    network: eqx.nn.MLP
    normalizer: Normalizer
    layout: ObsLayout = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    action_limit: float | None = eqx.field(static=True)

    def __init__(
        self,
        key: jax.Array,
        stats: NormalizationStats,
        layout: ObsLayout,
        *,
        width: int = 128,
        depth: int = 2,
        action_limit: float | None = 1.0,
        dtype: Any = jnp.float32,
    ):
        self.layout, self.width, self.depth, self.action_limit = layout, width, depth, action_limit
        self.normalizer, self.network = _normalizer_and_network(
            key, stats, layout, width=width, depth=depth, dtype=dtype
        )

    @classmethod
    def for_dataset(
        cls, key: jax.Array, dataset: TransitionDataset, layout: ObsLayout | None = None, **kwargs
    ) -> "MLPDynamics":
        """A fresh model normalized by `dataset` (use the training split)."""
        layout = layout or ObsLayout(dataset.obs_dim)
        return cls(key, dataset.normalization(layout), layout, **kwargs)

    def base_state(self, obs, action):
        return self.layout.to_state(obs)


def sim_step_state(sim_env: Any, obs: Float[Array, " obs"], action: Float[Array, " act"]) -> Array:
    """One control step of a testbed simulator from an observation, as the state [q, qd]."""
    q, qd = sim_env.state_from_obs(obs)
    pipeline_state = sim_env.pipeline_step(sim_env.pipeline_init(q, qd), action)
    return jnp.concatenate([pipeline_state.q, pipeline_state.qd])


class ResidualDynamics(_StepModel):
    """The hybrid: z' = z_sim(s, a) + g(s, a), the Brax simulator's step plus a learned
    correction. Differentiable through both; the simulator is a static part of the model."""

    network: eqx.nn.MLP
    normalizer: Normalizer
    sim_env: Any = eqx.field(static=True)
    """A testbed (normally the `sim` variant) with `state_from_obs`, `pipeline_init`,
    `pipeline_step`."""
    layout: ObsLayout = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    action_limit: float | None = eqx.field(static=True)

    def __init__(
        self,
        key: jax.Array,
        stats: NormalizationStats,
        sim_env: Any,
        *,
        width: int = 64,
        depth: int = 2,
        action_limit: float | None = 1.0,
        dtype: Any = jnp.float32,
    ):
        layout = ObsLayout.of_env(sim_env)
        if not layout.angle_pairs and not hasattr(sim_env, "state_from_obs"):
            raise ValueError(
                f"ResidualDynamics needs a testbed simulator, got {type(sim_env).__name__}"
            )
        self.sim_env, self.layout = sim_env, layout
        self.width, self.depth, self.action_limit = width, depth, action_limit
        self.normalizer, self.network = _normalizer_and_network(
            key, stats, layout, width=width, depth=depth, dtype=dtype
        )

    @classmethod
    def for_dataset(
        cls, key: jax.Array, dataset: TransitionDataset, sim_env: Any, **kwargs
    ) -> "ResidualDynamics":
        """A fresh model normalized by `dataset`; the target statistics are those of the
        simulator's one-step error on it."""
        stats = residual_stats(dataset, sim_env, kwargs.get("action_limit", 1.0))
        return cls(key, stats, sim_env, **kwargs)

    def base_state(self, obs, action):
        return sim_step_state(self.sim_env, obs, self.saturate(action))

    def with_sim_env(self, sim_env: Any) -> "ResidualDynamics":
        """The same weights over another simulator, e.g. a float64 build of the same testbed
        (the simulator is static, so `cast_model` cannot change its dtype)."""
        fresh = ResidualDynamics(
            jax.random.PRNGKey(0),
            self.normalizer.stats(),
            sim_env,
            width=self.width,
            depth=self.depth,
            action_limit=self.action_limit,
            dtype=self.dtype,
        )
        return eqx.tree_at(
            lambda m: (m.network, m.normalizer), fresh, (self.network, self.normalizer)
        )


@functools.partial(jax.jit, static_argnums=0)
def _sim_step_chunk(sim_env: Any, obs: Array, actions: Array) -> Array:
    return jax.vmap(lambda o, a: sim_step_state(sim_env, o, a))(obs, actions)


def sim_step_states(sim_env: Any, obs: Array, actions: Array, *, chunk: int = 1024) -> np.ndarray:
    """`sim_step_state` for a batch, in fixed-size padded chunks: compiling a Brax step takes
    tens of seconds on a CPU, so every dataset size shares one compiled function."""
    dtype = sim_env.dtype
    obs, actions = np.asarray(obs), np.asarray(actions)
    n = obs.shape[0]
    pad = (-n) % chunk
    obs = np.concatenate([obs, np.repeat(obs[:1], pad, 0)]) if pad else obs
    actions = np.concatenate([actions, np.repeat(actions[:1], pad, 0)]) if pad else actions
    out = [
        np.asarray(
            _sim_step_chunk(
                sim_env,
                jnp.asarray(obs[i : i + chunk], dtype),
                jnp.asarray(actions[i : i + chunk], dtype),
            )
        )
        for i in range(0, obs.shape[0], chunk)
    ]
    return np.concatenate(out)[:n]


def residual_stats(
    dataset: TransitionDataset, sim_env: Any, action_limit: float | None = 1.0
) -> NormalizationStats:
    """Input statistics of `dataset`, target statistics of the sim's one-step error on it."""
    layout = ObsLayout.of_env(sim_env)
    stats = dataset.normalization(layout)
    s, a, s_next = dataset.transitions()
    if action_limit is not None:
        a = np.clip(a, -action_limit, action_limit)
    z_sim = sim_step_states(sim_env, s, a)
    error = np.asarray(layout.difference(layout.to_state(s_next), z_sim))
    mean, std = mean_and_std(error)
    return dataclasses.replace(stats, delta_mean=mean, delta_std=std)


def base_states(model: Any, obs: Array, actions: Array) -> Array:
    """`model.base_state` for a batch of transitions (one model, not an ensemble)."""
    if isinstance(model, ResidualDynamics):
        return jnp.asarray(
            sim_step_states(model.sim_env, obs, model.saturate(actions)), model.dtype
        )
    return jax.vmap(model.base_state)(obs, actions)


def unstack(tree: Any, i: int) -> Any:
    """Member `i` of a stacked (ensemble) model."""
    return jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, tree)


class EnsembleDynamics(eqx.Module):
    """M members of one model class, independently initialized, stacked on a leading axis.

    Predicts with the members' mean correction; their spread (`disagreement`) estimates
    epistemic uncertainty: it grows away from the training data.
    """

    members: MLPDynamics | ResidualDynamics
    n_members: int = eqx.field(static=True)

    def __init__(self, key: jax.Array, n_members: int, make_member: Callable[[jax.Array], Any]):
        if not (isinstance(n_members, int) and n_members >= 2):
            raise ValueError(f"an ensemble needs n_members >= 2, got {n_members!r}")
        self.n_members = n_members
        self.members = eqx.filter_vmap(make_member)(jax.random.split(key, n_members))

    @classmethod
    def for_dataset(
        cls,
        key: jax.Array,
        dataset: TransitionDataset,
        n_members: int = 5,
        *,
        member: str = "mlp",
        layout: ObsLayout | None = None,
        sim_env: Any = None,
        **kwargs,
    ) -> "EnsembleDynamics":
        """M fresh `member` (`mlp` or `residual`) models normalized by `dataset`."""
        if member == "mlp":
            layout = layout or ObsLayout(dataset.obs_dim)
            stats = dataset.normalization(layout)
            return cls(key, n_members, lambda k: MLPDynamics(k, stats, layout, **kwargs))
        if member == "residual":
            if sim_env is None:
                raise ValueError("an ensemble of residual members needs sim_env")
            stats = residual_stats(dataset, sim_env, kwargs.get("action_limit", 1.0))
            return cls(key, n_members, lambda k: ResidualDynamics(k, stats, sim_env, **kwargs))
        raise ValueError(f"unknown ensemble member kind {member!r}; expected 'mlp' or 'residual'")

    def member(self, i: int) -> MLPDynamics | ResidualDynamics:
        return unstack(self.members, i)

    @property
    def layout(self) -> ObsLayout:
        return self.members.layout

    @property
    def normalizer(self) -> "Normalizer":
        return self.member(0).normalizer

    @property
    def dtype(self):
        return self.members.normalizer.obs_mean.dtype

    def member_corrections(self, obs: Array, action: Array) -> Float[Array, "members state"]:
        return eqx.filter_vmap(lambda m: m.correction(obs, action))(self.members)

    def next_state(self, obs: Array, action: Array) -> Array:
        first = self.member(0)
        n = first.normalizer
        mean_correction = jnp.mean(self.member_corrections(obs, action), axis=0)
        return first.base_state(obs, action) + n.target_mean + n.target_std * mean_correction

    def __call__(self, obs: Float[Array, " obs"], action: Float[Array, " act"]) -> Array:
        """The mean prediction of the next observation."""
        return self.layout.to_obs(self.next_state(obs, action))

    def member_predictions(self, obs: Array, action: Array) -> Float[Array, "members obs"]:
        return eqx.filter_vmap(lambda m: m(obs, action))(self.members)

    def disagreement(self, obs: Float[Array, " obs"], action: Float[Array, " act"]) -> Array:
        """Std across members of the normalized prediction, averaged over state dimensions."""
        return jnp.mean(jnp.std(self.member_corrections(obs, action), axis=0))

    def hyperparameters(self) -> dict:
        return {"n_members": self.n_members, **self.member(0).hyperparameters()}


DynamicsModel = MLPDynamics | ResidualDynamics | EnsembleDynamics


def cast_model(model: Any, dtype: Any) -> Any:
    """The model with every float array cast to `dtype` (e.g. float64 for gradient checks).
    A residual model's simulator is static: build it in the same dtype."""
    return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, model)
