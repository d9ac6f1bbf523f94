"""Train one policy on a testbed and evaluate it in sim and in real.

    python -m experiments.train                                   # PODS on cartpole swing-up
    python -m experiments.train env=cartpole_balance algo.order=2 seed=3
    python -m experiments.train -m seed=0,1,2                     # a sweep
    python -m experiments.train hydra.run.dir=outputs/runs/<run>  # resume a killed run

Every run writes a self-describing directory (see experiments.run_dir). Started again on a
directory that holds a checkpoint of the same config, a run continues from it and ends with
the same metrics as a run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.run_dir import RunDirectory
from experiments.schema import ConfigError, build_physics, register_schemas, to_library_config
from pods.rollout import Policy, reset_batch, rollout_actions, rollout_policy
from pods.runtime import configure_jax
from pods.train import PODSConfig, init_training_state, make_pods, train
from sim2real.testbeds import CartPole, make_testbed

register_schemas()

# Independent random streams of one seed: evaluation never sees a training initial state.
TRAIN_STREAM, EVAL_STREAM = 0, 1
ALGORITHMS = ("pods",)


def config_fingerprint(cfg: DictConfig) -> str:
    """A hash of everything that determines a run's results (not where it writes)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("run", None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def build_envs(cfg: DictConfig, dtype) -> tuple[CartPole, CartPole]:
    """The sim and real testbeds the config describes."""
    env = cfg.env
    common = dict(episode_length=env.episode_length, backend=env.backend, dtype=dtype)
    try:
        sim = make_testbed(
            f"{env.system}_{env.task}_sim", physics=build_physics(env.sim, "env.sim"), **common
        )
        real = make_testbed(
            f"{env.system}_{env.task}_real", physics=build_physics(env.real, "env.real"), **common
        )
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"env: {err}") from None
    return sim, real


def evaluate(env: CartPole, policy: Policy, key: jax.Array, n: int) -> dict:
    """Mean returns of `policy` and of uniform random commands over `n` initial states from
    `key`, and the policy's first trajectory (for the animation): one compiled call per env."""

    @jax.jit
    def run(key):
        key_reset, key_actions = jax.random.split(key)
        states = reset_batch(env, key_reset, n)
        horizon = env.episode_length
        shape = (n, horizon, env.action_size)
        random_actions = jax.random.uniform(key_actions, shape, env.dtype, -1.0, 1.0)
        random = jax.vmap(lambda s, a: rollout_actions(env, s, a))(states, random_actions)
        learned = jax.vmap(lambda s: rollout_policy(env, s, policy, horizon))(states)
        return jnp.mean(learned.value), jnp.mean(random.value), learned.observations[0]

    policy_return, random_return, observations = run(key)
    return {
        "policy": float(policy_return),
        "random": float(random_return),
        "observations": np.asarray(observations),
    }


def write_animation(run_dir: RunDirectory, env: CartPole, observations: dict) -> Path:
    from sim2real.animation import render_frames, write_gif

    frames = render_frames(
        list(observations.values()), list(observations), env.pole_lengths, float(env.dt)
    )
    return write_gif(run_dir.artifacts / "rollout_sim_vs_real.gif", frames, float(env.dt))


