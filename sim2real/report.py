"""The sim-vs-real testbed report: how far `real` drifts from `sim` under the same actions.

For each testbed, the same initial states and the same random action sequences are played in
`sim` and in `real`; the report gives the RMS difference of every state variable after 1, 10
and 50 steps (angles wrapped to (-pi, pi]), and the returns of a zero policy in both.

    python -m sim2real.report [--trajectories 32] [--tasks cartpole_swingup ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pods.rollout import reset_batch, rollout_actions
from pods.runtime import configure_jax, filter_known_xla_logs
from sim2real.testbeds import SYSTEMS, TASKS, make_testbed

DIVERGENCE_STEPS = (1, 10, 50)


def state_variable_names(n_poles: int) -> list[str]:
    angles = ["theta"] if n_poles == 1 else [f"theta{i + 1}" for i in range(n_poles)]
    return ["x", *angles, "xdot", *[a + "dot" for a in angles]]


def sim_real_divergence(
    system: str, task: str, key: jax.Array, n_trajectories: int, steps=DIVERGENCE_STEPS
) -> dict:
    """Sim-vs-real divergence under random actions, and zero-policy returns, for one task."""
    sim, real = make_testbed(f"{system}_{task}_sim"), make_testbed(f"{system}_{task}_real")
    horizon = max(max(steps), sim.episode_length)
    key_reset, key_actions = jax.random.split(key)
    states = reset_batch(sim, key_reset, n_trajectories)
    random_actions = jax.random.uniform(
        key_actions, (n_trajectories, horizon, 1), minval=-1, maxval=1
    )
    zero_actions = jnp.zeros_like(random_actions)

    def play(env):
        return jax.jit(jax.vmap(lambda s, a: rollout_actions(env, s, a)))

    play_sim, play_real = play(sim), play(real)
    traj_sim, traj_real = play_sim(states, random_actions), play_real(states, random_actions)

    to_state = jax.vmap(jax.vmap(lambda obs: jnp.concatenate(sim.state_from_obs(obs))))
    gap = to_state(traj_real.observations) - to_state(traj_sim.observations)
    angles = slice(1, 1 + sim.n_poles)
    gap = gap.at[..., angles].set(jnp.angle(jnp.exp(1j * gap[..., angles])))
    names = state_variable_names(sim.n_poles)
    divergence = {
        str(k): dict(zip(names, np.sqrt(np.mean(np.asarray(gap[:, k]) ** 2, axis=0)).tolist()))
        for k in steps
    }

    zero_returns = {}
    for variant, run in (("sim", play_sim), ("real", play_real)):
        values = np.asarray(run(states, zero_actions).value)
        zero_returns[variant] = {"mean": float(values.mean()), "std": float(values.std())}
    return {
        "divergence_rms": divergence,
        "zero_policy_return": zero_returns,
        "horizon": horizon,
        "trajectories": n_trajectories,
    }


ALL_TASKS = tuple(f"{system}_{task}" for system in SYSTEMS for task in TASKS)


def build_report(n_trajectories: int = 32, seed: int = 0, tasks=ALL_TASKS) -> dict:
    """The report for each `{system}_{task}` in `tasks` (each with its own random stream)."""
    key = jax.random.PRNGKey(seed)
    report = {}
    for name in ALL_TASKS:
        key, sub = jax.random.split(key)
        if name in tasks:
            system, task = name.rsplit("_", 1)
            report[name] = sim_real_divergence(system, task, sub, n_trajectories)
    return report


def format_report(report: dict) -> str:
    lines = []
    for name, entry in report.items():
        n_poles = 2 if name.startswith("double") else 1
        names = state_variable_names(n_poles)
        zero = entry["zero_policy_return"]
        lines.append(
            f"\n{name}: zero-policy return over {entry['horizon']} steps  "
            f"sim {zero['sim']['mean']:8.2f} +- {zero['sim']['std']:.2f}   "
            f"real {zero['real']['mean']:8.2f} +- {zero['real']['std']:.2f}"
        )
        lines.append("  RMS |real - sim| under the same random actions")
        lines.append("  " + "steps".rjust(6) + "".join(n.rjust(10) for n in names))
        for k, row in entry["divergence_rms"].items():
            lines.append("  " + k.rjust(6) + "".join(f"{row[n]:10.4f}" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trajectories", type=int, default=32, help="random action sequences per task"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(ALL_TASKS), choices=ALL_TASKS)
    parser.add_argument("--out", type=Path, default=Path("outputs/testbed_report.json"))
    args = parser.parse_args(argv)
    if args.trajectories <= 0:
        parser.error(f"--trajectories must be positive, got {args.trajectories}")

    filter_known_xla_logs()
    configure_jax()
    report = build_report(args.trajectories, args.seed, args.tasks)
    print(format_report(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
