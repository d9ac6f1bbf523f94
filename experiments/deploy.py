"""A trained policy, deployed: load it from its run directory and play it on a real system.

    python -m experiments.deploy RUN_DIR [key=value ...] [--episodes 32] [--seed 0] [--out FILE]

    python -m experiments.deploy outputs/runs/<run>                      # the run's own real
    python -m experiments.deploy outputs/runs/<run> real.engine=mujoco   # the MuJoCo C engine
    python -m experiments.deploy outputs/runs/<run> env.real_profile=lab # the lab twin
    python -m experiments.deploy outputs/runs/<run> real.engine=gym \\
        real.gym_id=my_package.rig:MyRig-v0                            # a user's gymnasium env

The overrides choose the real system (`env.*`, `real.*` keys, as for `experiments.train`);
the policy is the run's, of any algorithm that leaves one (`POLICY_ALGOS`: the PODS family,
Brax's APG, PPO and PPO+DR, LQR and the energy swing-up). The episodes are recorded as a
transition dataset (by default `RUN_DIR/artifacts/deploy_<profile>_<engine>.npz`, for a
gymnasium env `deploy_gym_<id>.npz`), and the mean return and the share of episodes that
solved the task are printed and written beside it (the same name, `.json`).

In Python, `load_policy(run_dir).policy` is the observation -> action function (the
deterministic one the run evaluated), with the observation normalization it was trained with;
no training script is needed. A policy trained
with `env.action_history=m` observes the sensors, then its last m commands, the newest first
(`pods.action_history`); `deploy` appends them on any engine, and records the sensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from baselines.brax_agents import policy_template
from baselines.energy_lqr import train as train_energy_lqr
from baselines.lqr import train as train_lqr
from dynamics_models import TransitionDataset
from experiments.run_dir import RunDirectory
from experiments.schema import ConfigError
from experiments.train import build_envs, build_sim
from experiments.trainers import algo_config
from pods.rollout import Policy
from pods.runtime import configure_jax, filter_known_xla_logs
from pods.state import init_training_state, policy_learner
from sim2real.evaluation import seed_streams, solved_criterion

PODS_ALGOS = ("pods", "oracle", "hds", "pods_sysid", "hds_sysid")
"""Algorithms whose runs checkpoint a PODS policy network (its training state)."""
BRAX_ALGOS = ("apg", "ppo", "ppo_dr")
"""Brax's agents: their runs checkpoint Brax's params (normalizer, policy[, value])."""
CLASSICAL_ALGOS = ("lqr", "energy_lqr")
"""Controllers designed on `sim`: their runs checkpoint the LQR gain."""
POLICY_ALGOS = (*PODS_ALGOS, *BRAX_ALGOS, *CLASSICAL_ALGOS)
"""Every algorithm whose run leaves a policy that `load_policy` loads."""
REQUIRED_KEYS = ("algo.name", "env.system", "env.task", "env.real_profile", "real.engine")
"""What a run directory of this version's config holds (on a testbed)."""
REQUIRED_KEYS_BRAX = ("algo.name", "env.system", "env.name")
"""What it holds on `env=brax`, a Brax registry env with no real variant."""


class LoadedPolicy(NamedTuple):
    policy: Policy
    """The deterministic policy: observation -> action (jitted)."""
    make_policy: Callable[[Any], Policy]
    params: Any
    config: DictConfig
    """The run's resolved config."""
    epoch: int
    """The epochs trained before the checkpoint the params come from (Brax's agents: their
    evaluations; a classical controller: 1, its design)."""

    @property
    def trained_for(self) -> str:
        """ " (epoch N)" where the policy was trained for epochs; "" for a designed one."""
        return "" if self.config.algo.name in CLASSICAL_ALGOS else f" (epoch {self.epoch})"


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
    required = (
        REQUIRED_KEYS_BRAX if OmegaConf.select(cfg, "env.system") == "brax" else REQUIRED_KEYS
    )
    missing = [key for key in required if OmegaConf.select(cfg, key) is None]
    if missing:
        raise ConfigError(
            f"{run_dir}: a run directory of another version of this code (its config has no "
            f"{', '.join(missing)})"
        )
    return cfg


