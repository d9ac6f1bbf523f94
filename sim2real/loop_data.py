"""The sim2real loop's state beside HDS's training state (`sim2real.loop`): the real data
recorded so far, the simulator identified from round 0's episodes where the loop identifies
one, and the model fitted on the data, with what a resumed run reads back of them.

Split from `sim2real.loop`, which runs the epochs, as `sim2real.loop_config` holds how the
loop spends its budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from dynamics_models import LearnedEnv, ModelConfig, TransitionDataset, make_model
from dynamics_models import train as fit_model
from pods.drivers import Metrics
from pods.networks import PolicyParams
from pods.rollout import Policy
from sim2real.loop_config import LoopConfig
from sim2real.real_system import RealSystem, RealTrajectories

EPOCH_STREAM, DATA_STREAM, FIT_STREAM = 0, 1, 2
"""Named streams of the loop's key: the epochs', the collections' and the fits'."""


class LoopCheckpoint(NamedTuple):
    """What the loop needs, beyond the training state, to resume exactly."""

    dataset: TransitionDataset
    """Every real episode recorded so far."""
    model: Any = None
    """The last model saved, if any."""
    model_info: dict | None = None
    """What `model_fn` was given with `model`: its round and validation loss. Unless the
    round is `dataset`'s last (the run was killed between a collection and the model's
    save), the model is refitted, deterministically, as the uninterrupted run fitted it."""


def _as_dataset(trajectories: RealTrajectories, real: RealSystem) -> TransitionDataset:
    return TransitionDataset(
        trajectories.observations,
        trajectories.actions,
        env_name=real.name,
        dt=real.dt,
        valid=trajectories.valid,
    )


def _rounds_in(loop: LoopConfig, data: TransitionDataset) -> int:
    """Collections after the initial data that `data` holds; raises if no round produces it."""
    extra = data.n_trajectories - loop.initial_trajectories
    if extra < 0 or extra % loop.collect_trajectories:
        raise ValueError(
            f"the real data holds {data.n_trajectories} episodes, which no round of "
            f"this LoopConfig produces ({loop.initial_trajectories} + "
            f"r * {loop.collect_trajectories})"
        )
    return extra // loop.collect_trajectories


class RealDataAndModel:
    """The loop's state beside HDS's training state: the real data recorded so far, the model
    fitted on it (with its validation loss and the env that steps it), and the policy factory
    that collects with. Each step persists what it made (`data_fn`, `model_fn`) before the
    epochs that depend on it run."""

    def __init__(
        self,
        loop: LoopConfig,
        model_config: ModelConfig,
        sim_env: Any,
        real: RealSystem,
        key: jax.Array,
        *,
        make_policy: Callable[[PolicyParams], Policy],
        dataset: TransitionDataset | None,
        data_fn: Callable[[TransitionDataset], None] | None,
        model_fn: Callable[[Any, dict], None] | None,
        identify_fn: Callable[[TransitionDataset], Any] | None = None,
    ):
        self.loop, self.model_config, self.sim_env, self.real = loop, model_config, sim_env, real
        self.identify_fn = identify_fn
        self.key_data = jax.random.fold_in(key, DATA_STREAM)
        self.key_fit = jax.random.fold_in(key, FIT_STREAM)
        self.make_policy, self.dataset = make_policy, dataset
        self.data_fn, self.model_fn = data_fn, model_fn
        self.model, self.validation_loss, self.model_env = None, math.nan, None

    def rounds_done(self) -> int:
        return _rounds_in(self.loop, self.dataset)

    def collect(self, round_: int, params: PolicyParams | None) -> TransitionDataset:
        """Round `round_`'s real episodes: random commands or `params`' policy plus noise."""
        loop, real = self.loop, self.real
        key = jax.random.fold_in(self.key_data, round_)
        if round_ == 0 and loop.initial_data == "random":
            episodes = real.play_random(
                key, loop.initial_trajectories, correlation=loop.random_correlation
            )
            return _as_dataset(episodes, real)
        n = loop.initial_trajectories if round_ == 0 else loop.collect_trajectories
        episodes = real.collect(
            key, n, make_policy=self.make_policy, params=params, action_noise=loop.collect_noise
        )
        return _as_dataset(episodes, real)

    def record(self, dataset: TransitionDataset) -> None:
        self.dataset = dataset
        if self.data_fn is not None:
            self.data_fn(dataset)

    def use_model(self, model: Any, validation_loss: float) -> None:
        self.model, self.validation_loss = model, validation_loss
        sample_member = self.model_config.prediction == "member"
        self.model_env = LearnedEnv(model, self.sim_env, sample_member=sample_member)

    def fit(self) -> None:
        """A fresh model fitted on all the data, round r's from fold_in(fit key, r) and split
        with seed r."""
        round_, data = self.rounds_done(), self.dataset
        train_data, validation_data = data.split(self.loop.validation_fraction, seed=round_)
        key_model, key_train = jax.random.split(jax.random.fold_in(self.key_fit, round_))
        fresh = make_model(self.model_config, key_model, train_data, self.sim_env)
        fitted, history = fit_model(
            fresh, train_data, validation_data, self.model_config.training_config(), key_train
        )
        validation_loss = history["train/best_validation_loss"]
        if self.model_fn is not None:
            self.model_fn(fitted, {"round": round_, "validation_loss": validation_loss})
        self.use_model(fitted, validation_loss)

    def start(self, resume: LoopCheckpoint | None, initial_params: PolicyParams | None) -> None:
        """Round 0's data, the simulator identified from it (`identify_fn`, if given) and
        the model, or those of the run being resumed."""
        if self.dataset is None:
            self.record(self.collect(0, initial_params))
        else:
            # A fresh system object for the same budget: it starts with what was spent.
            recorded, real = self.dataset.n_transitions, self.real
            if real.transitions not in (0, recorded):
                raise ValueError(
                    f"resuming with {recorded} real transitions recorded, but "
                    f"the RealSystem has counted {real.transitions}"
                )
            real.transitions = recorded
        if self.identify_fn is not None:
            # From round 0's episodes alone, so a resumed run identifies what it first did.
            initial = self.dataset.select(slice(0, self.loop.initial_trajectories))
            self.sim_env = self.identify_fn(initial)
        done = self.rounds_done()
        info = (resume.model_info or {}) if resume is not None else {}
        if resume is not None and resume.model is not None and info.get("round") == done:
            self.use_model(resume.model, info["validation_loss"])
        else:
            self.fit()

    def catch_up(self, epoch: int, params: PolicyParams) -> None:
        """The collections due before `epoch` (with `params`' policy), then one refit."""
        due = self.loop.rounds_before(epoch, self.real.episode_length)
        if self.rounds_done() < due:
            while self.rounds_done() < due:
                new = self.collect(self.rounds_done() + 1, params)
                self.record(self.dataset.concatenate(new))
            self.fit()

    def metrics(self) -> Metrics:
        return {
            "real/transitions": float(self.real.transitions),
            "real/rounds": float(self.rounds_done()) if self.dataset is not None else 0.0,
            "model/validation_loss": self.validation_loss,
        }


__all__ = ["EPOCH_STREAM", "LoopCheckpoint", "RealDataAndModel"]
