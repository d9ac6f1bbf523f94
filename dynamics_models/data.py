"""Transitions from a (real) system: splits, normalization, and files on disk (collecting them
is `dynamics_models.collection`).

A `TransitionDataset` keeps whole trajectories, not loose transitions: the validation split
holds out whole trajectories (neighbouring transitions of one trajectory are nearly equal, so
a split by transition would leak the training set into the validation loss), and multi-step
losses and k-step errors need consecutive steps.

Observations may hold angles as (cos, sin) pairs, as the testbeds' do. `ObsLayout` says which
columns those are, so a model can work in the state coordinates (positions with plain angles,
then velocities) and wrap angle differences instead of regressing cos/sin deltas.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from pods.action_history import sensor_size

DATASET_FORMAT = "dynamics_models.TransitionDataset"
DATASET_VERSION = 2
"""Version 2 adds the `valid` mask of episodes that ended early; version 1 files still load."""


# --------------------------------------------------------------------------------------------
# Observation layout


@dataclasses.dataclass(frozen=True)
class ObsLayout:
    """Where an observation keeps angles as (cos, sin) pairs.

    The state vector drops each pair's sin column and holds the angle atan2(sin, cos) in the
    cos column's place; every other column is copied. For the testbeds this is exactly
    `concatenate(env.state_from_obs(obs))`: [x, angles..., velocities...].
    """

    obs_dim: int
    angle_pairs: tuple[tuple[int, int], ...] = ()
    """(cos column, sin column) of every angle in the observation."""

    def __post_init__(self):
        if not (isinstance(self.obs_dim, int) and self.obs_dim > 0):
            raise ValueError(f"ObsLayout.obs_dim must be a positive integer, got {self.obs_dim!r}")
        pairs = tuple(tuple(int(i) for i in pair) for pair in self.angle_pairs)
        object.__setattr__(self, "angle_pairs", pairs)
        used = [i for pair in pairs for i in pair]
        if (
            any(len(p) != 2 for p in pairs)
            or len(set(used)) != len(used)
            or any(not 0 <= i < self.obs_dim for i in used)
        ):
            raise ValueError(
                f"ObsLayout.angle_pairs must be disjoint (cos, sin) column pairs within "
                f"obs_dim={self.obs_dim}, got {self.angle_pairs!r}"
            )

    @classmethod
    def of_env(cls, env: Any) -> ObsLayout:
        """The testbeds' layout ([x, (cos, sin) per pole, velocities]) or a plain one, of the
        env's sensors: a model predicts those, never the action history after them."""
        n_poles = getattr(env, "n_poles", None)
        obs_dim = sensor_size(env)
        if n_poles is None:
            return cls(obs_dim)
        return cls(obs_dim, tuple((1 + 2 * i, 2 + 2 * i) for i in range(n_poles)))

    @property
    def state_dim(self) -> int:
        return self.obs_dim - len(self.angle_pairs)

    @property
    def _state_columns(self) -> list[int]:
        sin_columns = {s for _, s in self.angle_pairs}
        return [i for i in range(self.obs_dim) if i not in sin_columns]

    @property
    def angle_mask(self) -> np.ndarray:
        """Boolean mask over the state vector: True where the entry is an angle."""
        cos_columns = {c for c, _ in self.angle_pairs}
        return np.array([i in cos_columns for i in self._state_columns])

    def to_state(self, obs: Float[Array, "... obs"]) -> Float[Array, "... state"]:
        if not self.angle_pairs:
            return obs
        obs = jnp.asarray(obs)
        angles = {c: jnp.arctan2(obs[..., s], obs[..., c]) for c, s in self.angle_pairs}
        return jnp.stack([angles.get(i, obs[..., i]) for i in self._state_columns], axis=-1)

    def to_obs(self, state: Float[Array, "... state"]) -> Float[Array, "... obs"]:
        if not self.angle_pairs:
            return state
        state = jnp.asarray(state)
        columns: list[Any] = [None] * self.obs_dim
        for j, i in enumerate(self._state_columns):
            columns[i] = state[..., j]
        for c, s in self.angle_pairs:
            angle = columns[c]
            columns[c], columns[s] = jnp.cos(angle), jnp.sin(angle)
        return jnp.stack(columns, axis=-1)

    def difference(
        self, a: Float[Array, "... state"], b: Float[Array, "... state"]
    ) -> Float[Array, "... state"]:
        """a - b, with angle differences wrapped to [-pi, pi)."""
        d = a - b
        if not self.angle_pairs:
            return d
        wrapped = jnp.mod(d + jnp.pi, 2 * jnp.pi) - jnp.pi
        return jnp.where(jnp.asarray(self.angle_mask), wrapped, d)

    def to_json(self) -> dict:
        return {"obs_dim": self.obs_dim, "angle_pairs": [list(p) for p in self.angle_pairs]}

    @classmethod
    def from_json(cls, data: dict) -> ObsLayout:
        return cls(int(data["obs_dim"]), tuple(tuple(p) for p in data["angle_pairs"]))


