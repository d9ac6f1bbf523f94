"""Fitting a dynamics model to transitions with optax: minibatches, early stopping, and an
optional multi-step (rollout) loss.

Loss over a window of h consecutive real steps, rolled out open loop through the model from
the window's first real observation:

    L = mean_j || wrap(z_pred_j - z_j) / target_std ||^2,     j = 1..h

With h = 1 this is the normalized one-step regression loss; then the base prediction (the
simulator's step, for a residual model) does not depend on the parameters and is computed
once for the whole dataset instead of in every minibatch. h > 1 trains the model on its own
predictions, which is what a k-step rollout (and PODS through a learned env) feeds it.

Early stopping: every `eval_every` steps the validation loss (held-out trajectories) is
measured; the best parameters so far are kept, and training ends after `patience`
evaluations without improvement. The steps, evaluations and the keep-best bookkeeping run in
one jitted `lax.scan` per chunk of evaluations; the Python loop around it only reports.

The windows are padded to a power of two (minibatches are drawn from the real ones, the
validation loss averages the real ones only), so the sim2real loop's refits on a dataset that
grows every round compile once per doubling instead of once per round.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics_models.data import TransitionDataset
from dynamics_models.models import EnsembleDynamics, base_states
from pods.validation import require


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of `train`."""

    learning_rate: float = 1e-3
    """Adam's step size."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) on the network weights."""
    batch_size: int = 256
    """Windows per minibatch (per member for an ensemble), drawn with replacement."""
    max_steps: int = 5000
    """Upper bound on gradient steps."""
    eval_every: int = 100
    """Gradient steps between validation evaluations."""
    patience: int = 10
    """Evaluations without a new best validation loss before training stops."""
    rollout_horizon: int = 1
    """h, the number of open-loop steps the loss rolls out (1 = one-step regression)."""
    gradient_clip: float = 10.0
    """Global-norm clip of each gradient."""
    evals_per_call: int = 10
    """Evaluations per jitted call; `progress_fn` is called between calls."""

    def __post_init__(self):
        for name in (
            "batch_size",
            "max_steps",
            "eval_every",
            "patience",
            "rollout_horizon",
            "evals_per_call",
        ):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, self, name, "a positive integer")
        for name in ("learning_rate", "gradient_clip"):
            value = getattr(self, name)
            require(np.isfinite(value) and value > 0, self, name, "a positive number")
        require(
            np.isfinite(self.weight_decay) and self.weight_decay >= 0, self, "weight_decay", ">= 0"
        )


class TrainingState(eqx.Module):
    params: Any
    opt_state: Any
    best_params: Any
    best_loss: jax.Array
    bad_evals: jax.Array
    step: jax.Array
    key: jax.Array


class _Windows(eqx.Module):
    """Training or validation data as windows, padded to `capacity(count)` rows by repeating
    the first ones; `targets_n` are the precomputed normalized one-step targets (h = 1)."""

    obs: jax.Array
    actions: jax.Array
    targets: jax.Array
    targets_n: jax.Array
    count: jax.Array
    """The number of real windows; rows from `count` on are padding."""


def trainable_filter(model: Any) -> Any:
    """A filter spec: True on the network weights, False elsewhere (the normalizer is fixed)."""
    spec = jax.tree.map(lambda _: False, model)
    get_net = (
        (lambda m: m.members.network)
        if isinstance(model, EnsembleDynamics)
        else (lambda m: m.network)
    )
    return eqx.tree_at(get_net, spec, replace=jax.tree.map(eqx.is_inexact_array, get_net(model)))


def _single_model(model: Any) -> Any:
    return model.member(0) if isinstance(model, EnsembleDynamics) else model


def capacity(count: int) -> int:
    """The rows `count` windows are padded to: the next power of two."""
    return 1 << max(count - 1, 0).bit_length()


