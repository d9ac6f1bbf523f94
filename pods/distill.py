"""Policy distillation, PODS step 3: regress the policy onto the improved actions.

minimize_theta  sum_t 0.5 * ||pi_theta(s_t) - a'_t||^2 over every (s_t, a'_t) of the batch,
by Adam on shuffled minibatches: `passes` sweeps over the data, all of it one `lax.scan`.
`distill_improved` is the step on one epoch's improved rollouts (`pods.improve.Improvement`):
which (state, action) pairs teach, the regression, the next `TrainingState` and the epoch's
metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jaxtyping import Array, Bool, Float

from pods.config import PODSConfig
from pods.improve import Improvement
from pods.networks import PolicyNetwork, PolicyParams, policy_apply
from pods.state import TrainingState, kept_best, learning_rate_scale
from pods.step_size import ImprovementStep


@struct.dataclass
class DistillationResult:
    network_params: Any
    optimizer_state: optax.OptState
    loss: Float[Array, ""]
    """Mean regression loss over the minibatch steps that were applied (NaN if none was)."""
    skipped_updates: Float[Array, ""]
    """Minibatch steps whose loss or gradient was not finite, and so were not applied."""


def distill_policy(
    apply_fn: Callable[[Any, Float[Array, "b obs_dim"]], Float[Array, "b act_dim"]],
    network_params: Any,
    optimizer: optax.GradientTransformation,
    optimizer_state: optax.OptState,
    key: jax.Array,
    *,
    observations: Float[Array, "n obs_dim"],
    targets: Float[Array, "n act_dim"],
    weights: Float[Array, " n"],
    minibatch_size: int,
    passes: int,
    update_scale: Float[Array, ""] | None = None,
) -> DistillationResult:
    """Adam on 0.5 ||pi(s) - a'||^2 over `passes` shuffled sweeps of `minibatch_size` pairs.

    `weights` (0 or 1) leave out pairs that must not be learned from, such as rollouts that
    went non-finite; the loss is the weighted mean over a minibatch. A step whose loss or
    gradient is not finite is skipped and counted, as is (uncounted) a minibatch with no
    weight: the parameters and the optimizer state stay as they were. `update_scale`, if
    given, multiplies every Adam update (a learning rate schedule's factor). The tail of
    the data that does not fill a minibatch waits for the next shuffle.
    """
    n = observations.shape[0]
    if not (0 < minibatch_size <= n):
        raise ValueError(
            f"minibatch_size must be in [1, {n}] for {n} samples, got {minibatch_size}"
        )
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    batches_per_pass = n // minibatch_size
    # Zeroed inputs of left-out pairs keep a NaN observation from reaching the network at all.
    keep = weights > 0
    observations = jnp.where(keep[:, None], observations, 0.0)
    targets = jnp.where(keep[:, None], targets, 0.0)

    def loss_fn(params, obs, target, weight):
        residual = apply_fn(params, obs) - target
        per_pair = 0.5 * jnp.sum(residual**2, axis=-1)
        return jnp.sum(weight * per_pair) / jnp.maximum(jnp.sum(weight), 1.0)

    def minibatch_step(carry, indices):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(
            params, observations[indices], targets[indices], weights[indices]
        )
        # Not optax.apply_if_finite: it nests the optimizer state (a new checkpoint layout) and
        # checks only the updates, not the loss (nor here the minibatch's weight).
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        # A minibatch of only left-out pairs is no step at all: Adam's momentum would still move
        # the parameters on a zero gradient.
        apply = finite & (jnp.sum(weights[indices]) > 0)
        grads = jax.tree.map(lambda g: jnp.where(apply, g, 0.0), grads)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        if update_scale is not None:
            updates = jax.tree.map(lambda u: update_scale.astype(u.dtype) * u, updates)
        new_params = optax.apply_updates(params, updates)
        # Selecting the old pytrees (rather than lax.cond) keeps the step branch-free; a
        # skipped step also leaves Adam's moments and count untouched.
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(apply, new, old),
            (new_params, new_opt_state),
            (params, opt_state),
        )
        return (params, opt_state), (jnp.where(apply, loss, 0.0), apply, finite)

    def one_pass(carry, pass_key):
        order = jax.random.permutation(pass_key, n)[: batches_per_pass * minibatch_size]
        return jax.lax.scan(minibatch_step, carry, order.reshape(batches_per_pass, minibatch_size))

    (network_params, optimizer_state), (losses, applied, finite) = jax.lax.scan(
        one_pass, (network_params, optimizer_state), jax.random.split(key, passes)
    )
    applied = jnp.sum(applied)
    return DistillationResult(
        network_params=network_params,
        optimizer_state=optimizer_state,
        loss=jnp.where(applied > 0, jnp.sum(losses) / jnp.maximum(applied, 1), jnp.nan),
        skipped_updates=jnp.sum(~finite).astype(losses.dtype),
    )


def elite(values: Float[Array, " k"], fraction: float) -> Bool[Array, " k"]:
    """The top `fraction` of `values`: round(fraction * k) of them, at least one, more where
    values tie at the threshold. Non-finite values count as the lowest."""
    count = max(1, round(fraction * values.shape[0]))
    values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
    threshold = jnp.sort(values)[-count]
    return values >= threshold


# --- PODS step 3 on an epoch's improvement ------------------------------------------------


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

    return new_state, _epoch_metrics(improvement, improved, distilled, new_state)


def _epoch_metrics(
    improvement: Improvement,
    improved: ImprovementStep,
    distilled: DistillationResult,
    new_state: TrainingState,
) -> dict[str, jax.Array]:
    """The epoch's metrics: the returns before and after the steps (`improved`: the last),
    the search's statistics, distillation's loss and, with `policy_selection="best"`, the
    kept best."""
    data, evaluation, steps = improvement.data, improvement.evaluation, improvement.steps
    selected = improvement.selected
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
    return metrics
