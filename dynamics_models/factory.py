"""Which model to fit, as one plain config: what the HDS loop and the `model/` config group
choose between (MLP, ensemble, residual), and how each is fitted."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dynamics_models.data import ObsLayout, TransitionDataset
from dynamics_models.models import EnsembleDynamics, MLPDynamics, ResidualDynamics
from dynamics_models.training import TrainingConfig
from pods.validation import require

MODEL_KINDS = ("mlp", "ensemble", "residual")
PREDICTIONS = ("mean", "member")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A dynamics model's architecture and its fitting schedule."""

    kind: str = "residual"
    """`mlp`: s' from an MLP of (s, a); `residual`: the `sim` step plus a learned correction;
    `ensemble`: `n_members` models of kind `member`, predicting with their mean."""
    width: int = 64
    """Hidden units per layer."""
    depth: int = 2
    """Hidden layers."""
    n_members: int = 5
    """Ensemble size (`ensemble` only)."""
    member: str = "mlp"
    """Kind of each ensemble member, `mlp` or `residual` (`ensemble` only)."""
    prediction: str = "mean"
    """How an ensemble steps a rollout (`ensemble` only): `mean`, with its members' mean;
    `member`, with one member drawn per rollout at its reset (`LearnedEnv.sample_member`)."""
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_steps: int = 3000
    """Upper bound on gradient steps per fit; early stopping usually ends a fit sooner."""
    eval_every: int = 100
    patience: int = 5
    rollout_horizon: int = 1
    """Open-loop steps of the fitting loss (1: one-step regression)."""

    def __post_init__(self):
        def positive_int(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        require(self.kind in MODEL_KINDS, self, "kind", f"one of {MODEL_KINDS}")
        require(self.member in ("mlp", "residual"), self, "member", "'mlp' or 'residual'")
        require(self.prediction in PREDICTIONS, self, "prediction", f"one of {PREDICTIONS}")
        require(
            self.prediction == "mean" or self.kind == "ensemble",
            self,
            "prediction",
            "'mean' unless kind is 'ensemble' (only an ensemble has members to draw)",
        )
        for name in ("width", "depth", "batch_size", "max_steps", "eval_every", "patience"):
            require(positive_int(name), self, name, "a positive integer")
        require(
            positive_int("n_members") and self.n_members >= 2, self, "n_members", "an integer >= 2"
        )
        require(positive_int("rollout_horizon"), self, "rollout_horizon", "a positive integer")
        require(
            isinstance(self.learning_rate, int | float) and self.learning_rate > 0,
            self,
            "learning_rate",
            "a number > 0",
        )
        # Early stopping must get to evaluate at least once.
        require(
            self.max_steps >= self.eval_every, self, "max_steps", f">= eval_every={self.eval_every}"
        )

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            eval_every=self.eval_every,
            patience=self.patience,
            rollout_horizon=self.rollout_horizon,
        )


def make_model(
    config: ModelConfig, key: jax.Array, train_data: TransitionDataset, sim_env: Any
) -> MLPDynamics | ResidualDynamics | EnsembleDynamics:
    """A fresh, untrained model of `config`'s kind, normalized by `train_data`, in the dtype
    of `sim_env` (the residual's base simulator and the learned env's testbed)."""
    dtype = getattr(sim_env, "dtype", jnp.float32)
    shape = dict(width=config.width, depth=config.depth, dtype=dtype)
    if config.kind == "residual":
        return ResidualDynamics.for_dataset(key, train_data, sim_env, **shape)
    # Angles enter as (cos, sin) pairs; the model predicts steps of the wrapped angle.
    layout = ObsLayout.of_env(sim_env)
    if config.kind == "mlp":
        return MLPDynamics.for_dataset(key, train_data, layout, **shape)
    if config.member == "residual":
        return EnsembleDynamics.for_dataset(
            key, train_data, config.n_members, member="residual", sim_env=sim_env, **shape
        )
    return EnsembleDynamics.for_dataset(key, train_data, config.n_members, layout=layout, **shape)


__all__ = ["MODEL_KINDS", "PREDICTIONS", "ModelConfig", "make_model"]