def load_policy(run_dir: str | Path) -> LoadedPolicy:
    """The deterministic policy of a run of any algorithm in `POLICY_ALGOS`, from its run
    directory (config and checkpoint): what the run evaluated. One ConfigError line for a
    run of another kind, or a missing or corrupt checkpoint."""
    cfg = run_config(run_dir)
    name = cfg.algo.name
    if name not in POLICY_ALGOS:
        raise ConfigError(
            f"{run_dir}: algo {name!r} runs cannot be loaded; those of {POLICY_ALGOS} can"
        )
    config = algo_config(cfg)
    float64 = bool(getattr(config, "float64", False))
    configure_jax(float64=float64)
    sim = build_sim(cfg, jnp.float64 if float64 else jnp.float32)
    run = RunDirectory(run_dir, create=False)
    try:
        checkpoint = run.read_checkpoint()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if name in CLASSICAL_ALGOS:
        make_policy, params = _classical(cfg, config, sim)
        if checkpoint is not None:  # a run from before the gain was checkpointed has none
            params = _restore(run, checkpoint, {"gain": params})["gain"]
        epoch = 1 if checkpoint is None else int(checkpoint.info["epoch"])
    else:
        if checkpoint is None:
            raise ConfigError(
                f"{run_dir}: no checkpoint to load a policy from ({run.checkpoint_path})"
            )
        if name in BRAX_ALGOS:
            make_policy, template = policy_template(config, sim)
            params = _restore(run, checkpoint, template)
        else:
            horizon = config.horizon or sim.episode_length
            learner = policy_learner(config, [sim], horizon)
            make_policy = learner.make_policy
            template = init_training_state(config, sim, learner.network, jax.random.PRNGKey(0))
            params = _restore(run, checkpoint, template).policy_params
        epoch = int(checkpoint.info["epoch"])
    apply = jax.jit(lambda observation: make_policy(params)(observation))
    return LoadedPolicy(apply, make_policy, params, cfg, epoch)


def _restore(run: RunDirectory, checkpoint: Any, template: Any) -> Any:
    try:
        return run.restore(checkpoint, template)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _classical(cfg: DictConfig, config: Any, sim: Any) -> tuple[Callable[[Any], Policy], Any]:
    """The controller of a classical run, designed on `sim` again as the run designed it
    (deterministic: the same gain), as (make_policy, gain)."""
    train = train_lqr if cfg.algo.name == "lqr" else train_energy_lqr
    make_policy, gain, _ = train(config, sim, jax.random.PRNGKey(0))
    return make_policy, gain


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


def deploy(
    loaded: LoadedPolicy, cfg: DictConfig, episodes: int, seed: int, envs: tuple | None = None
) -> Deployment:
    """Plays the policy for `episodes` episodes on the real system `cfg` describes; `envs`:
    its (sim, real) as `deploy_envs` built them, which it builds where None."""
    sim, spec = deploy_envs(cfg) if envs is None else envs
    system = spec.system(episodes * spec.episode_length)
    _, key = seed_streams(seed)
    data = system.collect(key, episodes, make_policy=loaded.make_policy, params=loaded.params)
    valid = data.valid if data.valid is not None else np.ones(data.rewards.shape, bool)
    dataset = TransitionDataset(
        data.observations, data.actions, env_name=system.name, dt=system.dt, valid=valid
    )
    solved = np.asarray(solved_criterion(sim)(data.observations, valid, xp=np))
    return Deployment(dataset, data.rewards.sum(axis=1), solved, system.name)


def deploy_envs(cfg: DictConfig) -> tuple:
    """The sim and real system of `cfg`, in the dtype its policy was trained in (`load_policy`
    has turned float64 on where that is float64)."""
    float64 = bool(cfg.algo.get("float64", False))
    return build_envs(cfg, jnp.float64 if float64 else jnp.float32)


def real_label(cfg: DictConfig) -> tuple[str, str]:
    """What deploy names a real system by: (the label it prints, its dataset file's stem).
    A profile's twin or MuJoCo C engine: "profile, engine"; a gymnasium env has no profile,
    its name (printed beside the label) is its id."""
    if cfg.real.engine == "gym":
        return "gym", f"deploy_gym_{str(cfg.real.gym_id).rpartition(':')[2]}"
    profile, engine = cfg.env.real_profile, cfg.real.engine
    return f"{profile}, {engine}", f"deploy_{profile}_{engine}"


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
        if cfg.env.system == "brax":
            raise ConfigError(
                f"{args.run_dir}: a run on env=brax (env.name={cfg.env.name}) has no real system "
                "to play on; in Python, load_policy(run_dir).policy is its policy"
            )
        envs = deploy_envs(cfg)  # every config error before any episode
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seed = loaded.config.seed if args.seed is None else args.seed
    result = deploy(loaded, cfg, args.episodes, seed, envs)
    label, stem = real_label(cfg)
    out = args.out or args.run_dir / "artifacts" / f"{stem}.npz"
    result.episodes.save(out)
    figures = {
        "algo": loaded.config.algo.name,
        "real": result.real,
        "label": label,
        "episodes": args.episodes,
        "seed": seed,
        "return_mean": float(result.returns.mean()),
        "return_std": float(result.returns.std()),
        "solved": float(result.solved.mean()),
    }
    out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"{loaded.config.algo.name} policy{loaded.trained_for} on {result.real} "
        f"[{label}]: return "
        f"{result.returns.mean():.2f} +- {result.returns.std():.2f} over {args.episodes} "
        f"episodes, solved {result.solved.mean():.0%}, {result.episodes.n_transitions} "
        f"transitions recorded to {out}"
    )
    return 0


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    sys.exit(main())
