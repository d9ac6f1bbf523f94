"""Saving and loading trained dynamics models without their training script.

A model is two files: `NAME.eqx`, the array leaves (`eqx.tree_serialise_leaves`), and
`NAME.json`, a sidecar with everything needed to rebuild the module those leaves fill: the
class, hyperparameters, observation layout, dtype, normalization statistics, for a residual
model the simulator testbed it steps, and the SHA-256 of the weights file, so a sidecar
paired with the wrong or a damaged weights file is caught rather than loaded. Both writes
are atomic; the weights are written first, so the sidecar never names weights that are not
there.

A residual model's simulator is not pickled: the sidecar describes it (testbed name, physics,
backend, timestep, frames, dtype) and `load_model` rebuilds it with the `make_sim` it is
given (`sim2real.testbeds.make_testbed` for the testbeds); this package never imports them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dynamics_models.data import NormalizationStats, ObsLayout, atomic_write
from dynamics_models.models import EnsembleDynamics, MLPDynamics, ResidualDynamics

MODEL_FORMAT = "dynamics_models.model"
MODEL_VERSION = 1
_KINDS = {MLPDynamics: "mlp", ResidualDynamics: "residual"}


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".eqx", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".eqx"), path.with_name(path.name + ".json")


def _sim_description(sim_env: Any) -> dict:
    return {
        "testbed": sim_env.name,
        "physics": dataclasses.asdict(sim_env.physics),
        "backend": sim_env.backend,
        "timestep": float(sim_env.sys.opt.timestep),
        "n_frames": int(sim_env._n_frames),
        "dtype": jnp.dtype(sim_env.dtype).name,
    }


SimBuilder = Callable[..., Any]
"""Rebuilds a residual model's simulator: `make_sim(name, *, physics, backend, timestep,
n_frames, dtype) -> Env`, with `physics` the mapping of physical parameters the sidecar stored
(`sim2real.testbeds.make_testbed` is one)."""


def _make_sim(description: dict, make_sim: SimBuilder | None) -> Any:
    if make_sim is None:
        raise ValueError(
            f"it is a residual model over the simulator {description['testbed']!r}; "
            "pass make_sim= (e.g. sim2real.testbeds.make_testbed) to rebuild it"
        )
    return make_sim(
        description["testbed"],
        physics=dict(description["physics"]),
        backend=description["backend"],
        timestep=description["timestep"],
        n_frames=description["n_frames"],
        dtype=jnp.dtype(description["dtype"]),
    )


def model_description(model: Any) -> dict:
    """The sidecar's content (without the weights checksum)."""
    ensemble = isinstance(model, EnsembleDynamics)
    member = model.member(0) if ensemble else model
    if type(member) not in _KINDS:
        raise ValueError(f"cannot save a model of type {type(model).__name__}")
    stats = member.normalizer.stats()
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "kind": "ensemble" if ensemble else _KINDS[type(member)],
        "member_kind": _KINDS[type(member)],
        "n_members": model.n_members if ensemble else None,
        "hyperparameters": member.hyperparameters(),
        "layout": member.layout.to_json(),
        "action_dim": int(stats.action_mean.shape[-1]),
        "dtype": jnp.dtype(member.dtype).name,
        "normalization": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(stats).items()},
        "sim": _sim_description(member.sim_env) if isinstance(member, ResidualDynamics) else None,
    }


def save_model(path: str | os.PathLike, model: Any, *, metadata: dict | None = None) -> Path:
    """Writes `path.eqx` and `path.json`; returns the sidecar's path. `metadata` (JSON-able:
    training config, dataset header, metrics) is stored in the sidecar as is."""
    weights_path, sidecar_path = _paths(path)
    description = model_description(model)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    weights = buffer.getvalue()
    description["weights_file"] = weights_path.name
    description["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    description["metadata"] = metadata or {}
    sidecar = json.dumps(description, indent=1).encode()
    atomic_write(weights_path, lambda f: f.write(weights))
    atomic_write(sidecar_path, lambda f: f.write(sidecar))
    return sidecar_path


def read_sidecar(path: str | os.PathLike) -> dict:
    _, sidecar_path = _paths(path)
    try:
        description = json.loads(sidecar_path.read_text())
    except FileNotFoundError:
        raise ValueError(f"model sidecar {str(sidecar_path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(sidecar_path)!r} is not a readable model sidecar ({e})") from None
    if not isinstance(description, dict) or description.get("format") != MODEL_FORMAT:
        raise ValueError(f"{str(sidecar_path)!r} is not a {MODEL_FORMAT} sidecar")
    if description.get("version") != MODEL_VERSION:
        raise ValueError(
            f"{str(sidecar_path)!r} has model format version {description.get('version')!r}; "
            f"this code reads version {MODEL_VERSION}"
        )
    return description


def _skeleton(description: dict, make_sim: SimBuilder | None) -> Any:
    layout = ObsLayout.from_json(description["layout"])
    stats = NormalizationStats(
        **{k: np.asarray(v) for k, v in description["normalization"].items()}
    )
    dtype = jnp.dtype(description["dtype"])
    hp = description["hyperparameters"]
    kwargs = {
        "width": hp["width"],
        "depth": hp["depth"],
        "action_limit": hp["action_limit"],
        "dtype": dtype,
    }
    if description["member_kind"] == "mlp":

        def make(k):
            return MLPDynamics(k, stats, layout, **kwargs)
    else:
        sim_env = _make_sim(description["sim"], make_sim)
        if ObsLayout.of_env(sim_env) != layout:
            raise ValueError(
                f"the sidecar's layout {layout} does not match its simulator {sim_env.name}"
            )

        def make(k):
            return ResidualDynamics(k, stats, sim_env, **kwargs)

    key = jax.random.PRNGKey(0)
    if description["kind"] == "ensemble":
        return EnsembleDynamics(key, int(description["n_members"]), make)
    return make(key)


def load_model(
    path: str | os.PathLike,
    *,
    make_sim: SimBuilder | None = None,
    obs_dim: int | None = None,
    action_dim: int | None = None,
) -> Any:
    """Rebuilds a model saved by `save_model`; a residual model (or an ensemble of them) needs
    `make_sim` to rebuild the simulator it steps (see `SimBuilder`). Raises one ValueError for a
    missing, corrupt or mismatched pair of files, dims other than the expected `obs_dim` /
    `action_dim`, or a simulator `make_sim` is missing for or cannot make."""
    weights_path, sidecar_path = _paths(path)
    description = read_sidecar(path)
    got = {"obs_dim": description["layout"]["obs_dim"], "action_dim": description["action_dim"]}
    for name, want in (("obs_dim", obs_dim), ("action_dim", action_dim)):
        if want is not None and got[name] != want:
            raise ValueError(f"model {str(sidecar_path)!r} has {name}={got[name]}, expected {want}")
    try:
        weights = weights_path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"model weights {str(weights_path)!r} do not exist") from None
    if hashlib.sha256(weights).hexdigest() != description.get("weights_sha256"):
        raise ValueError(
            f"{str(weights_path)!r} does not match its sidecar {str(sidecar_path)!r} "
            "(checksum differs: wrong pairing or a damaged file)"
        )
    try:
        skeleton = _skeleton(description, make_sim)
        return eqx.tree_deserialise_leaves(io.BytesIO(weights), skeleton)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"cannot rebuild the model in {str(sidecar_path)!r}: {e}") from None