def run_experiment(cfg: DictConfig, output_dir: Path) -> dict:
    """Trains, evaluates and writes the run directory; returns the summary."""
    if cfg.algo.name not in ALGORITHMS:
        raise ConfigError(
            f"algo.name: unknown algorithm {cfg.algo.name!r}; expected one of {ALGORITHMS}"
        )
    pods_config: PODSConfig = to_library_config(PODSConfig, cfg.algo, "algo", skip=("name",))
    if cfg.run.checkpoint_every <= 0:
        raise ConfigError(f"run.checkpoint_every must be positive, got {cfg.run.checkpoint_every}")
    if cfg.run.eval_trajectories <= 0:
        raise ConfigError(
            f"run.eval_trajectories must be positive, got {cfg.run.eval_trajectories}"
        )
    configure_jax(float64=pods_config.float64)
    dtype = jnp.float64 if pods_config.float64 else jnp.float32
    sim, real = build_envs(cfg, dtype)

    run_dir = RunDirectory(output_dir)
    fingerprint = config_fingerprint(cfg)
    seed_key = jax.random.PRNGKey(cfg.seed)
    train_key, eval_key = (
        jax.random.fold_in(seed_key, TRAIN_STREAM),
        jax.random.fold_in(seed_key, EVAL_STREAM),
    )

    network, _, _, _ = make_pods(pods_config, sim)
    initial_state, elapsed = None, 0.0
    template = init_training_state(pods_config, sim, network, train_key)
    restored = run_dir.load_checkpoint(template)
    if restored is not None:
        initial_state, info = restored
        if info.get("config") != fingerprint:
            raise ConfigError(
                f"{output_dir} holds a run of another config (fingerprint {info.get('config')}, "
                f"this one {fingerprint}); start it in a new directory"
            )
        elapsed = info["wall_clock_s"]
        run_dir.truncate_metrics(info["epoch"] - 1)
        print(f"resuming {output_dir} after epoch {info['epoch']}", file=sys.stderr)

    progress = None
    if cfg.run.progress_bar:
        from tqdm import tqdm

        done = 0 if initial_state is None else int(initial_state.epoch)
        progress = tqdm(
            total=pods_config.num_epochs, initial=done, desc=f"{cfg.algo.name} {sim.name}"
        )

    def log_epoch(epoch: int, metrics: dict) -> None:
        metrics = {**metrics, "train/wall_clock_s": elapsed + metrics["train/wall_clock_s"]}
        run_dir.log_metrics(epoch, metrics)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(ret=f"{metrics['train/return']:.1f}")

    def checkpoint(state, metrics: dict) -> None:
        epoch = int(state.epoch)
        if epoch % cfg.run.checkpoint_every == 0 or epoch == pods_config.num_epochs:
            info = {"config": fingerprint, "wall_clock_s": elapsed + metrics["train/wall_clock_s"]}
            run_dir.save_checkpoint(state, epoch, info)

    make_policy, params, history = train(
        pods_config,
        sim,
        train_key,
        progress_fn=log_epoch,
        initial_state=initial_state,
        checkpoint_fn=checkpoint,
    )
    if progress is not None:
        progress.close()
    run_dir.close()

    policy = make_policy(params)
    n_eval = cfg.run.eval_trajectories
    # The same held-out initial states (and random commands) in both variants.
    returns = {
        variant: evaluate(env, policy, eval_key, n_eval)
        for variant, env in (("sim", sim), ("real", real))
    }
    records = run_dir.read_metrics()
    last = records[-1] if records else {}
    summary = {
        "algo": cfg.algo.name,
        "env": f"{sim.system_name}_{sim.task}",
        "seed": cfg.seed,
        "eval/return_sim": returns["sim"]["policy"],
        "eval/return_real": returns["real"]["policy"],
        "eval/return_random_sim": returns["sim"]["random"],
        "eval/return_random_real": returns["real"]["random"],
        # Normalized against the oracle (PODS trained on `real`) where a sweep provides one;
        # a single run knows no oracle.
        "eval/score_real": None,
        "eval/trajectories": n_eval,
        "train/epochs": len(records),
        "train/wall_clock_s": last.get("train/wall_clock_s"),
        "train/sim_steps": last.get("train/sim_steps"),
        "train/final_return": last.get("train/return"),
        "real/transitions": 0,
        "config_fingerprint": fingerprint,
    }
    if cfg.run.animation:
        gif = write_animation(run_dir, sim, {v: r["observations"] for v, r in returns.items()})
        summary["artifacts/animation"] = str(gif.relative_to(run_dir.path))
    run_dir.write_summary(summary)
    print(format_table(summary))
    return summary


def format_table(summary: dict) -> str:
    rows = [
        (summary["algo"], summary["eval/return_sim"], summary["eval/return_real"]),
        ("random", summary["eval/return_random_sim"], summary["eval/return_random_real"]),
    ]
    lines = [
        f"\n{summary['env']}, seed {summary['seed']}: mean return over {summary['eval/trajectories']} held-out initial states"
    ]
    lines.append(f"{'policy':>12} {'sim':>10} {'real':>10}")
    lines += [f"{name:>12} {s:10.2f} {r:10.2f}" for name, s, r in rows]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    start = time.perf_counter()
    try:
        summary = run_experiment(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"done in {time.perf_counter() - start:.0f} s: {HydraConfig.get().runtime.output_dir}")
    # The sweep objective (optuna maximizes it): the return in real.
    return summary["eval/return_real"]


if __name__ == "__main__":
    main()
