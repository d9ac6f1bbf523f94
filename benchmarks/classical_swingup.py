"""How long must a swing-up episode be for a classical controller to solve it on every profile?
Prints JSON.

    .venv/bin/python benchmarks/classical_swingup.py [--starts 64] [--seeds 0 1 2] [--steps 300]
        [--lengths 100 150 200] [--engines brax mujoco] [--out FILE]

The controller is `algo=energy_lqr` (`baselines.energy_lqr`: energy pumping, then the LQR
catch), designed on `sim` alone. It plays --steps steps from the held-out starts of each seed of
--seeds (those `experiments.train` evaluates on) on `sim`, the friction real and the lab, in the Brax twin
(`chain` backend, batched) and in MuJoCo C (`sim2real.mujoco_lab`, one step at a time behind
the real-system boundary). The policy is memoryless and time-invariant, so the first T steps
of that episode are the T-step episode: for every T of --lengths the JSON gives each seed's
solved share (the task's criterion: within 0.2 rad over the last 50 steps) and mean return,
and their range over the seeds. It also gives the step from which the pole stays within
the tolerance to the end of the long episode ("held from"), over every start of every seed:
an episode of T steps is solved from a start exactly when T >= held from + 50.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Run as a script, this file's folder comes first on sys.path, where benchmarks/dynamics_models.py
# would shadow the `dynamics_models` package that sim2real.evaluation imports.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pods.runtime import (  # noqa: E402
    configure_jax,
    cpu_description,
    filter_known_xla_logs,
    import_brax_quietly,
)

import_brax_quietly()

from baselines.energy_lqr import EnergyLQRConfig, train  # noqa: E402
from pods.rollout import trajectories_of_policy  # noqa: E402
from sim2real import REAL_PROFILES, make_testbed  # noqa: E402
from sim2real.evaluation import (  # noqa: E402
    held_from,
    held_out_starts,
    seed_streams,
    solved_criterion,
)
from sim2real.real_system import RealSystem  # noqa: E402

PROFILES = {"sim": "sim", **REAL_PROFILES}
"""Profile name -> testbed variant: `sim` and every real profile."""


def score(observations: np.ndarray, rewards: np.ndarray, criterion, lengths) -> tuple:
    """One seed's solved share and mean return by episode length, and its held-from steps."""
    lean = np.max(criterion.lean(observations[:, 1:], xp=np), axis=-1)
    by_length = {}
    for length in lengths:
        window = criterion.steps(length)
        solved = np.max(lean[:, length - window : length], axis=1) <= criterion.tolerance
        by_length[length] = (
            float(np.mean(solved)),
            float(np.mean(np.sum(rewards[:, :length], axis=1))),
        )
    return by_length, held_from(lean, criterion.tolerance)


def spread(values) -> dict:
    values = np.asarray(values, np.float64)
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def summarize(per_seed: list[tuple], lengths) -> dict:
    """Over the seeds: each seed's solved share and return by length, their range, and the
    held-from steps of every start."""
    held = np.concatenate([h for _, h in per_seed])
    return {
        "by_length": {
            str(length): {
                "solved": [s[length][0] for s, _ in per_seed],
                "solved_range": spread([s[length][0] for s, _ in per_seed]),
                "return_range": spread([s[length][1] for s, _ in per_seed]),
            }
            for length in lengths
        },
        "held_from": {**spread(held), "p90": float(np.percentile(held, 90)), "starts": held.size},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 150, 200])
    parser.add_argument("--engines", nargs="+", default=["brax", "mujoco"])
    parser.add_argument("--out")
    args = parser.parse_args()
    if any(not 0 < length <= args.steps for length in args.lengths):
        parser.error(f"--lengths must lie in 1..--steps={args.steps}, got {args.lengths}")
    unknown = sorted(set(args.engines) - {"brax", "mujoco"})
    if unknown:
        parser.error(f"unknown --engines {unknown}; expected brax or mujoco")
    configure_jax()

    sim = make_testbed("cartpole_swingup_sim", backend="chain", episode_length=args.steps)
    make_policy, gain, _ = train(EnergyLQRConfig(), sim, None)
    results = {}
    for profile, variant in PROFILES.items():
        name = f"cartpole_swingup_{variant}"
        twin = make_testbed(name, backend="chain", episode_length=args.steps)
        criterion = solved_criterion(twin)
        play = jax.jit(
            lambda s, twin=twin: trajectories_of_policy(twin, s, make_policy(gain), args.steps)
        )
        for engine in args.engines:
            start, per_seed = time.perf_counter(), []
            for seed in args.seeds:
                eval_key = seed_streams(seed)[1]
                if engine == "brax":
                    trajectory = jax.device_get(play(held_out_starts(twin, eval_key, args.starts)))
                    observations, rewards = trajectory.observations, trajectory.rewards
                else:
                    from sim2real.mujoco_lab import MujocoCartPole

                    env = MujocoCartPole("cartpole", "swingup", variant, episode_length=args.steps)
                    system = RealSystem(env, args.starts * args.steps)
                    # The draw of starts the evaluation of a MuJoCo real makes (`evaluate`).
                    data = system.collect(
                        jax.random.split(eval_key)[0],
                        args.starts,
                        make_policy=make_policy,
                        params=gain,
                    )
                    observations, rewards = data.observations, data.rewards
                per_seed.append(
                    score(np.asarray(observations), np.asarray(rewards), criterion, args.lengths)
                )
            results[f"{profile}/{engine}"] = {
                **summarize(per_seed, args.lengths),
                "wall_clock_s": time.perf_counter() - start,
            }
    output = {
        "benchmark": "classical_swingup",
        "command": " ".join(["python", "benchmarks/classical_swingup.py", *sys.argv[1:]]),
        "controller": "energy_lqr (EnergyLQRConfig defaults, designed on sim)",
        "seeds": args.seeds,
        "starts": args.starts,
        "steps": args.steps,
        "criterion": "every pole within 0.2 rad over the last 50 steps",
        "cpu": cpu_description(),
        "results": results,
    }
    text = json.dumps(output, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