def _windows(model: Any, data: TransitionDataset, horizon: int) -> _Windows:
    single = _single_model(model)
    layout, n, dtype = single.layout, single.normalizer, single.dtype
    windows = data.windows(horizon)
    count = windows[0].shape[0]
    # Padded before the base predictions, not after: every array op below then sees the
    # padded shape, so none of them compiles again for a new count either.
    rows = np.arange(capacity(count)) % count
    obs, actions, targets = (jnp.asarray(x[rows], dtype) for x in windows)

    base = base_states(single, obs, actions[:, 0])
    step = layout.difference(layout.to_state(targets[:, 0]), base)
    targets_n = (step - n.target_mean) / n.target_std
    return _Windows(obs, actions, targets, targets_n, jnp.asarray(count, jnp.int32))


def _member_loss(member: Any, data: _Windows, idx: jax.Array, horizon: int) -> jax.Array:
    """The loss of each window in `idx`."""
    obs, actions = data.obs[idx], data.actions[idx]
    if horizon == 1:
        prediction = jax.vmap(member.correction)(obs, actions[:, 0])
        return jnp.mean((prediction - data.targets_n[idx]) ** 2, axis=-1)
    layout, std = member.layout, member.normalizer.target_std

    def window_loss(obs0, window_actions, window_targets):
        def step(o, a):
            z = member.next_state(o, a)
            return layout.to_obs(z), z

        _, z_pred = jax.lax.scan(step, obs0, window_actions)
        error = layout.difference(z_pred, layout.to_state(window_targets)) / std
        return jnp.mean(error**2)

    return jax.vmap(window_loss)(obs, actions, data.targets[idx])


def _loss(model: Any, data: _Windows, idx: jax.Array, horizon: int) -> jax.Array:
    """The mean loss over the windows `idx` that are data, not padding (an ensemble's: over
    its members too, so it reads like a single model's; the members' gradients stay
    independent either way)."""
    if isinstance(model, EnsembleDynamics):
        per_window = eqx.filter_vmap(
            lambda m, i: _member_loss(m, data, i, horizon), in_axes=(eqx.if_array(0), 0)
        )(model.members, idx)
    else:
        per_window = _member_loss(model, data, idx, horizon)
    real = idx < data.count
    return jnp.sum(jnp.where(real, per_window, 0.0)) / jnp.sum(real)


def _optimizer(config: TrainingConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(config.gradient_clip),
        optax.adamw(config.learning_rate, weight_decay=config.weight_decay),
    )


@eqx.filter_jit
def _train_chunk(
    state: TrainingState,
    static: Any,
    train_data: _Windows,
    val_data: _Windows,
    config: TrainingConfig,
    n_members: int | None,
):
    """`config.evals_per_call` evaluation periods; periods after early stopping are skipped."""
    optimizer = _optimizer(config)
    h = config.rollout_horizon
    batch_shape = (config.batch_size,) if n_members is None else (n_members, config.batch_size)
    val_idx = jnp.arange(val_data.obs.shape[0])
    if n_members is not None:
        val_idx = jnp.broadcast_to(val_idx, (n_members, val_idx.shape[0]))

    def loss_of(params, data, idx):
        return _loss(eqx.combine(params, static), data, idx, h)

    def gradient_step(carry, _):
        params, opt_state, key = carry
        key, key_batch = jax.random.split(key)
        idx = jax.random.randint(key_batch, batch_shape, 0, train_data.count)
        loss, grads = jax.value_and_grad(loss_of)(params, train_data, idx)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        # A non-finite step is rejected rather than applied: one NaN would ruin the weights.
        # Not optax.apply_if_finite: it nests the optimizer state (a new checkpoint layout) and
        # counts skipped steps in its state.
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, params)
        opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_opt_state, opt_state
        )
        return (params, opt_state, key), loss

    def period(state: TrainingState):
        (params, opt_state, key), losses = jax.lax.scan(
            gradient_step,
            (state.params, state.opt_state, state.key),
            None,
            length=config.eval_every,
        )
        val_loss = loss_of(params, val_data, val_idx)
        better = val_loss < state.best_loss
        best_params = jax.tree.map(
            lambda new, old: jnp.where(better, new, old), params, state.best_params
        )
        new_state = TrainingState(
            params,
            opt_state,
            best_params,
            jnp.where(better, val_loss, state.best_loss),
            jnp.where(better, 0, state.bad_evals + 1),
            state.step + config.eval_every,
            key,
        )
        return new_state, (jnp.mean(losses), val_loss, jnp.array(True))

    def skip(state: TrainingState):
        nan = jnp.array(jnp.nan, state.best_loss.dtype)
        return state, (nan, nan, jnp.array(False))

    def one_period(state, _):
        active = (state.bad_evals < config.patience) & (state.step < config.max_steps)
        return jax.lax.cond(active, period, skip, state)

    return jax.lax.scan(one_period, state, None, length=config.evals_per_call)


