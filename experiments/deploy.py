"""A trained policy, deployed: load it from its run directory and play it on a real system.

    python -m experiments.deploy RUN_DIR [key=value ...] [--episodes 32] [--seed 0] [--out FILE]

    python -m experiments.deploy outputs/runs/<run>                      # the run's own real
    python -m experiments.deploy outputs/runs/<run> real.engine=mujoco   # the MuJoCo C engine
    python -m experiments.deploy outputs/runs/<run> env.real_profile=lab # the lab twin
    python -m experiments.deploy outputs/runs/<run> real.engine=gym \\
        real.gym_id=MyRig-v0 real.gym_adapter=my_package.rig:adapter   # a user's gymnasium env

The overrides choose the real system (`env.*`, `real.*` keys, as for `experiments.train`);
the policy is the run's. The episodes are recorded as a transition dataset (by default
`RUN_DIR/artifacts/deploy_<profile>_<engine>.npz`), and the mean return and the share of
episodes that solved the task are printed.

In Python, `load_policy(run_dir).policy` is the observation -> action function, with the
observation normalization it was trained with; no training script is needed. A policy trained
with `env.action_history=m` observes the sensors, then its last m commands, the newest first
(`pods.action_history`); `deploy` appends them on any engine, and records the sensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dynamics_models import TransitionDataset
from experiments.run_dir import RunDirectory
from experiments.schema import ConfigError
from experiments.train import build_envs
from experiments.trainers import algo_config
from pods.rollout import Policy
from pods.runtime import configure_jax
from pods.train import init_training_state, policy_learner
from sim2real.evaluation import seed_streams, solved_criterion

POLICY_ALGOS = ("pods", "oracle", "hds", "pods_sysid")
"""Algorithms whose runs checkpoint a PODS policy network."""
REQUIRED_KEYS = ("algo.name", "env.system", "env.task", "env.real_profile", "real.engine")
"""What a run directory of this version's config holds."""


class LoadedPolicy(NamedTuple):
    policy: Policy
    """The deterministic policy: observation -> action (jitted)."""
    make_policy: Callable[[Any], Policy]
    params: Any
    config: DictConfig
    """The run's resolved config."""
    epoch: int
    """The epochs trained before the checkpoint the params come from."""


def run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run directory was written with; one-line errors for a folder
    that is not a run directory or a run of another version."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir}: not a run directory (no .hydra/config.yaml)")
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: not a run config")
    missing = [key for key in REQUIRED_KEYS if OmegaConf.select(cfg, key) is None]
    if missing:
        raise ConfigError(
            f"{run_dir}: a run directory of another version of this code (its config has no "
            f"{', '.join(missing)})"
        )
    return cfg


def load_policy(run_dir: str | Path) -> LoadedPolicy:
    """The policy of a PODS-family run (PODS, oracle, HDS, PODS+sysid), from its checkpoint."""
    cfg = run_config(run_dir)
    if cfg.algo.name not in POLICY_ALGOS:
        raise ConfigError(
            f"{run_dir}: algo {cfg.algo.name!r} runs cannot be loaded; those of {POLICY_ALGOS} can"
        )
    config = algo_config(cfg)
    dtype = jnp.float64 if config.float64 else jnp.float32
    configure_jax(float64=config.float64)
    sim, _ = build_envs(cfg, dtype)
    horizon = config.horizon or sim.episode_length
    learner = policy_learner(config, [sim], horizon)
    make_policy = learner.make_policy
    template = init_training_state(config, sim, learner.network, jax.random.PRNGKey(0))
    run = RunDirectory(run_dir, create=False)
    try:
        checkpoint = run.read_checkpoint()
        if checkpoint is None:
            raise ConfigError(
                f"{run_dir}: no checkpoint to load a policy from ({run.checkpoint_path})"
            )
        state = run.restore(checkpoint, template)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    info = checkpoint.info
    params = state.params
    apply = jax.jit(lambda observation: make_policy(params)(observation))
    return LoadedPolicy(apply, make_policy, params, cfg, int(info["epoch"]))


def deploy_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's config with `overrides` of the real system (only `env.*` and `real.*`)."""
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key.startswith(("env.", "real.")):
            raise ConfigError(
                f"{override!r}: give key=value overrides of env.* or real.* (the real system)"
            )
    merged = OmegaConf.merge(cfg, {})
    OmegaConf.set_struct(merged, True)
    for override in overrides:
        try:
            merged.merge_with_dotlist([override])
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {override!r}: {str(err).splitlines()[0]}") from None
    trained, asked = (OmegaConf.select(c, "env.action_history", default=0) for c in (cfg, merged))
    if asked != trained:
        # The policy's input layer has the size of what it observed in training.
        raise ConfigError(
            f"env.action_history={asked!r}: the policy was trained observing {trained} past "
            "commands"
        )
    return merged


@dataclasses.dataclass
class Deployment:
    episodes: TransitionDataset
    returns: np.ndarray
    solved: np.ndarray
    real: str


def deploy(loaded: LoadedPolicy, cfg: DictConfig, episodes: int, seed: int) -> Deployment:
    """Plays the policy for `episodes` episodes on the real system `cfg` describes."""
    float64 = bool(cfg.algo.get("float64", False))
    sim, spec = build_envs(cfg, jnp.float64 if float64 else jnp.float32)
    system = spec.system(episodes * spec.episode_length)
    _, key = seed_streams(seed)
    data = system.collect(key, episodes, make_policy=loaded.make_policy, params=loaded.params)
    valid = data.valid if data.valid is not None else np.ones(data.rewards.shape, bool)
    dataset = TransitionDataset(
        data.observations, data.actions, env_name=system.name, dt=system.dt, valid=valid
    )
    solved = np.asarray(solved_criterion(sim)(data.observations, valid, xp=np))
    return Deployment(dataset, data.rewards.sum(axis=1), solved, system.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="env.* / real.* key=value")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="of the episodes' initial states (default: the run's seed, whose held-out "
        "evaluation states a Brax twin then replays)",
    )
    parser.add_argument("--out", type=Path, default=None, help="the dataset file (.npz)")
    args = parser.parse_args(argv)
    try:
        if args.episodes <= 0:
            raise ConfigError(f"--episodes must be positive, got {args.episodes}")
        if args.out is not None and args.out.suffix != ".npz":
            raise ConfigError(f"--out: dataset files end in .npz, got {str(args.out)!r}")
        loaded = load_policy(args.run_dir)
        cfg = deploy_config(loaded.config, args.overrides)
        build_envs(cfg, jnp.float32)  # every config error before any episode
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seed = loaded.config.seed if args.seed is None else args.seed
    result = deploy(loaded, cfg, args.episodes, seed)
    out = args.out or (
        args.run_dir / "artifacts" / f"deploy_{cfg.env.real_profile}_{cfg.real.engine}.npz"
    )
    result.episodes.save(out)
    print(
        f"{loaded.config.algo.name} policy (epoch {loaded.epoch}) on {result.real} "
        f"[{cfg.env.real_profile}, {cfg.real.engine}]: return "
        f"{result.returns.mean():.2f} +- {result.returns.std():.2f} over {args.episodes} "
        f"episodes, solved {result.solved.mean():.0%}, {result.episodes.n_transitions} "
        f"transitions recorded to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
