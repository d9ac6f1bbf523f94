"""The epoch driver: the impure loop that runs a compiled epoch of PODS or HDS.

`run_epochs` runs one seed's epochs, `run_seed_epochs` a batch of seeds' (the epoch vmapped
over them by `seed_batch_epoch`), both through one loop (`_drive`). They sync, time and report through callbacks; epoch e's key
is `fold_in(key, e)`, so a run resumed from a checkpointed state repeats no randomness. They
know nothing of what an epoch does: any `epoch(state, key, *args) -> (state, metrics)` runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pods.state import TrainingState

Metrics = dict[str, float]
"""What a run reports per epoch (or per call): namespaced names (`train/return`) to floats.
Every trainer's `progress_fn` and history use it."""


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
    args_for_epoch: Callable[[int, TrainingState], tuple] | None = None,
    progress_fn: Callable[[int, Metrics], None] | None = None,
    checkpoint_fn: Callable[[TrainingState, Metrics], None] | None = None,
    clock_start: float | None = None,
) -> EpochHistory:
    """Runs a compiled `epoch(state, key, *epoch_args)` from `state.epoch` to `num_epochs`.

    One seed's run of the driver `run_seed_epochs` shares: it syncs, times and reports, the
    program it runs being the unbatched epoch (a seed vmapped alone would round differently).
    Epoch e's key is `fold_in(key, e)`, so a run resumed from a checkpointed state repeats no
    randomness. `counters_per_epoch` (env steps, say) are reported cumulatively under their
    names. `args_for_epoch(i, state)`, if given, gives epoch i's arguments instead of
    `epoch_args` (the HDS loop collects and refits there). `train/wall_clock_s` counts from
    `clock_start` (a `time.perf_counter()` reading; default now), so a caller that did work
    before (the HDS loop's first collection) keeps one clock.
    """

    def one_seed_epoch(state: TrainingState, i: int, args: tuple):
        state, metrics = epoch(state, jax.random.fold_in(key, i), *args)
        metrics = jax.device_get(metrics)
        return state, lambda _: metrics

    state, (metrics,) = _drive(
        one_seed_epoch,
        state,
        [int(state.epoch)],
        num_epochs,
        counters_per_epoch,
        args_for_epoch=lambda i, due, state: (
            epoch_args if args_for_epoch is None else args_for_epoch(i, state)
        ),
        seed_state=lambda state, _: state,
        progress_fn=None if progress_fn is None else lambda _, i, m: progress_fn(i, m),
        checkpoint_fn=None if checkpoint_fn is None else lambda _, st, m: checkpoint_fn(st, m),
        clock_start=clock_start,
    )
    return EpochHistory(state, metrics)


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

    def batch_epoch(states: TrainingState, i: int, args: tuple):
        states, metrics = epoch(states, keys, jnp.asarray(i, jnp.int32), *args)
        metrics = jax.device_get(metrics)
        return states, lambda s: {name: value[s] for name, value in metrics.items()}

    states, metrics = _drive(
        batch_epoch,
        states,
        [int(e) for e in jax.device_get(states.epoch)],
        num_epochs,
        counters_per_epoch,
        args_for_epoch=args_for_epoch or (lambda i, due, states: ()),
        seed_state=seed_slice,
        progress_fn=progress_fn,
        checkpoint_fn=checkpoint_fn,
        clock_start=clock_start,
    )
    return SeedHistory(states, metrics)


def _drive(
    epoch: Callable[[Any, int, tuple], tuple[Any, Callable[[int], dict]]],
    states: Any,
    done: list[int],
    num_epochs: int,
    counters_per_epoch: dict[str, int],
    *,
    args_for_epoch: Callable[[int, list[int], Any], tuple],
    seed_state: Callable[[Any, int], TrainingState],
    progress_fn: Callable[[int, int, Metrics], None] | None,
    checkpoint_fn: Callable[[int, TrainingState, Metrics], None] | None,
    clock_start: float | None,
) -> tuple[Any, list[list[Metrics]]]:
    """The one impure loop of PODS and HDS, for one seed or a batch: from the earliest
    seed's epoch (`done[s]`: seed s's epochs done) to `num_epochs`, `epoch(states, i, args)`
    runs epoch i (the seeds ahead keep their states) and gives each seed's metrics, reported
    for the seeds due (`due`, from their own epoch on) with the cumulative counters and the
    clock, then handed to the callbacks with the seed's state."""
    start = time.perf_counter() if clock_start is None else clock_start
    history: list[list[Metrics]] = [[] for _ in done]
    for i in range(min(done), num_epochs):
        due = [s for s in range(len(done)) if done[s] == i]  # the others are ahead
        states, metrics_of = epoch(states, i, args_for_epoch(i, due, states))
        for s in due:
            metrics = _reported(metrics_of(s), i, counters_per_epoch, start)
            history[s].append(metrics)
            done[s] = i + 1
            if progress_fn is not None:
                progress_fn(s, i, metrics)
            if checkpoint_fn is not None:
                checkpoint_fn(s, seed_state(states, s), metrics)
    return states, history


def _reported(metrics: dict, i: int, counters_per_epoch: dict[str, int], start: float) -> Metrics:
    """Epoch i's metrics as floats, with the cumulative counters and the wall-clock."""
    reported = {name: float(value) for name, value in metrics.items()}
    reported.update({name: float((i + 1) * n) for name, n in counters_per_epoch.items()})
    reported["train/wall_clock_s"] = time.perf_counter() - start
    return reported


__all__ = [
    "EpochHistory",
    "Metrics",
    "SeedHistory",
    "run_epochs",
    "run_seed_epochs",
    "seed_batch_epoch",
    "seed_slice",
    "stack_seeds",
]