def train(
    model: Any,
    train_data: TransitionDataset,
    validation_data: TransitionDataset,
    config: TrainingConfig = TrainingConfig(),
    key: jax.Array | None = None,
    *,
    progress_fn: Callable[[int, dict], None] | None = None,
) -> tuple[Any, dict]:
    """Fits `model` (MLP, residual or ensemble) to `train_data`; early-stops on
    `validation_data`. Returns the best model by validation loss and a metrics history:
    `step`, `train/loss`, `validation/loss` per evaluation, `train/best_validation_loss`,
    `train/steps`, `train/seconds` (wall time including compilation)."""
    single = _single_model(model)
    for name, data in (("train_data", train_data), ("validation_data", validation_data)):
        if (data.obs_dim, data.action_dim) != (
            single.layout.obs_dim,
            single.normalizer.action_mean.shape[-1],
        ):
            raise ValueError(
                f"{name} has (obs_dim, action_dim) {(data.obs_dim, data.action_dim)} but the model "
                f"expects {(single.layout.obs_dim, single.normalizer.action_mean.shape[-1])}"
            )
        if data.horizon < config.rollout_horizon:
            raise ValueError(
                f"{name} trajectories have {data.horizon} steps, fewer than rollout_horizon "
                f"{config.rollout_horizon}"
            )
    key = jax.random.PRNGKey(0) if key is None else key
    start = time.perf_counter()
    params, static = eqx.partition(model, trainable_filter(model))
    train_windows = _windows(model, train_data, config.rollout_horizon)
    val_windows = _windows(model, validation_data, config.rollout_horizon)
    n_members = model.n_members if isinstance(model, EnsembleDynamics) else None
    state = TrainingState(
        params,
        _optimizer(config).init(params),
        params,
        jnp.array(jnp.inf, single.dtype),
        jnp.array(0),
        jnp.array(0),
        key,
    )
    history = {"step": [], "train/loss": [], "validation/loss": []}
    # The impure loop: runs jitted chunks, syncs, and reports between them.
    while True:
        state, (train_loss, val_loss, ran) = _train_chunk(
            state, static, train_windows, val_windows, config, n_members
        )
        ran = np.asarray(ran)
        step0 = int(state.step) - config.eval_every * int(ran.sum())
        for i, (tl, vl) in enumerate(
            zip(np.asarray(train_loss)[ran], np.asarray(val_loss)[ran], strict=True)
        ):
            history["step"].append(step0 + config.eval_every * (i + 1))
            history["train/loss"].append(float(tl))
            history["validation/loss"].append(float(vl))
        if progress_fn is not None and ran.any():
            progress_fn(int(state.step), {k: v[-1] for k, v in history.items() if k != "step"})
        if (
            not ran.all()
            or int(state.bad_evals) >= config.patience
            or int(state.step) >= config.max_steps
        ):
            break
    trained = eqx.combine(state.best_params, static)
    jax.block_until_ready(trained)
    history["train/best_validation_loss"] = float(state.best_loss)
    history["train/steps"] = int(state.step)
    history["train/seconds"] = time.perf_counter() - start
    return trained, history
