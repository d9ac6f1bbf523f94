"""Does a trained swing-up policy fail to swing the pole up, or to hold it? Prints JSON.

    .venv/bin/python benchmarks/swingup_hold.py RUN_DIR [--profile lab] [--starts 32]
        [--steps 300] [--out FILE]

Loads the policy of a PODS-family run directory (`experiments.deploy.load_policy`; a
compared run's folder, e.g. `RUN/oracle`, works too) and plays it for --steps steps from the
held-out starts the run was evaluated on, on the Brax twin of --profile (`sim`, `friction`
or `lab`), with the run's action history and friction gradient. For every start it gives the
first step the pole comes within 0.3 rad of upright ("reached"), the step from which it
stays within the task's 0.2 rad to the end ("held from", as `classical_swingup.py` counts it),
and the largest lean over the last 50 steps of the run's episode (the task's window): a
policy that reaches early and never holds lets the pole fall and swings it up again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Run as a script, this file's folder comes first on sys.path, where benchmarks/dynamics_models.py
# would shadow the `dynamics_models` package that sim2real.evaluation imports.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pods.runtime import cpu_description, filter_known_xla_logs, import_brax_quietly  # noqa: E402

import_brax_quietly()

from experiments.deploy import load_policy  # noqa: E402
from experiments.schema import ConfigError  # noqa: E402
from experiments.train import build_friction_gradient  # noqa: E402
from pods.rollout import trajectories_of_policy  # noqa: E402
from sim2real import REAL_PROFILES, make_testbed  # noqa: E402
from sim2real.evaluation import (  # noqa: E402
    held_from,
    held_out_starts,
    seed_streams,
    solved_criterion,
)

PROFILES = {"sim": "sim", **REAL_PROFILES}
"""Profile name -> testbed variant: `sim` and every real profile."""
REACHED = 0.3
"""rad: the lean under which the pole counts as swung up ("reached")."""


def reached(lean: np.ndarray, within: float = REACHED) -> np.ndarray:
    """[n]: the first step with the lean within `within` (the episode's length if none)."""
    inside = lean <= within
    return np.where(inside.any(axis=1), np.argmax(inside, axis=1), lean.shape[1])


def hold_report(lean: np.ndarray, tolerance: float, episode: int, window: int) -> dict:
    """Per start and over the starts, from the lean [n, steps] (rad) of the largest pole."""
    first, held = reached(lean), held_from(lean, tolerance)
    last = lean[:, episode - window : episode].max(axis=1)
    return {
        "solved": float(np.mean(last <= tolerance)),
        "reached_by_episode_end": float(np.mean(first < episode)),
        "fell_after_reaching": float(np.mean((first < episode) & (last > 1.0))),
        "reached": first.tolist(),
        "held_from": held.tolist(),
        "window_max_lean": np.round(last, 3).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--profile", default="lab", choices=sorted(PROFILES))
    parser.add_argument("--starts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.starts < 1:
        parser.error(f"--starts must be >= 1, got {args.starts}")
    filter_known_xla_logs()
    try:
        loaded = load_policy(args.run_dir)
    except ConfigError as err:
        parser.error(str(err))
    cfg = loaded.config
    if cfg.env.system != "cartpole" or cfg.env.task != "swingup":
        parser.error(
            f"{args.run_dir}: a run of {cfg.env.system} {cfg.env.task}; expected the swing-up"
        )
    episode = int(cfg.env.episode_length)
    if args.steps < episode:
        parser.error(f"--steps must be >= the run's episode ({episode}), got {args.steps}")
    twin = make_testbed(
        f"cartpole_swingup_{PROFILES[args.profile]}",
        backend=cfg.env.backend,
        episode_length=args.steps,
        action_history=int(cfg.env.get("action_history", 0) or 0),
        friction_gradient=build_friction_gradient(cfg.env.get("friction_gradient")),
    )
    criterion = solved_criterion(twin)
    starts = held_out_starts(twin, seed_streams(int(cfg.seed))[1], args.starts)
    policy = loaded.make_policy(loaded.params)
    trajectory = jax.device_get(
        jax.jit(lambda s: trajectories_of_policy(twin, s, policy, args.steps))(starts)
    )
    lean = np.max(criterion.lean(np.asarray(trajectory.observations)[:, 1:], xp=np), axis=-1)
    output = {
        "benchmark": "swingup_hold",
        "command": " ".join(["python", "benchmarks/swingup_hold.py", *sys.argv[1:]]),
        "run": {"algo": cfg.algo.name, "seed": int(cfg.seed), "epoch": loaded.epoch},
        "profile": args.profile,
        "starts": args.starts,
        "steps": args.steps,
        "episode": episode,
        "cpu": cpu_description(),
        **hold_report(lean, criterion.tolerance, episode, criterion.steps(episode)),
    }
    text = json.dumps(output, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
