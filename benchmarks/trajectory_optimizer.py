"""How far the action improvement alone gets, with no policy: the open-loop Gauss-Newton step
against the feedback (iLQR) step on fixed starts, over the whole horizon at once or over a
horizon grown stage by stage. Prints JSON.

    .venv/bin/python benchmarks/trajectory_optimizer.py [--testbed double_cartpole_balance_sim]
        [--starts 8] [--horizon 100] [--grow 10] [--iterations 8] [--window 10] [--seed 0]
        [--held-out] [--tolerance-weight W] [--tolerance-onset A] [--out FILE]
        [--friction-gradient [V|law]] [--stiction-gradient] [--cogging-gradient]

From --starts initial states of the testbed (`chain` backend, float32) and all-zero actions,
each method takes --iterations improvement steps per stage (`pods.improve.improve_actions`
at order 2 with --window-step gradient windows, or `pods.feedback.improve_with_feedback`
with none; the line search's default grid of 8 step sizes from 1 to 1e-3). With --grow G the
stages optimize the first G, 2G, ... steps of the horizon in turn (the later actions stay 0
until their stage); --grow 0 optimizes the whole horizon in every stage. Per stage, the JSON
has each start's return over the stage's steps and over the whole horizon (the actions past
the stage are still 0 there), the share of the starts the whole-horizon episode solves (the
testbed's `solved` criterion) and each start's largest pole angle from upright over the
criterion's window, the share of the last step accepted and its median step size.
With --held-out the starts are those `experiments.train` evaluates a policy on for --seed
(its first --starts held-out initial states), so the solved share is what the action
optimizer reaches, start by start, where a trained policy's is measured.
With --tolerance-weight W the methods optimize the reward less a penalty for leaning towards
the solved criterion's tolerance (`ToleranceBarrier`); every figure in the JSON is still of
the testbed's own reward and criterion. It asks whether the starts can be held within the
tolerance at all, not only whether the reward's optimum holds them.
With --friction-gradient the testbed's slider force is differentiated through a smooth
surrogate (`sim2real.lab.FrictionGradient`, its defaults unless given: the friction's sign
widened to V m/s, or `law` for the law's own scale; the stiction's and the cogging's
derivatives dropped unless --stiction-gradient or --cogging-gradient keeps them); the
rollouts, and every figure in the JSON, step the testbed's own physics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time

# Run as a script, this file's folder comes first on sys.path, where benchmarks/dynamics_models.py
# would shadow the `dynamics_models` package that sim2real.evaluation imports.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pods.runtime import configure_jax, filter_known_xla_logs, import_brax_quietly  # noqa: E402

# Before brax is first imported here: mujoco.mjx prints to stdout, where the JSON goes.
import_brax_quietly()

from brax.envs.base import Wrapper  # noqa: E402

from pods.feedback import improve_with_feedback  # noqa: E402
from pods.improve import improve_actions  # noqa: E402
from pods.rollout import episode_of_actions, reset_batch  # noqa: E402
from pods.step_size import step_size_grid  # noqa: E402
from sim2real import make_testbed  # noqa: E402
from sim2real.evaluation import held_out_starts, seed_streams, solved_criterion  # noqa: E402
from sim2real.lab import FrictionGradient  # noqa: E402

METHODS = ("open_loop", "feedback")


class ToleranceBarrier(Wrapper):
    """The testbed's reward less `weight` sum_i clip(lean_i - onset, 0, width)^2, lean_i pole
    i's angle from upright (`Solved.lean`): zero while every pole is within `onset` rad,
    growing as one leans past it, bounded (at `width`) so that a pole that has fallen does not
    dominate the return. The default onset is 3/4 of the solved criterion's tolerance (0.15
    of 0.2 rad), the default width that much again."""

    def __init__(self, env, weight: float, onset: float | None = None, width: float | None = None):
        super().__init__(env)
        self.criterion = solved_criterion(env)
        self.weight = weight
        self.onset = 0.75 * self.criterion.tolerance if onset is None else onset
        self.width = self.onset if width is None else width

    def penalty(self, obs):
        excess = jnp.clip(self.criterion.lean(obs) - self.onset, 0.0, self.width)
        return self.weight * jnp.sum(excess**2)

    def task_reward(self, obs, action):
        return self.env.task_reward(obs, action) - self.penalty(obs)

    def step(self, state, action):
        arrived = self.env.step(state, action)
        return arrived.replace(reward=arrived.reward - self.penalty(arrived.obs))


def optimize(
    env, objective, states, method: str, horizon: int, stages: list[int], iterations: int, window
):
    """Each stage's returns (over its steps, over the whole horizon), accept share, step. The
    steps improve `objective`'s return (`env` itself or a wrapper of it); the figures are
    `env`'s."""
    step_sizes = step_size_grid(1.0, 1e-3, 8)

    def improve(s, a, o):
        if method == "feedback":
            return improve_with_feedback(objective, s, a, o, step_sizes)
        return improve_actions(objective, s, a, o, step_sizes, order=2, gradient_window=window)

    improve = jax.jit(improve)
    episodes = jax.jit(jax.vmap(lambda s, a: episode_of_actions(env, s, a)))
    criterion = solved_criterion(env)
    actions = jnp.zeros((states.obs.shape[0], horizon, env.action_size))
    rows = []
    for steps in stages:
        for _ in range(iterations):
            head = actions[:, :steps]
            step = improve(states, head, episodes(states, head).observations)
            actions = actions.at[:, :steps].set(step.actions)
        whole = episodes(states, actions)
        rows.append(
            {
                "steps": steps,
                "return_over_steps": np.asarray(step.value_improved).round(2).tolist(),
                "return_whole_horizon": np.asarray(whole.value).round(2).tolist(),
                "solved": float(jnp.mean(criterion(whole.observations))),
                "max_pole_deviation": np.asarray(criterion.max_deviation(whole.observations))
                .round(3)
                .tolist(),
                "accepted": float(jnp.mean(step.accepted)),
                "median_step_size": float(jnp.median(step.step_size)),
            }
        )
        print(
            f"{method} {steps} steps: mean {np.mean(rows[-1]['return_over_steps']):.1f}, "
            f"whole horizon {np.mean(rows[-1]['return_whole_horizon']):.1f}, "
            f"solved {rows[-1]['solved']:.0%}",
            file=sys.stderr,
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default="double_cartpole_balance_sim")
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--grow", type=int, default=10, help="steps added per stage; 0: none")
    parser.add_argument("--iterations", type=int, default=8, help="improvement steps a stage")
    parser.add_argument("--window", type=int, default=10, help="the open-loop step's window")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--held-out", action="store_true", help="the starts a trained policy is evaluated on"
    )
    parser.add_argument(
        "--tolerance-weight",
        type=float,
        default=0.0,
        help="optimize the reward less this weight times a penalty near the tolerance",
    )
    parser.add_argument(
        "--tolerance-onset", type=float, help="rad where the penalty begins (default 0.15)"
    )
    parser.add_argument(
        "--friction-gradient",
        nargs="?",
        const="default",
        metavar="V|law",
        help="differentiate the slider force through a surrogate whose friction switches sign "
        "over V m/s (`law`: the law's own scale; alone: FrictionGradient's default); the "
        "rollouts are unchanged",
    )
    parser.add_argument(
        "--stiction-gradient",
        action="store_true",
        help="with --friction-gradient: keep the stiction's derivative",
    )
    parser.add_argument(
        "--cogging-gradient",
        action="store_true",
        help="with --friction-gradient: keep the cogging's derivative",
    )
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    friction_gradient = None
    if args.friction_gradient is not None:
        terms = dict(stiction=args.stiction_gradient, cogging=args.cogging_gradient)
        try:
            if args.friction_gradient != "default":
                value = args.friction_gradient
                terms["friction_velocity"] = None if value == "law" else float(value)
            friction_gradient = FrictionGradient(**terms)
        except ValueError as err:
            parser.error(f"--friction-gradient: {err}")
    elif args.stiction_gradient or args.cogging_gradient:
        parser.error("--stiction-gradient and --cogging-gradient need --friction-gradient")
    for name in ("starts", "horizon", "iterations", "window"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.tolerance_weight < 0:
        parser.error(f"--tolerance-weight must be >= 0, got {args.tolerance_weight}")
    if args.tolerance_onset is not None and not 0 < args.tolerance_onset < math.pi:
        parser.error(f"--tolerance-onset must be in (0, pi) rad, got {args.tolerance_onset}")
    if not 0 <= args.grow <= args.horizon:
        parser.error(f"--grow must be in [0, --horizon={args.horizon}], got {args.grow}")
    configure_jax()
    env = make_testbed(
        args.testbed,
        backend="chain",
        episode_length=args.horizon,
        friction_gradient=friction_gradient,
    )
    objective = (
        ToleranceBarrier(env, args.tolerance_weight, args.tolerance_onset)
        if args.tolerance_weight
        else env
    )
    if args.held_out:
        states = held_out_starts(env, seed_streams(args.seed)[1], args.starts)
    else:
        states = reset_batch(env, jax.random.PRNGKey(args.seed), args.starts)
    if args.grow:
        stages = list(range(args.grow, args.horizon + 1, args.grow))
        stages += [args.horizon] if stages[-1] != args.horizon else []
    else:
        stages = [args.horizon] * (args.horizon // 10)
    start = time.perf_counter()
    results = {}
    for method in args.methods:
        began = time.perf_counter()
        results[method] = {
            "stages": optimize(
                env, objective, states, method, args.horizon, stages, args.iterations, args.window
            ),
            "seconds": round(time.perf_counter() - began, 1),
        }
    report = {
        "command": "python benchmarks/trajectory_optimizer.py " + " ".join(argv or sys.argv[1:]),
        "testbed": args.testbed,
        "starts": args.starts,
        "horizon": args.horizon,
        "grow": args.grow,
        "iterations": args.iterations,
        "open_loop_window": args.window,
        "seed": args.seed,
        "held_out": args.held_out,
        "tolerance_weight": args.tolerance_weight,
        "tolerance_onset": round(objective.onset, 6) if args.tolerance_weight else None,
        "friction_gradient": (
            None if friction_gradient is None else dataclasses.asdict(friction_gradient)
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
        "results": results,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        partial = f"{args.out}.partial"
        with open(partial, "w") as f:
            f.write(text + "\n")
        os.replace(partial, args.out)
    return report


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
