"""The MuJoCo C engine against the Brax twin: per-step speed, and agreement at the same step.

    python benchmarks/mujoco_engine.py [--steps 2000] [--repeats 3]

Prints one JSON object:
- `speed`: control steps per second of `MujocoCartPole.step` (one process, random commands in
  [-1, 1], the median of `--repeats` runs of `--steps` steps), per testbed variant;
- `agreement`: the largest |MuJoCo C - twin| of any joint position or velocity, the twin in
  float64 at the same step and integrator (sim: Euler at the system's step; real: the same
  with friction; lab: RK4 at 5 ms, every effect on but the velocity noise), over 4 swing-up
  runs of random commands in [-1.5, 1.5] from the twin's initial states: within 20 steps
  (what tests/test_mujoco_lab.py asserts a tolerance on) and at k = 1, 10, 50.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pods.rollout import reset_batch
from pods.runtime import configure_jax, filter_known_xla_logs
from sim2real.lab import LabEffects
from sim2real.mujoco_lab import make_mujoco_testbed, trajectory_of_actions
from sim2real.testbed_spec import SYSTEMS
from sim2real.testbeds import make_testbed

QUIET_LAB = LabEffects(linear_velocity_noise=0.0, angular_velocity_noise=0.0)
STEPS_K = (1, 10, 20, 50)


def speed(testbed: str, steps: int, repeats: int) -> dict:
    env = make_mujoco_testbed(testbed)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 1))
    runs = []
    for seed in range(repeats):
        env.reset(seed=seed)
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        runs.append(time.perf_counter() - start)
    return {
        "steps_per_s": round(steps / statistics.median(runs)),
        "physics_steps_per_control_step": env.n_frames,
        "integrator": "euler" if env.lab is None else env.lab.integrator,
    }


def agreement(testbed: str, n: int = 4) -> dict:
    variant = testbed.rsplit("_", 1)[1]
    lab = {"lab": QUIET_LAB} if variant == "lab" else {}
    with jax.enable_x64(True):
        twin = make_testbed(testbed, dtype=jnp.float64, **lab)
        states = reset_batch(twin, jax.random.PRNGKey(0), n)
        actions = jax.random.uniform(
            jax.random.PRNGKey(1), (n, max(STEPS_K), 1), jnp.float64, -1.5, 1.5
        )

        def run(state, actions):
            def step(state, action):
                state = twin.step(state, action)
                return state, jnp.concatenate([state.pipeline_state.q, state.pipeline_state.qd])

            return jax.lax.scan(step, state, actions)[1]

        expected = np.asarray(jax.jit(jax.vmap(run))(states, actions))
        q0, qd0 = np.asarray(states.pipeline_state.q), np.asarray(states.pipeline_state.qd)
    env = make_mujoco_testbed(testbed, **lab)
    got = []
    for i in range(n):
        t = trajectory_of_actions(env, q0[i], qd0[i], np.asarray(actions[i]))
        got.append(np.concatenate([t.qpos[1:], t.qvel[1:]], axis=-1))
    deviation = np.abs(np.stack(got) - expected).max(axis=(0, 2))
    return {
        "timestep": env.timestep,
        "integrator": "euler" if env.lab is None else env.lab.integrator,
        "max_within_20_steps": float(deviation[:20].max()),
        **{f"k={k}": float(deviation[k - 1]) for k in STEPS_K if k != 20},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_jax()
    testbeds = [f"{s}_swingup_{v}" for s in SYSTEMS for v in ("sim", "real", "lab")]
    result = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            # The speed is one process's: on a shared machine, what else ran matters.
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "speed": {name: speed(name, args.steps, args.repeats) for name in testbeds},
        "agreement": {name: agreement(name) for name in testbeds},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
