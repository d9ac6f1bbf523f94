"""What a run directory holds to continue from, read and checked before anything runs.

A run started on a directory that already holds a checkpoint continues it. Everything the
continuation will read (the checkpoint; HDS's real data and model; the physics pods_sysid
and hds_sysid identified) is read here first, and every reason to refuse is found here: a file that does not
parse, a checkpoint of another config, more epochs done than asked for. A refusal is one
`ConfigError` line naming the file or the keys, raised before the run writes anything, so
the directory stays as it was.

Only `algo.num_epochs` may differ from the checkpointed config: a finished run started again
with more epochs trains the missing ones (epoch e's randomness depends on e alone, so the
result is that of a run asked for the larger number from the start).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dynamics_models import TransitionDataset, load_dataset, load_model
from dynamics_models.checkpoint import read_sidecar
from experiments.run_dir import Checkpoint, RunDirectory
from experiments.schema import ConfigError
from sim2real.testbeds import make_testbed

EXTENSIBLE = ("algo.num_epochs",)
"""Keys a continued run may change: it trains up to the new value."""

ADDED = {
    "algo.start_states": "reset",
    "env.n_frames": None,
    "algo.feedback": False,
    "algo.horizon_start": None,
    "algo.horizon_growth_epochs": 30,
    "env.action_history": 0,
    "algo.policy_selection": "last",
    "env.friction_gradient": None,
    "sysid.family": "physics",
    "sysid.max_delay_steps": 8,
    "sysid.lab_parameters": ["motor_time_constant", "pole_mass_scale", "pole_length_scale"],
    "sysid.cart_mass_scale": 1.0,
    "sysid.lab_timestep": 0.005,
    "sysid.lab_integrator": "rk4",
}
"""Keys added to the config after runs were made, each with the value that computes what
those runs computed: a stored config without the key continues under that value."""


def resolved_config(cfg: DictConfig) -> dict:
    """The config as plain data, without `run` (where and how a run reports, not what it
    computes)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("run", None)
    return resolved


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(stored: dict, current: dict, ignore=EXTENSIBLE) -> list[str]:
    """`key: stored -> current` for every dotted key whose value differs (or exists in one
    only), `ignore`d keys left out; a key of ADDED that `stored` predates reads as ADDED's
    value there."""
    before, after = _flatten(stored), _flatten(current)
    missing = object()
    for key, value in ADDED.items():
        if key in after:
            before.setdefault(key, value)
    return [
        f"{key}: {before.get(key, '(none)')} -> {after.get(key, '(none)')}"
        for key in sorted(set(before) | set(after))
        if key not in ignore and before.get(key, missing) != after.get(key, missing)
    ]


@dataclasses.dataclass
class Resume:
    """The files a continued run reads, already parsed."""

    checkpoint: Checkpoint | None = None
    """The training state to continue from (None: the run starts at epoch 0)."""
    dataset: TransitionDataset | None = None
    """HDS: every real episode recorded so far."""
    model: Any = None
    """HDS: the last model fitted."""
    model_info: dict | None = None
    """HDS: the metadata saved with `model` (its round, its validation loss)."""
    sysid: dict | None = None
    """pods_sysid and hds_sysid: the identified physics and what identifying it cost."""


def _refuse(path: Path, error: Exception) -> ConfigError:
    message = str(error).splitlines()[0]
    if str(path) not in message:
        message = f"cannot resume from {path}: {message}"
    return ConfigError(f"{message}; the run directory is left as it is: start in a new one")


def read_resume(cfg: DictConfig, path: Path, fingerprint: str) -> Resume:
    """Reads and checks what the run directory `path` holds for `cfg`; raises ConfigError
    (one line) where it cannot be continued."""
    run_dir = RunDirectory(path, create=False)
    try:
        checkpoint = run_dir.read_checkpoint()
    except ValueError as err:
        raise _refuse(run_dir.checkpoint_path, err) from None
    resume = Resume(checkpoint)
    if checkpoint is not None:
        _check_same_run(cfg, path, fingerprint, checkpoint.info)
        if cfg.algo.name in ("hds", "hds_sysid"):
            # hds_sysid's model is fitted again: its sidecar describes the simulator by name
            # and physics, which cannot rebuild the lab family's identified effects.
            _read_hds_artifacts(run_dir.artifacts, resume, model=cfg.algo.name == "hds")
    if cfg.algo.name in ("pods_sysid", "hds_sysid"):
        # Identified before the first epoch: a run killed before its first checkpoint
        # reuses it too.
        sysid_path = run_dir.artifacts / "sysid.json"
        if sysid_path.exists():
            try:
                resume.sysid = json.loads(sysid_path.read_text())
                float(resume.sysid["real_transitions"])
                dict(resume.sysid["physics"])
                dict(resume.sysid.get("lab") or {})
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise _refuse(sysid_path, err) from None
    return resume


def _check_same_run(cfg: DictConfig, path: Path, fingerprint: str, info: dict) -> None:
    stored = info.get("resolved_config")
    if stored is None:
        # Checkpoints written before the config was stored in them carry only its hash.
        if info.get("config") != fingerprint:
            raise ConfigError(
                f"{path} holds a run of another config (fingerprint {info.get('config')}, "
                f"this one {fingerprint}); start it in a new directory"
            )
    else:
        differences = config_differences(stored, resolved_config(cfg))
        if differences:
            shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
            raise ConfigError(
                f"{path} holds a run of another config ({shown}); only "
                f"{', '.join(EXTENSIBLE)} may change to continue a run: start this one in "
                "a new directory"
            )
    num_epochs = cfg.algo.get("num_epochs")
    if num_epochs is not None and info["epoch"] > num_epochs:
        raise ConfigError(
            f"{path} has trained {info['epoch']} epochs, more than algo.num_epochs="
            f"{num_epochs}: give algo.num_epochs >= {info['epoch']} to continue it, or start "
            "in a new directory"
        )


def _read_hds_artifacts(artifacts: Path, resume: Resume, model: bool = True) -> None:
    data_path, model_path = artifacts / "real_transitions.npz", artifacts / "model"
    if not data_path.exists():
        return
    try:
        resume.dataset = load_dataset(data_path)
    except ValueError as err:
        raise _refuse(data_path, err) from None
    if model and model_path.with_suffix(".json").exists():
        try:
            resume.model = load_model(model_path, make_sim=make_testbed)
            resume.model_info = read_sidecar(model_path)["metadata"]
        except (ValueError, KeyError) as err:
            raise _refuse(model_path.with_suffix(".eqx"), err) from None


__all__ = ["ADDED", "EXTENSIBLE", "Resume", "config_differences", "read_resume", "resolved_config"]