# --------------------------------------------------------------------------------------------
# Normalization


@dataclasses.dataclass(frozen=True)
class NormalizationStats:
    """Means and standard deviations (floored, so constant columns do not divide by zero)."""

    obs_mean: np.ndarray
    obs_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    delta_mean: np.ndarray
    """Of the state-coordinate step s' - s (angles wrapped)."""
    delta_std: np.ndarray


def mean_and_std(x: np.ndarray, floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return x.mean(0), np.maximum(x.std(0), floor)


# --------------------------------------------------------------------------------------------
# The dataset


@dataclasses.dataclass(frozen=True)
class TransitionDataset:
    """Trajectories of a system: observations[i, t] --actions[i, t]--> observations[i, t+1]."""

    observations: np.ndarray
    """[n_trajectories, horizon + 1, obs_dim]."""
    actions: np.ndarray
    """[n_trajectories, horizon, act_dim], as played (before the actuator saturates)."""
    env_name: str = ""
    """The system the data came from, e.g. `cartpole_swingup_real`."""
    physics: dict | None = None
    """The system's physical parameters, where known (`dataclasses.asdict(env.physics)`)."""
    dt: float | None = None
    """Control period in seconds."""
    valid: np.ndarray | None = None
    """[n_trajectories, horizon] bool: transition t was recorded. A real episode may end early
    (a gymnasium env that terminates, a safety stop): its steps from then on are False, and
    nothing learns from them. None: every transition is valid."""

    def __post_init__(self):
        obs, act = np.asarray(self.observations), np.asarray(self.actions)
        if obs.ndim != 3 or act.ndim != 3:
            raise ValueError(
                "TransitionDataset wants observations [n, horizon+1, obs_dim] and actions "
                f"[n, horizon, act_dim], got shapes {obs.shape} and {act.shape}"
            )
        if obs.shape[0] != act.shape[0] or obs.shape[1] != act.shape[1] + 1:
            raise ValueError(
                f"observations {obs.shape} do not match actions {act.shape}: "
                "expected [n, horizon+1, .] and [n, horizon, .]"
            )
        bad_obs, bad_act = int(np.sum(~np.isfinite(obs))), int(np.sum(~np.isfinite(act)))
        if bad_obs or bad_act:
            raise ValueError(
                f"TransitionDataset holds {bad_obs} non-finite observation and {bad_act} "
                "non-finite action entries"
            )
        object.__setattr__(self, "observations", obs)
        object.__setattr__(self, "actions", act)
        if self.valid is not None:
            valid = np.asarray(self.valid)
            if valid.shape != act.shape[:2] or valid.dtype != np.bool_:
                raise ValueError(
                    f"TransitionDataset.valid must be a bool mask of shape {act.shape[:2]}, "
                    f"got {valid.dtype} {valid.shape}"
                )
            if np.any(valid[:, 1:] & ~valid[:, :-1]):
                raise ValueError("TransitionDataset.valid must end each episode once: no gaps")
            object.__setattr__(self, "valid", None if valid.all() else valid)

    @property
    def n_trajectories(self) -> int:
        return self.observations.shape[0]

    @property
    def horizon(self) -> int:
        return self.actions.shape[1]

    @property
    def mask(self) -> np.ndarray:
        """[n_trajectories, horizon] bool: which transitions were recorded (see `valid`)."""
        if self.valid is None:
            return np.ones(self.actions.shape[:2], bool)
        return self.valid

    @property
    def n_transitions(self) -> int:
        """Transitions recorded (those of episodes that ended early count up to their end)."""
        return int(self.mask.sum())

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[-1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[-1]

    def transitions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, a, s') of every recorded transition, flattened over trajectories and time."""
        keep = self.mask.ravel()
        s = self.observations[:, :-1].reshape(-1, self.obs_dim)[keep]
        s_next = self.observations[:, 1:].reshape(-1, self.obs_dim)[keep]
        return s, self.actions.reshape(-1, self.action_dim)[keep], s_next

    def windows(self, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every run of `length` consecutive recorded steps: (s_t [M, obs], a [M, length, act],
        s_{t+1..t+length} [M, length, obs])."""
        if not (isinstance(length, int) and 1 <= length <= self.horizon):
            raise ValueError(
                f"window length must be an integer in [1, {self.horizon}], got {length!r}"
            )
        starts = np.arange(self.horizon - length + 1)
        steps = starts[:, None] + np.arange(length)[None]
        # A window is kept if its last step was recorded (an episode ends once: no gaps).
        keep = self.mask[:, steps[:, -1]].ravel()
        s0 = self.observations[:, starts].reshape(-1, self.obs_dim)[keep]
        actions = self.actions[:, steps].reshape(-1, length, self.action_dim)[keep]
        targets = self.observations[:, steps + 1].reshape(-1, length, self.obs_dim)[keep]
        return s0, actions, targets

    def select(self, trajectories: np.ndarray | list[int] | slice) -> TransitionDataset:
        """The dataset restricted to some trajectories."""
        idx = np.arange(self.n_trajectories)[trajectories]
        return dataclasses.replace(
            self,
            observations=self.observations[idx],
            actions=self.actions[idx],
            valid=None if self.valid is None else self.valid[idx],
        )

    def first(self, n_transitions: int) -> TransitionDataset:
        """The first n_transitions / horizon trajectories (a multiple of the horizon)."""
        whole = self.n_trajectories * self.horizon
        if not (
            isinstance(n_transitions, int)
            and 0 < n_transitions <= whole
            and n_transitions % self.horizon == 0
        ):
            raise ValueError(
                f"n_transitions must be a multiple of the horizon {self.horizon} in "
                f"(0, {whole}], got {n_transitions!r}"
            )
        return self.select(slice(0, n_transitions // self.horizon))

    def split(
        self, validation_fraction: float = 0.2, *, seed: int = 0
    ) -> tuple[TransitionDataset, TransitionDataset]:
        """(train, validation), split by trajectory; both get at least one trajectory."""
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction!r}")
        if self.n_trajectories < 2:
            raise ValueError(
                f"splitting by trajectory needs at least 2 trajectories, got {self.n_trajectories}"
            )
        order = np.random.default_rng(seed).permutation(self.n_trajectories)
        n_val = min(
            max(1, round(validation_fraction * self.n_trajectories)), self.n_trajectories - 1
        )
        return self.select(np.sort(order[n_val:])), self.select(np.sort(order[:n_val]))

    def normalization(self, layout: ObsLayout) -> NormalizationStats:
        """Statistics of inputs and of the state-coordinate step, for models to normalize by."""
        if layout.obs_dim != self.obs_dim:
            raise ValueError(f"layout obs_dim {layout.obs_dim} != dataset obs_dim {self.obs_dim}")
        s, a, s_next = self.transitions()
        delta = np.asarray(layout.difference(layout.to_state(s_next), layout.to_state(s)))
        obs_mean, obs_std = mean_and_std(s)
        act_mean, act_std = mean_and_std(a)
        delta_mean, delta_std = mean_and_std(delta)
        return NormalizationStats(obs_mean, obs_std, act_mean, act_std, delta_mean, delta_std)

    def concatenate(self, other: TransitionDataset) -> TransitionDataset:
        """Both datasets' trajectories (same system, dims and horizon)."""
        if (other.obs_dim, other.action_dim, other.horizon) != (
            self.obs_dim,
            self.action_dim,
            self.horizon,
        ):
            raise ValueError(
                f"cannot concatenate datasets with (obs_dim, action_dim, horizon) "
                f"{(self.obs_dim, self.action_dim, self.horizon)} and "
                f"{(other.obs_dim, other.action_dim, other.horizon)}"
            )
        valid = None
        if self.valid is not None or other.valid is not None:
            valid = np.concatenate([self.mask, other.mask])
        return dataclasses.replace(
            self,
            observations=np.concatenate([self.observations, other.observations]),
            actions=np.concatenate([self.actions, other.actions]),
            valid=valid,
        )

    # ---------------------------------------------------------------------------- files

    def header(self) -> dict:
        return {
            "format": DATASET_FORMAT,
            "version": DATASET_VERSION,
            "env_name": self.env_name,
            "physics": self.physics,
            "dt": self.dt,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "n_trajectories": self.n_trajectories,
            "horizon": self.horizon,
            "n_transitions": self.n_transitions,
            "ended_early": 0 if self.valid is None else int((~self.valid[:, -1]).sum()),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Writes a `.npz` with the arrays and a JSON header; atomic (temp file + rename)."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"dataset files end in .npz, got {str(path)!r}")
        header = np.frombuffer(json.dumps(self.header()).encode(), dtype=np.uint8)

        def write(f):
            arrays = {"observations": self.observations, "actions": self.actions}
            if self.valid is not None:
                arrays["valid"] = self.valid
            np.savez(f, header=header, **arrays)

        atomic_write(path, write)
        return path


def load_dataset(
    path: str | os.PathLike,
    *,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    env_name: str | None = None,
) -> TransitionDataset:
    """Reads a file written by `TransitionDataset.save`, checking version and (if given) dims.

    Raises one ValueError naming the file and the mismatch for a wrong version, wrong dims,
    a header that disagrees with the arrays, or a file that is not a dataset at all.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(bytes(f["header"]).decode())
            observations, actions = f["observations"], f["actions"]
            valid = f["valid"] if "valid" in f.files else None
    except FileNotFoundError:
        raise ValueError(f"dataset file {str(path)!r} does not exist") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not a readable transition dataset ({e})") from None
    if header.get("format") != DATASET_FORMAT or header.get("version") not in (1, DATASET_VERSION):
        raise ValueError(
            f"{str(path)!r} has format {header.get('format')!r} version {header.get('version')!r}; "
            f"this code reads {DATASET_FORMAT!r} versions 1 to {DATASET_VERSION}"
        )
    shape = (header["n_trajectories"], header["horizon"])
    if observations.shape != (*shape[:1], shape[1] + 1, header["obs_dim"]) or actions.shape != (
        *shape,
        header["action_dim"],
    ):
        raise ValueError(
            f"{str(path)!r} is corrupt: header says {shape} trajectories x steps with obs_dim "
            f"{header['obs_dim']}, action_dim {header['action_dim']}, arrays are "
            f"{observations.shape} and {actions.shape}"
        )
    for name, want in (("obs_dim", obs_dim), ("action_dim", action_dim), ("env_name", env_name)):
        if want is not None and header[name] != want:
            raise ValueError(f"{str(path)!r} has {name}={header[name]!r}, expected {want!r}")
    try:
        return TransitionDataset(
            observations, actions, header["env_name"], header["physics"], header["dt"], valid
        )
    except ValueError as err:
        raise ValueError(f"{str(path)!r} is corrupt: {err}") from None


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Writes through `write(file)` to a temp file beside `path`, then renames it into place,
    so a reader never sees half a file and a crash never destroys the previous version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
