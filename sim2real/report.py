"""The sim-vs-real testbed report: how far each real system drifts from `sim` under the same
actions, and how closely the two engines of the lab agree.

For each task, the same initial states and the same random action sequences are played in
`sim` and in each real system: the friction profile (`real`), the lab profile's Brax twin
(`lab`) and the lab in MuJoCo C (`lab_mujoco`, `sim2real.mujoco_lab`). The report gives the
RMS difference from `sim` of every true state variable after 1, 10 and 50 steps (angles
wrapped to (-pi, pi]); the returns of a zero policy on each; and the drift of the lab in
MuJoCo C from its twin at the lab's fine step (RK4 at 5 ms), with the twin in its default
float32, as policies are trained on it. The lab's sensors read the state and never move it,
so under open-loop commands the true states, and so the divergences, drifts and returns, are
those of the lab with its sensor noise off.

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

from pods.rollout import reset_batch
from pods.runtime import configure_jax, filter_known_xla_logs
from sim2real.mujoco_lab import MujocoCartPole, trajectory_of_actions
from sim2real.testbed_spec import SYSTEMS, TASKS
from sim2real.testbeds import make_testbed

DIVERGENCE_STEPS = (1, 10, 50)
REAL_SYSTEMS = ("real", "lab", "lab_mujoco")
"""What the report compares with `sim`: the friction profile, the lab's Brax twin, the lab in
MuJoCo C."""


def state_variable_names(n_poles: int) -> list[str]:
    angles = ["theta"] if n_poles == 1 else [f"theta{i + 1}" for i in range(n_poles)]
    return ["x", *angles, "xdot", *[a + "dot" for a in angles]]


def _brax_player(env):
    """Jitted: true states [n, T + 1, nq + nv] and rewards [n, T] of open-loop commands."""

    def run(state, actions):
        def step(state, action):
            state = env.step(state, action)
            ps = state.pipeline_state
            return state, (jnp.concatenate([ps.q, ps.qd]), state.reward)

        ps = state.pipeline_state
        states, rewards = jax.lax.scan(step, state, actions)[1]
        return jnp.concatenate([jnp.concatenate([ps.q, ps.qd])[None], states]), rewards

    jitted = jax.jit(jax.vmap(run))
    return lambda states, actions: tuple(np.array(a) for a in jitted(states, actions))


def _play_mujoco(env: MujocoCartPole, starts: np.ndarray, actions) -> tuple:
    """True states and rewards of open-loop commands in MuJoCo C, as `_brax_player`'s."""
    nq = env.n_poles + 1
    runs = [
        trajectory_of_actions(env, start[:nq], start[nq:], a)
        for start, a in zip(starts, np.asarray(actions))
    ]
    states = np.stack([np.concatenate([r.qpos, r.qvel], axis=-1) for r in runs])
    return states, np.stack([r.rewards for r in runs])


def _rms_gap(a: np.ndarray, b: np.ndarray, n_poles: int, steps, names) -> dict:
    """RMS over trajectories of a - b per state variable after each of `steps`."""
    gap = a - b
    angles = slice(1, 1 + n_poles)
    gap[..., angles] = np.angle(np.exp(1j * gap[..., angles]))
    return {
        str(k): dict(zip(names, np.sqrt(np.mean(gap[:, k] ** 2, axis=0)).tolist())) for k in steps
    }


def testbed_divergence(
    system: str, task: str, key: jax.Array, n_trajectories: int, steps=DIVERGENCE_STEPS
) -> dict:
    """Divergence from `sim` of each real system under random actions, the lab's MuJoCo-vs-twin
    drift, and zero-policy returns, for one task."""
    sim = make_testbed(f"{system}_{task}_sim")
    horizon = max(max(steps), sim.episode_length)
    key_reset, key_actions = jax.random.split(key)
    random_actions = jax.random.uniform(
        key_actions, (n_trajectories, horizon, 1), minval=-1, maxval=1
    )
    zero_actions = jnp.zeros_like(random_actions)
    real, lab = make_testbed(f"{system}_{task}_real"), make_testbed(f"{system}_{task}_lab")

    def reset(env):
        return jax.jit(lambda key: reset_batch(env, key, n_trajectories))(key_reset)

    # `real` starts from sim's states (the same state type); the lab twin draws the same
    # initial states from the same key, with its own latency queue, lag and sensor stream.
    sim_states = reset(sim)
    brax = {
        "sim": (_brax_player(sim), sim_states),
        "real": (_brax_player(real), sim_states),
        "lab": (_brax_player(lab), reset(lab)),
    }
    ps = sim_states.pipeline_state
    starts = np.asarray(jnp.concatenate([ps.q, ps.qd], axis=-1), np.float64)
    mujoco = MujocoCartPole(system, task, "lab")

    def play(variant, actions):
        if variant == "lab_mujoco":
            return _play_mujoco(mujoco, starts, actions)
        player, states = brax[variant]
        return player(states, actions)

    variants = ("sim", *REAL_SYSTEMS)
    runs = {variant: play(variant, random_actions) for variant in variants}
    names = state_variable_names(sim.n_poles)
    divergence = {
        variant: _rms_gap(runs[variant][0], runs["sim"][0], sim.n_poles, steps, names)
        for variant in REAL_SYSTEMS
    }
    drift = _rms_gap(runs["lab_mujoco"][0], runs["lab"][0], sim.n_poles, steps, names)
    zero_returns = {}
    for variant in variants:
        values = play(variant, zero_actions)[1].sum(axis=-1)
        zero_returns[variant] = {"mean": float(values.mean()), "std": float(values.std())}
    return {
        "divergence_rms": divergence,
        "mujoco_drift_rms": drift,
        "zero_policy_return": zero_returns,
        "horizon": horizon,
        "trajectories": n_trajectories,
        "lab_step": {
            "timestep": mujoco.timestep,
            "integrator": mujoco.lab.integrator,
            "twin_dtype": str(sim.dtype),
        },
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
            report[name] = testbed_divergence(system, task, sub, n_trajectories)
    return report


def _table(title: str, rows: dict, names: list[str], cell: str) -> list[str]:
    lines = [f"  {title}", "  " + "steps".rjust(6) + "".join(n.rjust(10) for n in names)]
    for k, row in rows.items():
        lines.append("  " + k.rjust(6) + "".join(format(row[n], cell).rjust(10) for n in names))
    return lines


def format_report(report: dict) -> str:
    lines = []
    for name, entry in report.items():
        n_poles = 2 if name.startswith("double") else 1
        names = state_variable_names(n_poles)
        zero = entry["zero_policy_return"]
        returns = "   ".join(
            f"{variant} {r['mean']:.2f} +- {r['std']:.2f}" for variant, r in zero.items()
        )
        lines.append(f"\n{name}: zero-policy return over {entry['horizon']} steps  {returns}")
        for variant in REAL_SYSTEMS:
            title = f"RMS |{variant} - sim| under the same random actions"
            lines += _table(title, entry["divergence_rms"][variant], names, "10.4f")
        step = entry["lab_step"]
        title = (
            f"RMS |lab_mujoco - lab|: MuJoCo C vs the {step['twin_dtype']} twin, "
            f"{step['integrator']} at {step['timestep'] * 1e3:g} ms"
        )
        lines += _table(title, entry["mujoco_drift_rms"], names, "10.1e")
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
